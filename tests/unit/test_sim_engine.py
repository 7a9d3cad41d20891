"""The simulator: hand-computable cases, scaling timing, determinism, and the shared policy code."""

from __future__ import annotations

import numpy as np
import pytest

from infaas.policies import baselines, monitoring, scaling, selection
from infaas.policies.selection import Request
from infaas.policies.snapshot import ACTIVE, PolicyConfig, Snapshot, VariantLive
from infaas.sim import engine
from infaas.sim.engine import SimOptions, Simulator
from infaas.sim.traces import Trace, build_workload, flat_trace
from tests.unit.test_policies_scaling import CPU_B1, variant

B2 = variant("resnet:ort:cpu-2t:b2", batch=2, slope=20.0, intercept=80.0)  # 100 ms alone, 120 ms for two
CPU_HOURLY = 0.085  # one CPU worker


def trace(arrivals, slo: float) -> Trace:
    arrivals = np.asarray(arrivals, dtype=float)
    return Trace("vision", arrivals, np.full(len(arrivals), slo), np.ones(len(arrivals), dtype=np.int16))


def run(variants, traces, policy="static", seed=0, **options):
    rng = np.random.default_rng(seed)
    workload = build_workload(traces, variants, rng)
    sim = Simulator(list(variants), workload, SimOptions(policy=policy, seed=seed, **options))
    return sim, sim.run()


def test_one_replica_two_queries_a_second_queueing_and_cost_by_hand():
    # Two queries at the same instant every second; one 100 ms replica (static: peak 2 q/s < 10 q/s).
    arrivals = [t for second in range(10) for t in (second * 1000.0,) * 2]
    sim, summary = run([CPU_B1], [trace(arrivals, slo=150.0)])
    latency = sim.finish - sim.workload.arrival_ms
    assert sorted(set(latency.round(6))) == [100.0, 200.0]  # the second waits for the first
    assert summary["slo_violation_rate"] == 0.5 and summary["served"] == 20
    assert summary["cost_usd"] == pytest.approx(CPU_HOURLY * 9.0 / 3600)  # one worker over the 9 s window
    assert summary["workers_peak"] == 1 and summary["mean_accuracy"] == pytest.approx(CPU_B1.accuracy)


def test_measured_service_times_stretch_the_runs_and_not_the_policy():
    # As above, each run taking 1.4x the profile's 100 ms + 5 ms: the pair's second query ends at 290 ms.
    arrivals = [t for second in range(10) for t in (second * 1000.0,) * 2]
    sim, summary = run([CPU_B1], [trace(arrivals, slo=150.0)], service_times={CPU_B1.variant_id: (1.4, 5.0)})
    assert sorted(set((sim.finish - sim.workload.arrival_ms).round(6))) == [145.0, 290.0]
    assert summary["workers_peak"] == 1  # static still provisions from the profile, as live


def test_dynamic_batching_serves_the_pair_together():
    arrivals = [t for second in range(10) for t in (second * 1000.0,) * 2]
    sim, summary = run([B2], [trace(arrivals, slo=150.0)])
    assert np.allclose(sim.finish - sim.workload.arrival_ms, 120.0)  # one batch of two: latency(2)
    assert summary["slo_violation_rate"] == 0.0


def test_queries_past_their_deadline_are_answered_without_running():
    # Three at once, 150 ms SLO: 100 ms (ok), 200 ms (late), the third expires before it starts.
    arrivals = [t for second in range(5) for t in (second * 1000.0,) * 3]
    sim, summary = run([CPU_B1], [trace(arrivals, slo=150.0)])
    assert summary["served"] == 10 and summary["unserved"] == 5
    assert summary["slo_violations"] == 10
    assert np.isinf(sim.finish[2::3]).all()


