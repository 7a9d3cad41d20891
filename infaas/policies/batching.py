"""The batching rule: which queued queries form a replica's next run, and which cannot start before their
deadline. The live replica (`consumers.replica`) plans its runs with `plan_runs`; the simulator forms
each batch with `next_run`, the rule `plan_runs` applies run after run; both cap a run at the profile's
run times (`run_latencies`). How long a live replica waits for a batch to fill is
`consumers.batching.wait_budget_ms`; the simulator never waits.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..catalog import Variant


def run_latencies(variant: Variant) -> list[float]:
    """A run's duration by rows, from the profile (`[n]`: n rows, up to the variant's batch size), for
    `next_run`'s `latency`."""
    return [variant.latency_at(n) for n in range(variant.batch_size + 1)]


def next_run(deadlines: Sequence[float | None], batch_size: int, start_ms: float,
             rows: Sequence[int] | None = None, first: int = 0, end: int | None = None,
             latency: Sequence[float] | None = None) -> tuple[list[int], list[int], int]:
    """The next run from queries `first:end` (indices, in arrival order) starting at `start_ms`: (its
    queries, the queries that cannot start before their deadline, the index after the last one looked
    at). A run takes queries in order up to `batch_size` rows (`rows`: per query; None: one each); a
    query is never split, and one larger than the batch size runs alone. A query whose deadline has
    passed by `start_ms` does not run: it would at best be answered after its SLO, in time the replica
    can give to queries that can still make theirs. No deadline (None): never late.

    `latency`: a run's duration by rows (`latency[n]`, `run_latencies`); given, a run also stops growing
    where it would end after its first query's deadline (without the cap the simulated violations of
    infaas rose from 0.84% to 2.26% on fluctuating-medium: a full batch of a slow variant made its oldest
    query late). The simulator and the live replica both give it."""
    end = len(deadlines) if end is None else end
    run: list[int] = []
    late: list[int] = []
    filled = 0
    for index in range(first, end):
        count = 1 if rows is None else rows[index]
        if run and (filled + count > batch_size or _ends_late(deadlines[run[0]], start_ms, latency, filled + count)):
            return run, late, index
        deadline = deadlines[index]
        if deadline is not None and start_ms > deadline:
            late.append(index)
        else:
            run.append(index)
            filled += count
    return run, late, end


def _ends_late(deadline: float | None, start_ms: float, latency: Sequence[float] | None, rows: int) -> bool:
    """Whether a run of `rows` started at `start_ms` ends after `deadline` (never, without a latency)."""
    if latency is None or deadline is None:
        return False
    return start_ms + latency[min(rows, len(latency) - 1)] > deadline


def plan_runs(rows: Sequence[int], deadlines: Sequence[float | None], batch_size: int, now_ms: float,
              run_ms: float, latency: Sequence[float] | None = None) -> tuple[list[list[int]], list[tuple[int, float]]]:
    """The runs of the queries in hand (`next_run` after `next_run`, with its `latency` cap, the first now,
    each predicted to start `run_ms` after the one before) and the queries that cannot start before their
    deadline, with when they would: a query that would start too late leaves the plan, and those behind
    it move up.

    Told at once, rather than when its turn comes, the client hears of it within its SLO: answered
    only once its deadline had passed, a shed query came a median 25-110 ms after it (measured at 3x a replica's
    capacity on contended cores)."""
    runs: list[list[int]] = []
    hopeless: list[tuple[int, float]] = []
    first, start = 0, now_ms
    while first < len(rows):
        run, late, first = next_run(deadlines, batch_size, start, rows, first, latency=latency)
        hopeless += [(index, start) for index in late]
        if run:
            runs.append(run)
        start += run_ms
    return runs, hopeless

