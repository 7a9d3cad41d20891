"""How the executors carry the policies' actions out: where a replica goes and when a variant whose
traffic moved away retires. Pure functions of a `Snapshot` or of variants' live state; the live scaler
(`scaler.service`) and the simulator (`sim.engine`) both call them, and selection places cold variants
with `worker_with_room`. (The batching rule, which the live replicas and the simulator share, is in
`batching.py`.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from ..catalog import Variant
from .capacity import (
    hardware_of,
    recent_peak_rows,
    replica_share,
    replica_throughput,
    target_utilization,
    usable_batch,
)
from .snapshot import INACTIVE, PolicyConfig, Snapshot, VariantLive, WorkerLive

# Placement has no config of its own: the scaler's defaults size a replica's share of a worker.
_SCALER = PolicyConfig()
# A light variant moves onto a shared GPU only below this share of `gpu_colocation_share`, and leaves it above the
# whole of it: a variant whose peak sits near the line does not move in and out.
ENTER_SHARE = 0.5


def light(snapshot: Snapshot, variant: Variant, config: PolicyConfig = _SCALER, entering: bool = False) -> bool:
    """Whether the variant is a light GPU variant: loaded, with a known SLO, and the peak of its demand over
    the peak window needs at most `gpu_colocation_share` of one replica at the target utilization (to move
    onto a shared GPU, `entering`: `ENTER_SHARE` of that).
    Its one replica then reserves only that share of a GPU (`reservation`).

    A GPU per lightly used variant is most of what serving costs at low load (five tasks whose best
    model runs only on a GPU keep five GPUs); INFaaS shares GPUs between variants. The peak of the window
    already holds the rate's noise (its busiest second), and changes only when a busier second comes or the
    busiest leaves the window."""
    share = config.gpu_colocation_share
    if not 0 < share < 1 or not config.slo_first or hardware_of(variant, config).kind == "cpu":
        return False
    live = snapshot.live_of(variant.variant_id)
    slo = live.strictest_slo_ms
    if live.status == INACTIVE or slo <= 0:
        return False
    key = ("light", variant.variant_id)
    need = snapshot._memo.get(key)
    if need is None:
        peak = recent_peak_rows(live, snapshot.demand.get(variant.variant_id, ()), config)
        capacity = (replica_throughput(variant, slo, config.slo_batch_factor)
                    * target_utilization(variant, config, slo))
        need = snapshot._memo[key] = peak / capacity if capacity > 0 else math.inf
    return need <= share * (ENTER_SHARE if entering else 1.0)


def reservation(snapshot: Snapshot, variant: Variant, config: PolicyConfig = _SCALER) -> float:
    """The share of a worker one replica of the variant reserves: `gpu_colocation_share` when it is light,
    else its whole share (`capacity.replica_share`)."""
    return config.gpu_colocation_share if light(snapshot, variant, config) else replica_share(variant, config)


def reserved_share(snapshot: Snapshot, worker: WorkerLive, config: PolicyConfig = _SCALER) -> float:
    """The share of the worker its replicas reserve (`reservation`), as the scaler's SLO-first placement plans
    them; a variant the snapshot does not know reserves the whole worker."""
    return sum(count * (reservation(snapshot, snapshot.variants[v], config) if v in snapshot.variants else 1.0)
               for v, count in worker.variants.items() if count > 0)


def batch_run_ms(snapshot: Snapshot, variant: Variant, config: PolicyConfig = _SCALER) -> float:
    """How long one batch of the variant runs for its traffic: at the largest batch its SLO allows."""
    slo = snapshot.live_of(variant.variant_id).strictest_slo_ms
    return variant.latency_at(max(usable_batch(variant, slo, config.slo_batch_factor), 1))


def can_share(snapshot: Snapshot, variant: Variant, hosted: Iterable[str], config: PolicyConfig = _SCALER) -> bool:
    """Whether the variant may join a GPU that runs the `hosted` variants: all light, and each one's SLO
    leaves time to wait for a batch of every one of them (one GPU runs one batch at a time), its own
    included, and then to run its own: `latency(b) + sum of latency(b) <= SLO` for each."""
    others = [v for v in hosted if v != variant.variant_id]
    if any(v not in snapshot.variants for v in others):
        return False  # a variant the snapshot does not know: its batches cannot be timed
    group = [variant, *(snapshot.variants[v] for v in others)]
    if not all(light(snapshot, v, config) for v in group):
        return False
    runs = [batch_run_ms(snapshot, v, config) for v in group]
    total = sum(runs)
    slos = [snapshot.live_of(v.variant_id).strictest_slo_ms for v in group]
    return all(run + total <= slo for run, slo in zip(runs, slos, strict=True))


def worker_with_room(snapshot: Snapshot, variant: Variant, starting: bool = False) -> WorkerLive | None:
    """The least utilized ready worker of the variant's hardware with memory for it and units no replica
    reserves yet (`reserved_share` + the new replica's `reservation` <= 1; a light GPU variant shares a GPU
    only with variants it `can_share` with); None when no ready worker has room.
    `starting`: a starting worker with room will do when no ready one has any.

    Not the least utilized worker whatever it hosts: a worker's utilization is that of the last second, and
    replicas co-located on it at a low load (every variant loaded while one worker was up, the last
    replicas of a lull) all get busy at the next burst and slow each other several times over, each
    variant on it at once, for as long as the burst lasts."""
    best: WorkerLive | None = None
    share = reservation(snapshot, variant)
    for worker in snapshot.workers.values():
        hosted = [v for v, count in worker.variants.items() if count > 0 and v != variant.variant_id]
        if (worker.hardware != variant.hardware or not (worker.ready or starting)
                or (worker.memory_budget_mb > 0 and worker.free_memory_mb < variant.peak_memory_mb)
                or reserved_share(snapshot, worker) + share > 1.0 + 1e-9
                or (hosted and light(snapshot, variant) and not can_share(snapshot, variant, hosted))):
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