def test_a_step_in_load_scales_at_the_next_tick_and_serves_after_worker_start_and_load():
    # replica-only, 100 ms replicas (10 q/s, delta = demand - 8 r): 5 q/s for a minute, then 30 q/s.
    arrivals = np.concatenate([np.arange(0, 60_000, 200.0), np.arange(60_000, 120_000, 1000 / 30)])
    decisions = []
    decide = scaling.decide

    def spy(snapshot, *args, **kwargs):
        actions = decide(snapshot, *args, **kwargs)
        decisions.extend((snapshot.at_ms, a) for a in actions)
        return actions

    config = PolicyConfig(max_workers=20, scale_up_windows=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scaling, "decide", spy)
        sim, summary = run([CPU_B1], [trace(arrivals, slo=1000.0)], policy="replica-only", config=config,
                           worker_start_s=(20.0, 20.0))
    first_at, first = decisions[0]
    assert first_at == 61_000 and first.kind == "ADD_REPLICA"  # the monitor saw 30 q/s in [60 s, 61 s)
    added = [a for at, a in decisions if at == 61_000]
    assert [a.kind for a in added] == ["ADD_REPLICA"] * 3 + ["ADD_WORKER"]  # ceil((30 - 8) / 10) = 3
    assert added[-1].to_count == 4
    arrival_s = (sim.workload.arrival_ms // 1000).astype(int)
    late = ~(sim.finish - sim.workload.arrival_ms <= sim.workload.deadline_ms)
    assert not late[arrival_s < 60].any()
    assert late[(arrival_s >= 62) & (arrival_s < 81)].all()  # one replica for 30 q/s until 82 s
    assert not late[arrival_s >= 84].any()  # workers up at 81 s, replicas loaded at 82 s


def test_infaas_loads_what_the_dispatcher_chooses_and_serves_it():
    rng = np.random.default_rng(3)
    sim, summary = run([CPU_B1, B2, variant("resnet:trt:gpu-t4:b8", hardware="gpu-t4", batch=8, slope=5.0,
                                            intercept=0.0, load_ms=2000.0)],
                       [flat_trace("vision", 5.0, 120.0, 300.0, rng)], policy="infaas")
    assert summary["actions"]["LOAD_VARIANT"] >= 1
    unserved = ~np.isfinite(sim.finish)
    assert summary["queries"] > 500 and summary["served"] >= 0.97 * summary["queries"]
    assert sim.workload.arrival_ms[unserved].min() < CPU_B1.load_ms  # the first ones wait for the load


def _flat_summary(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    variants = [CPU_B1, B2]
    _, summary = run(variants, [flat_trace("vision", 40.0, 90.0, 300.0, rng)], policy="infaas", seed=seed)
    return {k: v for k, v in summary.items() if k != "wall_s"}


def test_deterministic_for_a_seed():
    assert _flat_summary(7) == _flat_summary(7)
    assert _flat_summary(7)["queries"] != _flat_summary(8)["queries"]


def test_the_simulator_calls_the_policy_functions_the_live_system_calls():
    """Fails if the simulator carries its own copy of a policy: every one must be called, by module."""
    calls = {}

    def counting(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)
        return wrapper

    rng = np.random.default_rng(1)
    traces = [flat_trace("vision", 20.0, 30.0, 300.0, rng)]
    with pytest.MonkeyPatch.context() as patch:
        for module, name in ((selection, "select"), (scaling, "decide"), (monitoring, "classify"),
                             (monitoring, "track"), (baselines, "plan_baseline"), (baselines, "initial_actions")):
            patch.setattr(module, name, counting(module, name))
        run([CPU_B1, B2], traces, policy="infaas")
        run([CPU_B1, B2], traces, policy="replica-only")
    assert set(calls) == {"select", "decide", "classify", "track", "plan_baseline", "initial_actions"}
    # ... and it has no policy of its own to fall back on.
    for name in ("select", "decide", "classify", "track", "horizontal", "vertical", "plan_baseline"):
        assert not hasattr(engine, name)


def test_a_tick_s_cold_loads_see_the_worker_the_previous_ones_took():
    """Two tasks load a variant each in the first tick with one CPU worker up: the first takes it, the second
    waits for a worker with room (the dispatcher's snapshot counts the load it just asked for), instead of
    both landing on the one worker and slowing each other at their first burst."""
    text = variant("bert:ort:cpu-2t:b1", task="text")
    arrivals = np.arange(0.0, 5_000.0, 250.0)
    traces = [trace(arrivals, slo=300.0), Trace("text", arrivals + 10.0, np.full(len(arrivals), 300.0),
                                                  np.ones(len(arrivals), dtype=np.int16))]
    loads = []
    with pytest.MonkeyPatch.context() as patch:
        apply = Simulator._apply

        def spy(self, action, now):
            if action.kind == "LOAD_VARIANT":
                loads.append((action.variant_id, action.worker_id))
            apply(self, action, now)
        patch.setattr(Simulator, "_apply", spy)
        run([CPU_B1, text], traces, policy="infaas", warmup_s=0.0)
    assert loads[:2] == [(CPU_B1.variant_id, "cpu-1"), (text.variant_id, None)]


def test_the_dispatcher_decides_again_within_a_tick_on_the_live_dispatcher_s_queue_estimate():
    """A spike just before a tick leaves a queue the replica drains in a fraction of the next second. Decided
    once a tick on the queue reported at its start, the class had every query of that second rejected; a class
    with no variant is decided again at its next query, on the estimated queue (reported + routed since,
    drained meanwhile), so it is routed again once the queue is estimated drained."""
    fast = variant("resnet:ort:cpu-2t:b1", intercept=10.0, load_ms=100.0)
    steady = np.arange(0.0, 10_000.0, 100.0)
    spike = np.full(40, 5_950.0)
    arrivals = np.sort(np.concatenate([steady, spike]))
    for route_ms in (0, 250):
        sim, _ = run([fast], [trace(arrivals, slo=100.0)], policy="infaas", route_ms=route_ms)
        second = (sim.workload.arrival_ms >= 6_000) & (sim.workload.arrival_ms < 7_000)
        assert int((sim.served_by[second] < 0).sum()) <= 5  # a few, until the estimate has drained the spike


def test_while_capacity_starts_a_burst_fills_the_queue_the_idle_replicas_left_empty():
    """A class is decided again within a window when its variant's capacity is starting and the query would miss
    its SLO behind the queue: each routed query joins it, the serving replica drains it meanwhile, never below
    empty. Counted as reported + routed - drained since the report, the 900 ms the replica sat idle drained a
    burst that came after them, and the whole burst went into one queue. A variant at full capacity keeps the
    live dispatcher's estimate, and its window's decision."""
    request = Request("sim", task="vision", latency_ms=300.0)
    for loading, late_at_900 in ((1, True), (0, False)):
        state = VariantLive(ACTIVE, replicas=1 + loading, loading=loading)
        routing = engine._Routing(Snapshot({CPU_B1.variant_id: CPU_B1}, {CPU_B1.variant_id: state}, {}, 0), start=0)
        for _ in range(3):
            routing.route(CPU_B1, 900.0)
        assert routing.queue_at(CPU_B1, 900.0) == (3 if loading else 0)
        assert routing.late(CPU_B1, request, 900.0) is late_at_900  # 300 ms of queue + its own 100 ms
        assert not routing.late(CPU_B1, request, 1_100.0)  # two drained
