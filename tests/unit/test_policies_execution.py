"""The one action-execution model (`policies.execution`, `policies.batching`): where a replica goes, when a
moved variant retires, what forms a batch; and that the live scaler, the live replica and the simulator all
carry actions out with these functions (each test below fails if one side keeps a copy of its own)."""

from __future__ import annotations

import time
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest

from infaas.consumers.replica import HostedVariant, Replica
from infaas.policies import batching, execution
from infaas.policies.actions import ADD_REPLICA, Action
from infaas.policies.snapshot import ACTIVE, INACTIVE, VariantLive
from infaas.scaler.service import Scaler
from infaas.sim.engine import SimOptions, Simulator
from infaas.sim.traces import build_workload, flat_trace
from tests.unit.test_policies_scaling import CPU_B1, GPU_B8, SMALL_CPU, live, snapshot, variant, worker

SLOW_B4 = variant("slow:ort:cpu-2t:b4", batch=4, slope=50.0, intercept=0.0)  # 50 ms a row

# ---------------------------------------------------------------- placement

def test_a_replica_goes_to_the_least_utilized_ready_worker_with_room():
    # w1 is full (a CPU replica takes a whole worker), w2 is busier than w3: w3.
    workers = [worker("w1", hosts={SMALL_CPU.variant_id: 1}), worker("w2", util=0.5), worker("w3", util=0.1)]
    assert execution.worker_for(snapshot({}, workers), CPU_B1) == "w3"


def test_a_starting_worker_with_room_is_taken_only_when_no_ready_one_has_room():
    starting = worker("w9", ready=False)
    assert execution.worker_for(snapshot({}, [worker("w1"), starting]), CPU_B1) == "w1"
    assert execution.worker_for(snapshot({}, [worker("w1", hosts={SMALL_CPU.variant_id: 1}), starting]),
                                CPU_B1) == "w9"


def test_no_worker_with_room_of_the_hardware_means_wait():
    workers = [worker("w1", hosts={SMALL_CPU.variant_id: 1}), worker("g1", hardware="gpu-t4")]
    assert execution.worker_for(snapshot({}, workers), CPU_B1) is None


def test_the_worker_the_policy_named_is_taken_while_it_exists():
    workers = [worker("w1", hosts={SMALL_CPU.variant_id: 1}), worker("w2", ready=False)]
    assert execution.worker_for(snapshot({}, workers), CPU_B1, named="w1") == "w1"  # the policy judged its room
    assert execution.worker_for(snapshot({}, workers), CPU_B1, named="w2") == "w2"
    assert execution.worker_for(snapshot({}, workers), CPU_B1, named="gone") is None


def test_a_placement_pass_sees_the_units_its_earlier_placements_took():
    view = snapshot({}, [worker("w1"), worker("w2", util=0.2)])
    first = execution.worker_for(view, CPU_B1)
    view = execution.with_replica(view, first, CPU_B1.variant_id)
    assert (first, execution.worker_for(view, CPU_B1)) == ("w1", "w2")
    assert execution.with_replica(view, "gone", CPU_B1.variant_id) is view


# ---------------------------------------------------------------- retirement

def test_a_moved_variant_retires_once_its_target_serves_and_it_has_nothing_left():
    idle = live(1, qps=0.0)
    assert execution.retire_now(idle, live(1, qps=5.0))
    assert not execution.retire_now(idle, live(1, qps=0.0, loading=1))  # the target still loads
    assert not execution.retire_now(idle, VariantLive(status=INACTIVE))
    assert not execution.retire_now(live(1, qps=0.0, queue_len=3), live(1, qps=5.0))  # its queue is not served
    assert not execution.retire_now(live(1, qps=2.0), live(1, qps=5.0))  # it still got queries
    assert execution.retire_now(idle, live(2, qps=5.0, loading=1))  # one target replica serves: enough


# ---------------------------------------------------------------- both sides call them

@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of the shared execution functions, patched where they live."""
    counted: dict[str, int] = {}
    for module, name in ((execution, "worker_for"), (execution, "retire_now"), (batching, "next_run")):
        original = getattr(module, name)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            counted[_name] = counted.get(_name, 0) + 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)
    return counted


def _scaler() -> Scaler:
    """A scaler without Kafka or Cassandra: its executor's state, commands recorded instead of sent."""
    scaler = Scaler.__new__(Scaler)
    scaler.unplaced, scaler.recovering, scaler.expected, scaler.retiring = [], [], [], {}
    scaler.sent, scaler.executed = [], []
    scaler._set_replicas = lambda _snapshot, vid, wid, count, reason: scaler.sent.append((vid, wid, count))
    scaler.execute = lambda action, _snapshot: scaler.executed.append(action)
    return scaler


