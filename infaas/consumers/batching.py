"""SLO-aware dynamic batching (Triton's `max_queue_delay` idea, bounded by deadlines).

After the first query of a batch arrives, a replica waits for more only as long as the tightest
deadline in hand allows: the wait ends before `deadline - latency(batch) - margin`, and never lasts
longer than `max_delay_ms`. It waits only when more queries are expected in that time: at the rate
they have been arriving, the next one must be due within the budget, and the wait is no longer than
filling the batch takes. A lone query at low load runs at once (as in the simulator, which never
waits), and under load the batch fills from what arrives meanwhile. Queries already past their
deadline are answered DEADLINE_EXCEEDED without running. Which queries form each run, and which
cannot start before their deadline, is the rule the simulator applies too (`policies.batching`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    batch_size: int  # rows per model run (the variant's batch size)
    max_delay_ms: float = 5.0  # longest wait for a batch to fill
    margin_ms: float = 1.0  # room left for producing the result


def wait_budget_ms(policy: BatchPolicy, now_ms: float, earliest_deadline_ms: float | None,
                   run_latency_ms: float, in_hand: int = 1, arrivals_per_ms: float | None = None) -> float:
    """How long to wait for more queries before running what is in hand (0 = run now).

    `arrivals_per_ms`: the recent arrival rate; None waits as long as the deadline allows."""
    budget = policy.max_delay_ms
    if earliest_deadline_ms is not None:
        budget = min(budget, earliest_deadline_ms - now_ms - run_latency_ms - policy.margin_ms)
    missing = policy.batch_size - in_hand
    if missing <= 0:
        return 0.0
    if arrivals_per_ms is not None:
        if arrivals_per_ms <= 0 or 1.0 / arrivals_per_ms > budget:
            return 0.0  # the next query is not expected in time: waiting would only add latency
        budget = min(budget, missing / arrivals_per_ms)
    return max(budget, 0.0)


class ArrivalRate:
    """Queries per millisecond over a sliding window of recent arrivals (times in ms)."""

    def __init__(self, window_ms: float = 1000.0, most: int = 4096):
        self.window_ms = window_ms
        self._times: deque[float] = deque(maxlen=most)

    def note(self, now_ms: float, count: int = 1) -> None:
        self._times.extend([now_ms] * count)

    def per_ms(self, now_ms: float) -> float:
        while self._times and self._times[0] < now_ms - self.window_ms:
            self._times.popleft()
        if not self._times:
            return 0.0
        # Over the window, or over the span seen so far when the deque is full (high rates).
        span = self.window_ms if len(self._times) < (self._times.maxlen or 0) else max(now_ms - self._times[0], 1.0)
        return len(self._times) / span

