"""How the executors carry the policies' actions out: where a replica goes and when a variant whose
traffic moved away retires. Pure functions of a `Snapshot` or of variants' live state; the live scaler
(`scaler.service`) and the simulator (`sim.engine`) both call them, and selection places cold variants
with `worker_with_room`. (The batching rule, which the live replicas and the simulator share, is in
`batching.py`.)
"""

from __future__ import annotations

import dataclasses

from ..catalog import Variant
from .capacity import replica_share
from .snapshot import INACTIVE, PolicyConfig, Snapshot, VariantLive, WorkerLive

# Placement has no config of its own: the scaler's defaults size a replica's share of a worker.
_SCALER = PolicyConfig()


def reserved_share(snapshot: Snapshot, worker: WorkerLive) -> float:
    """The share of the worker its replicas reserve, each its whole share (`capacity.replica_share`), as the
    scaler's SLO-first placement plans them; a variant the snapshot does not know reserves the whole worker."""
    return sum(count * (replica_share(snapshot.variants[v], _SCALER) if v in snapshot.variants else 1.0)
               for v, count in worker.variants.items() if count > 0)


def worker_with_room(snapshot: Snapshot, variant: Variant, starting: bool = False) -> WorkerLive | None:
    """The least utilized ready worker of the variant's hardware with memory for it and units no replica
    reserves yet (`reserved_share` + the new replica's share <= 1); None when no ready worker has room.
    `starting`: a starting worker with room will do when no ready one has any.

    Not the least utilized worker whatever it hosts: a worker's utilization is that of the last second, and
    replicas co-located on it at a low load (every variant loaded while one worker was up, the last
    replicas of a lull) all get busy at the next burst and slow each other several times over, each
    variant on it at once, for as long as the burst lasts."""
    best: WorkerLive | None = None
    share = replica_share(variant, _SCALER)
    for worker in snapshot.workers.values():
        if (worker.hardware != variant.hardware or not (worker.ready or starting)
                or (worker.memory_budget_mb > 0 and worker.free_memory_mb < variant.peak_memory_mb)
                or reserved_share(snapshot, worker) + share > 1.0 + 1e-9):
            continue
        rank = (not worker.ready, worker.utilization, worker.worker_id)
        if best is None or rank < (not best.ready, best.utilization, best.worker_id):
            best = worker
    return best


def worker_for(snapshot: Snapshot, variant: Variant, named: str | None = None) -> str | None:
    """Where one more replica of `variant` goes: the worker the policy named; with none named (a cold load,
    a replica that waited, a lost worker's replica), a ready worker with room, else a starting one with
    room (`worker_with_room`). A starting worker hosts it once it is up (the scaler keeps the replica
    waiting until then: only a ready worker takes commands). None: no worker has room; the replica
    waits, and the scaling policy, seeing it unplaced, adds a worker for it."""
    if named is not None:
        return named if named in snapshot.workers else None
    chosen = worker_with_room(snapshot, variant, starting=True)
    return chosen.worker_id if chosen else None


def with_replica(snapshot: Snapshot, worker_id: str, variant_id: str) -> Snapshot:
    """`snapshot` with one more replica of the variant on the worker, so that the next placements of the
    same pass do not count its units as free."""
    worker = snapshot.workers.get(worker_id)
    if worker is None:
        return snapshot
    hosted = {**worker.variants, variant_id: worker.variants.get(variant_id, 0) + 1}
    workers = {**snapshot.workers, worker_id: dataclasses.replace(worker, variants=hosted)}
    return snapshot.with_changes(workers=workers)


def serving(live: VariantLive) -> bool:
    """Whether a replica of the variant serves (is loaded, not only placed)."""
    return live.status != INACTIVE and live.serving_replicas > 0


def retire_now(source: VariantLive, target: VariantLive) -> bool:
    """Whether the source of an upgrade/downgrade retires now: its target serves, and the source has
    nothing queued and got no query in the last window (the dispatcher sends it none once the target
    serves), so unloading it drops no query."""
    return serving(target) and source.queue_len == 0 and source.qps == 0
