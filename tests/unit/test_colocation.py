"""GPU co-location (SLO-first): light GPU variants share a GPU (`execution.light`, `can_share`, the Ledger's
placement, `scaling.colocation`), and the simulator makes a batch wait for the others on a shared GPU.

Fixtures: A and B run a query in 40 ms on a gpu-t4 (thr = 25 rows/s), with a 300 ms SLO: target utilization
min(1 - 40/300, 0.85) = 0.85, so a replica is planned for 21.25 rows/s. With `gpu_colocation_share` 0.5 a
variant is light while its peak needs <= 10.6 rows/s, and moves onto a shared GPU below 5.3.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from infaas.policies import decide, execution
from infaas.policies.scaling import Ledger
from infaas.policies.snapshot import PolicyConfig, Snapshot
from infaas.sim.engine import SimOptions, SimReplica, Simulator, SimVariant, SimWorker
from tests.unit.test_policies_scaling import AT, CPU_B1, live, variant, worker

CONFIG = PolicyConfig(max_workers=20, scale_up_windows=1, warm_pool_max=0, noise_headroom_sigmas=0.0)
A = variant("a:ort:gpu-t4:b1", hardware="gpu-t4", intercept=40.0, task="a")
B = variant("b:ort:gpu-t4:b1", hardware="gpu-t4", intercept=40.0, task="b")
CATALOG = {v.variant_id: v for v in (A, B, CPU_B1)}
LOADED = AT - 300_000  # loaded five minutes before "now": past the hold


def state(peak: float, slo: float = 300.0, replicas: int = 1, workers=("g1",), **kw):
    """A variant's live state whose demand peaked at `peak` queries/s for 5 s of the window, with an SLO of `slo`."""
    return (live(replicas, 1.0, workers=workers, demand_slo_ms=slo, loaded_at_ms=LOADED, **kw),
            (1.0,) * 54 + (peak,) * 5)


def snap(lives: dict, workers: list, catalog=CATALOG) -> Snapshot:
    return Snapshot(catalog, {v: s for v, (s, _) in lives.items()}, {w.worker_id: w for w in workers}, AT,
                    {v: d for v, (_, d) in lives.items()})


def gpu(wid: str, **hosts: int):
    return worker(wid, hardware="gpu-t4", hosts={f"{v}:ort:gpu-t4:b1": n for v, n in hosts.items()})


def test_a_light_gpu_variant_needs_at_most_the_share_of_a_replica_at_its_peak():
    def light(peak, variant=A, config=CONFIG, entering=False, **kw):
        return execution.light(snap({variant.variant_id: state(peak, **kw)}, []), variant, config, entering)

    assert light(4.0) and light(4.0, entering=True)
    assert light(8.0) and not light(8.0, entering=True)  # light, but too near the line to move in
    assert not light(12.0)
    assert not light(4.0, slo=0.0)  # no known SLO: no co-location
    assert not light(4.0, config=replace(CONFIG, gpu_colocation_share=0.0))
    assert not light(0.5, variant=CPU_B1)  # CPU replicas have vCPUs of their own


def test_a_light_replica_reserves_its_share_and_joins_a_gpu_it_can_share():
    lives = {A.variant_id: state(4.0), B.variant_id: state(4.0, workers=())}
    view = snap(lives, [gpu("g1", a=1)])
    assert execution.reservation(view, A) == 0.5
    assert execution.reserved_share(view, view.workers["g1"]) == 0.5
    assert execution.can_share(view, B, ["a:ort:gpu-t4:b1"])
    assert execution.worker_with_room(view, B).worker_id == "g1"
    # A heavy B reserves a whole GPU: no room beside A.
    heavy = snap({**lives, B.variant_id: state(30.0, workers=())}, [gpu("g1", a=1)])
    assert execution.worker_with_room(heavy, B) is None


def test_no_sharing_where_an_slo_leaves_no_time_to_wait_for_the_other_batches():
    # With a 100 ms SLO, B's own run (40) after a batch of each (40 + 40) takes 120 ms.
    lives = {A.variant_id: state(2.0, slo=100.0), B.variant_id: state(2.0, slo=100.0, workers=())}
    view = snap(lives, [gpu("g1", a=1)])
    assert not execution.can_share(view, B, ["a:ort:gpu-t4:b1"])
    assert execution.worker_with_room(view, B) is None
    # Nor beside a variant the snapshot does not know: its batches cannot be timed.
    assert not execution.can_share(snap({B.variant_id: state(2.0)}, []), B, ["gone:ort:gpu-t4:b1"])
    ledger = Ledger.of(view, CONFIG)
    assert ledger.place(B, 0.0, shared_only=True, want=False) is None


def test_the_ledger_packs_a_light_replica_beside_other_light_ones_before_an_empty_gpu():
    lives = {A.variant_id: state(4.0), B.variant_id: state(4.0, workers=())}
    ledger = Ledger.of(snap(lives, [gpu("g0"), gpu("g1", a=1)]), CONFIG)
    assert ledger.place(B, 0.0) == "g1"
    assert ledger.reserved["g1"] == pytest.approx(1.0)
    assert ledger.place(B, 0.0) == "g0"  # g1 is full now


