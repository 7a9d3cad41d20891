"""SLO-aware dynamic batching (Triton's `max_queue_delay` idea, bounded by deadlines).

After the first query of a batch arrives, a replica waits for more only as long as the tightest
deadline in hand allows: the wait ends before `deadline - latency(batch) - margin`, and never lasts
longer than `max_delay_ms`. Queries already past their deadline are answered DEADLINE_EXCEEDED
without running.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    batch_size: int  # rows per model run (the variant's batch size)
    max_delay_ms: float = 5.0  # longest wait for a batch to fill
    margin_ms: float = 1.0  # room left for producing the result


def wait_budget_ms(policy: BatchPolicy, now_ms: float, earliest_deadline_ms: float | None,
                   run_latency_ms: float) -> float:
    """How long to wait for more queries before running what is in hand (0 = run now)."""
    budget = policy.max_delay_ms
    if earliest_deadline_ms is not None:
        budget = min(budget, earliest_deadline_ms - now_ms - run_latency_ms - policy.margin_ms)
    return max(budget, 0.0)


def pack(row_counts: list[int], batch_size: int) -> list[list[int]]:
    """Group queries (by index, in arrival order) into runs of at most `batch_size` rows.

    A query is never split; one larger than the batch size runs alone.
    """
    runs: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for index, count in enumerate(row_counts):
        if current and rows + count > batch_size:
            runs.append(current)
            current, rows = [], 0
        current.append(index)
        rows += count
    if current:
        runs.append(current)
    return runs