def test_the_scaler_places_and_retires_with_the_shared_functions(calls):
    scaler = _scaler()
    scaler.unplaced = [(CPU_B1.variant_id, "cpu"), (SMALL_CPU.variant_id, "cpu")]
    scaler.recovering = [(CPU_B1.variant_id, "cpu")]
    scaler.retiring = {SMALL_CPU.variant_id: CPU_B1.variant_id}
    view = snapshot({SMALL_CPU.variant_id: live(1, qps=0.0), CPU_B1.variant_id: live(1, qps=4.0)},
                    [worker("w1"), worker("w2", util=0.3), worker("w3", ready=False)])
    scaler._place_unplaced(view)
    scaler._retire(view)
    assert calls["worker_for"] == 3 and calls["retire_now"] == 1
    # The lost worker's replica first, on the least utilized worker with room; then the next one with room;
    # the last waits (only a starting worker has room, and a command goes to a ready worker only).
    assert scaler.sent == [(CPU_B1.variant_id, "w1", 1), (CPU_B1.variant_id, "w2", 1)]
    assert scaler.unplaced == [(SMALL_CPU.variant_id, "cpu")]
    assert [a.variant_id for a in scaler.executed] == [SMALL_CPU.variant_id] and not scaler.retiring
    # An action's replica too: on the worker the policy named, once that worker is ready.
    scaler._add_replica(Action(ADD_REPLICA, "test", CPU_B1.variant_id, worker_id="w3"), view)
    assert calls["worker_for"] == 4 and scaler.unplaced[-1] == (CPU_B1.variant_id, "cpu")


def test_the_replica_forms_its_runs_with_the_shared_rule(calls):
    replica = Replica.__new__(Replica)
    replica.hosted = HostedVariant(CPU_B1, SimpleNamespace(), None, 0.0, 0.0)
    replica.policy = SimpleNamespace(batch_size=1)
    replica.run_times = deque([40.0])
    queries = [{"rows": 1, "routed": {"deadline_at": None}} for _ in range(3)]
    batch, late, rest = replica._next_run(queries)
    assert (batch, late, rest) == (queries[:1], [], queries[1:]) and calls["next_run"] == 3
    # With the profile's run times as the simulator's cap: 2 rows end 100 ms from now, 3 after 150 ms,
    # past the first query's deadline.
    replica.hosted = HostedVariant(SLOW_B4, SimpleNamespace(), None, 0.0, 0.0)
    replica.policy = SimpleNamespace(batch_size=4)
    first = time.time() * 1000 + 125.0
    queries = [{"rows": 1, "routed": {"deadline_at": deadline}} for deadline in (first, first + 1e4, first + 1e4)]
    batch, late, rest = replica._next_run(queries)
    assert (batch, late, rest) == (queries[:2], [], queries[2:])


def test_the_simulator_places_batches_and_retires_with_the_shared_functions(calls):
    rng = np.random.default_rng(1)
    workload = build_workload([flat_trace("vision", 20.0, 30.0, 300.0, rng)], [CPU_B1, GPU_B8], rng)
    sim = Simulator([CPU_B1, GPU_B8], workload, SimOptions(policy="infaas", seed=1))
    sim.run()
    assert calls["worker_for"] > 0 and calls["next_run"] > 0
    # A replica that waited is placed through `worker_for`, as one added is.
    target, source = sim._sim(GPU_B8.variant_id), sim._sim(CPU_B1.variant_id)
    sim._add_replica(target, "no such worker", None, 0.0)
    calls.clear()
    sim._start_worker("gpu-t4", 0.0, ready_at=0.0)
    sim._place_pending(0.0, ready_now=True)
    assert calls == {"worker_for": 1} and target.replicas and not target.unplaced
    # A move whose target serves: the source retires through `retire_now`.
    target.status, source.moving_to, source.qps = ACTIVE, GPU_B8.variant_id, 0.0  # its traffic went over
    sim._advance(sim.workload.duration_ms + 10_000_000)
    assert calls["retire_now"] == 1 and not source.replicas and not source.moving_to