def test_a_light_variant_alone_on_a_gpu_moves_beside_another_and_they_never_swap():
    lives = {A.variant_id: state(4.0, workers=("g1",)), B.variant_id: state(4.0, workers=("g2",))}
    actions = decide(snap(lives, [gpu("g1", a=1), gpu("g2", b=1)]), CONFIG)
    moves = [a for a in actions if "co-located" in a.reason]
    # Both reserve as much: only the one on the GPU that sorts last moves (B, onto g1).
    assert [(a.kind, a.variant_id, a.worker_id) for a in moves] == [("ADD_REPLICA", B.variant_id, "g1")]


def test_a_variant_loaded_less_than_the_hold_or_near_the_line_stays_alone():
    fresh = {A.variant_id: state(4.0, workers=("g1",)), B.variant_id: state(4.0, workers=("g2",))}
    fresh[B.variant_id] = (replace(fresh[B.variant_id][0], loaded_at_ms=AT - 10_000), fresh[B.variant_id][1])
    assert not [a for a in decide(snap(fresh, [gpu("g1", a=1), gpu("g2", b=1)]), CONFIG) if "co-located" in a.reason]
    near = {A.variant_id: state(4.0, workers=("g1",)), B.variant_id: state(8.0, workers=("g2",))}
    assert not [a for a in decide(snap(near, [gpu("g1", a=1), gpu("g2", b=1)]), CONFIG) if "co-located" in a.reason]


def test_once_the_shared_replica_serves_the_gpu_it_had_alone_goes():
    lives = {A.variant_id: state(4.0), B.variant_id: state(4.0, replicas=2, workers=("g1", "g2"))}
    actions = [a for a in decide(snap(lives, [gpu("g1", a=1, b=1), gpu("g2", b=1)]), CONFIG)
               if a.variant_id == B.variant_id]
    assert [(a.kind, a.worker_id) for a in actions] == [("REMOVE_REPLICA", "g2")]
    # Not while it still loads: one step at a time.
    loading = {**lives, B.variant_id: (replace(lives[B.variant_id][0], loading=1), lives[B.variant_id][1])}
    assert not [a for a in decide(snap(loading, [gpu("g1", a=1, b=1), gpu("g2", b=1)]), CONFIG)
                if a.variant_id == B.variant_id and a.kind == "REMOVE_REPLICA"]


def test_a_variant_no_longer_light_leaves_the_shared_gpu_for_one_of_its_own():
    heavy = {A.variant_id: state(4.0), B.variant_id: state(15.0)}
    actions = [a for a in decide(snap(heavy, [gpu("g1", a=1, b=1), gpu("g3")]), CONFIG) if a.variant_id == B.variant_id]
    assert [(a.kind, a.worker_id) for a in actions] == [("ADD_REPLICA", "g3")]
    assert "no longer light" in actions[0].reason
    # Once a replica on a GPU of its own carries the demand, the shared one goes.
    moved = {**heavy, B.variant_id: state(15.0, replicas=2, workers=("g1", "g3"))}
    actions = [a for a in decide(snap(moved, [gpu("g1", a=1, b=1), gpu("g3", b=1)]), CONFIG)
               if a.variant_id == B.variant_id]
    assert [(a.kind, a.worker_id) for a in actions] == [("REMOVE_REPLICA", "g1")]


def test_off_every_gpu_replica_reserves_a_whole_gpu():
    off = replace(CONFIG, gpu_colocation_share=0.0)
    lives = {A.variant_id: state(4.0, workers=("g1",)), B.variant_id: state(4.0, workers=("g2",))}
    assert not [a for a in decide(snap(lives, [gpu("g1", a=1), gpu("g2", b=1)]), off) if "co-located" in a.reason]
    assert Ledger.of(snap(lives, [gpu("g1", a=1)]), off).place(B, 0.0, want=False) is None


def test_the_simulator_makes_a_batch_on_a_shared_gpu_wait_for_the_others():
    options = SimOptions()
    sim = SimpleNamespace(options=options)
    shared = SimWorker("gpu-t4-1", "gpu-t4", 1, 16_384.0, 0.526, 0.0, 0.0)
    first, second = (SimReplica(SimVariant(v, i, 60), shared, 1, 0.0) for i, v in enumerate((A, B)))
    shared.replicas = [first, second]
    first.busy, first.runs, second.busy, second.runs = 300.0, 3, 100.0, 1  # ms busy in the last 1 s tick
    Simulator._gpu_waits(sim, shared)
    assert (first.wait_p, first.wait_ms) == (pytest.approx(0.1), pytest.approx(100.0))
    assert (second.wait_p, second.wait_ms) == (pytest.approx(0.3), pytest.approx(100.0))
    shared.replicas = [first]  # alone again: no wait
    Simulator._gpu_waits(sim, shared)
    assert first.wait_p == 0.0


def test_the_simulator_applies_the_wait_to_batches_on_a_shared_gpu():
    shared = SimWorker("gpu-t4-1", "gpu-t4", 1, 16_384.0, 0.526, 0.0, 0.0)
    sv = SimVariant(A, 0, 60)
    replica = SimReplica(sv, shared, 1, 0.0)
    sv.replicas, shared.replicas = [replica], [replica]
    sv.queue_at, sv.queue_ids, sv.queue_deadline = [0.0], [0], [300.0]
    replica.wait_p, replica.wait_ms = 1.0, 100.0
    Simulator._serve_variant(sv, 1000.0, lambda: 0.5, lambda *_: 1.0)  # always waits, for half of the others' batch
    assert sv.batch_finish == [pytest.approx(40.0 + 50.0)]
