"""The dispatcher's per-message logic: validation, statuses, routing, dead letters.

Driven directly (no Faust, no broker) over a catalogue set by hand; the end-to-end tests cover
the agent on the real Kafka."""

import dataclasses
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from infaas import views
from infaas.catalog import TaskInfo
from infaas.policies.snapshot import Snapshot
from infaas.schemas.codec import Codec
from infaas.streams import dispatcher as dispatcher_module
from infaas.streams.dispatcher import Dispatcher
from infaas.tensors import to_tensor
from infaas.views import Catalog, SystemView
from tests.unit.test_selection import CATALOG, LARGE, MEDIUM, SMALL, WORKERS

CODEC = Codec()
NOW = int(time.time() * 1000)  # the dispatcher's clock in these tests: queries are sent and read at NOW


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    monkeypatch.setattr(dispatcher_module, "now_ms", lambda: NOW)


@pytest.fixture
def dispatcher(base_settings):
    view = SystemView(base_settings)
    view.catalog = Catalog(apps=frozenset({"demo", "other"}),
                           tasks={"digits": TaskInfo("digits", "pixels", "float32", (64,), 10)},
                           variants=CATALOG, models={v.model: (v.task, v.app_id, v.public) for v in CATALOG.values()})
    view.snapshot = Snapshot(variants=CATALOG, workers=WORKERS, at_ms=1)
    return Dispatcher(base_settings, view)


def query(**changes) -> dict:
    record = {"query_id": "q1", "app_id": "demo", "task": "digits", "model": None, "variant": None,
              "inputs": to_tensor(np.zeros((2, 64), np.float32)), "min_accuracy": None, "latency_ms": 50.0,
              "max_cost": None, "reply_topic": None, "sent_at": NOW}
    record.update(changes)
    return record


def handle(dispatcher, **changes):
    return dispatcher.handle(CODEC.encode("Query", query(**changes)), ("q", 0, 7))


def result_of(outgoing, settings, app="demo"):
    assert len(outgoing) == 1 and outgoing[0].topic == settings.results_topic(app)
    return CODEC.decode_as("Result", outgoing[0].value)


def test_a_good_query_is_routed_with_deadline_and_a_load_command(dispatcher, base_settings):
    out = handle(dispatcher, min_accuracy=0.97)
    assert [o.topic for o in out] == [base_settings.topic("control"), base_settings.variant_topic(LARGE.variant_id)]
    command = CODEC.decode_as("WorkerCommand", out[0].value)
    assert command["action"] == "LOAD" and command["variant_id"] == LARGE.variant_id and command["worker_id"] == "w2"
    routed = CODEC.decode_as("RoutedQuery", out[1].value)
    assert routed["variant_id"] == LARGE.variant_id and routed["deadline_at"] == NOW + 50
    assert routed["query"]["query_id"] == "q1"
    # the next query finds the variant "being loaded" and sends no second load command
    again = handle(dispatcher, min_accuracy=0.97)
    assert [o.topic for o in again] == [base_settings.variant_topic(LARGE.variant_id)]


@pytest.mark.parametrize("changes, status, fragment", [
    ({"inputs": to_tensor(np.zeros((2, 63), np.float32))}, "BAD_INPUT", "does not match the task's"),
    ({"inputs": to_tensor(np.zeros((2, 64), np.float64))}, "BAD_INPUT", "the task expects float32"),
    ({"inputs": to_tensor(np.full((1, 64), np.nan, np.float32))}, "BAD_INPUT", "NaN"),
    ({"inputs": {"dtype": "float32", "shape": [1 << 40, 64], "data": b""}}, "BAD_INPUT", "over the limit"),
    ({"inputs": {"dtype": "float32", "shape": [-1, 64], "data": b""}}, "BAD_INPUT", "negative dimension"),
    ({"inputs": {"dtype": "float32", "shape": [2, 64], "data": b"\0" * 10}}, "BAD_INPUT", "needs 512 bytes"),
    ({"inputs": {"dtype": "complex64", "shape": [1], "data": b"\0" * 8}}, "BAD_INPUT", "unsupported dtype"),
    ({"task": "unknown"}, "UNKNOWN_MODEL", "task 'unknown'"),
    ({"task": None, "model": "nope"}, "UNKNOWN_MODEL", "no model 'nope'"),
    ({"task": None, "variant": "x:y:cpu-1t:b1"}, "UNKNOWN_MODEL", "no variant"),
    ({"task": None}, "BAD_INPUT", "names no task"),
    ({"min_accuracy": 1.5}, "BAD_INPUT", "min_accuracy"),
    ({"latency_ms": -3.0}, "BAD_INPUT", "latency_ms"),
    ({"max_cost": math.inf}, "BAD_INPUT", "max_cost"),
    ({"query_id": ""}, "BAD_INPUT", "query_id"),
    ({"min_accuracy": 0.99, "latency_ms": 1.0}, "NO_FEASIBLE_VARIANT", "best accuracy within 1 ms"),
])
def test_bad_queries_get_a_clear_status(dispatcher, base_settings, changes, status, fragment):
    result = result_of(handle(dispatcher, **changes), base_settings)
    assert result["status"] == status and fragment in result["error"], result["error"]
    assert result["query_id"] == query(**changes)["query_id"]


def test_no_feasible_variant_carries_what_was_possible(dispatcher, base_settings):
    result = result_of(handle(dispatcher, min_accuracy=0.99, latency_ms=1.0), base_settings)
    assert result["best_accuracy_within_slo"] == pytest.approx(0.90)  # SMALL answers within 1 ms
    assert result["fastest_latency_ms"] is None  # nothing reaches 0.99


def test_unknown_app_and_private_models(dispatcher, base_settings):
    result = result_of(handle(dispatcher, app_id="stranger"), base_settings, "stranger")
    assert result["status"] == "BAD_INPUT" and "unknown app_id" in result["error"]


def test_garbage_goes_to_the_dead_letter_topic(dispatcher, base_settings):
    out = dispatcher.handle(b"\xc3\x01 not really avro", ("queries", 3, 42), b"q-9")
    assert len(out) == 1 and out[0].topic == base_settings.topic("deadletter")
    assert out[0].key == b"q-9"  # the message's key (the client's query id): `infaas trace` finds it
    dead = CODEC.decode_as("DeadLetter", out[0].value)
    assert (dead["partition"], dead["offset"]) == (3, 42) and "unknown schema fingerprint" in dead["reason"]
    # and the dispatcher goes on
    assert handle(dispatcher)[-1].topic == base_settings.variant_topic(SMALL.variant_id)


def test_reply_topic_must_belong_to_the_app(dispatcher, base_settings):
    out = handle(dispatcher, app_id="other", reply_topic=base_settings.results_topic("demo"), query_id="q-17")
    assert out[0].topic == base_settings.topic("deadletter")
    assert out[0].key == b"q-17"  # keyed by the query's id: `infaas trace` finds it there
    own = base_settings.results_topic("other") + ".client-7"
    out = handle(dispatcher, app_id="other", reply_topic=own, task="unknown")
    assert out[0].topic == own


def test_a_task_with_only_private_models_of_another_app_looks_unknown(base_settings):
    private = {vid: dataclasses.replace(v, app_id="other", public=False) for vid, v in CATALOG.items()}
    view = SystemView(base_settings)
    view.catalog = Catalog(apps=frozenset({"demo", "other"}),
                           tasks={"digits": TaskInfo("digits", "pixels", "float32", (64,), 10),
                                  "nothing": TaskInfo("nothing", "pixels", "float32", (64,), 10)},
                           variants=private, models={v.model: (v.task, v.app_id, v.public) for v in private.values()})
    view.snapshot = Snapshot(variants=private, workers=WORKERS, at_ms=1)
    dispatcher = Dispatcher(base_settings, view)
    hidden = result_of(handle(dispatcher, task="digits", inputs=to_tensor(np.zeros((1, 3), np.float32))),
                       base_settings)
    absent = result_of(handle(dispatcher, task="nothing"), base_settings)
    assert hidden["status"] == absent["status"] == "UNKNOWN_MODEL"
    assert hidden["error"].replace("'digits'", "X") == absent["error"].replace("'nothing'", "X")
    owner = handle(dispatcher, app_id="other", task="digits")
    assert owner[-1].topic.startswith(base_settings.topic("variant."))


def test_queries_routed_since_the_last_report_count_in_the_queue_until_the_replicas_drain_them(dispatcher,
                                                                                               base_settings,
                                                                                               monkeypatch):
    """Reports come once a second: on the report alone, a dispatcher would send a second's worth of
    queries to a full variant, then none for a second while its replicas idle."""
    now = large_active_and_idle(dispatcher.view, base_settings, monkeypatch)
    view, one_row = dispatcher.view, to_tensor(np.zeros((1, 64), np.float32))

    def routed_to_large() -> bool:
        view._rebuild()  # as the feed thread does every 0.1 s while a queue is left
        out = handle(dispatcher, min_accuracy=0.97, latency_ms=50.0, inputs=one_row)
        return out[-1].topic == base_settings.variant_topic(LARGE.variant_id)

    routed = 0
    while routed < 100 and routed_to_large():
        routed += 1
    # 50 ms SLO, 6 ms to run the query, 13 ms per batch of 8 queued ahead: 28 fit (27 ahead of the last)
    assert routed == 28 and view.snapshot.live_of(LARGE.variant_id).queue_len == 28
    # A report from a second ago with 20 queued: LARGE has drained more than all of it since.
    view._apply(base_settings.topic("metrics"), CODEC.encode("WorkerReport", worker_report(now - 1000, 20)))
    assert routed_to_large()
    view._rebuild()
    assert view.snapshot.live_of(LARGE.variant_id).queue_len == 0


def test_a_routed_query_counts_in_the_next_decision_before_any_reestimate(dispatcher, base_settings, monkeypatch):
    """The feed thread re-estimates queues every 0.1 s: a burst arriving in between (6 queries at 60 q/s)
    must not all be admitted on one queue length, or a batch-1 variant gets runs beyond its SLO."""
    large_active_and_idle(dispatcher.view, base_settings, monkeypatch)
    view, one_row = dispatcher.view, to_tensor(np.zeros((1, 64), np.float32))
    view._rebuild()
    routed = 0
    while routed < 100 and handle(dispatcher, min_accuracy=0.97, latency_ms=50.0,
                                  inputs=one_row)[-1].topic == base_settings.variant_topic(LARGE.variant_id):
        routed += 1
    assert routed == 28 and view.snapshot.live_of(LARGE.variant_id).queue_len == 28  # as with a rebuild each
    view._rebuild()  # the feed thread's estimate agrees: nothing counted twice
    assert view.snapshot.live_of(LARGE.variant_id).queue_len == 28


def test_the_slo_counts_from_when_the_client_sent_the_query(dispatcher, base_settings, monkeypatch):
    """The worker's deadline is sent_at + SLO: a query that reached the dispatcher 20 ms after it was
    sent has 30 ms of its 50 ms left, and is admitted only where the queue ahead fits in those."""
    large_active_and_idle(dispatcher.view, base_settings, monkeypatch)
    view, one_row = dispatcher.view, to_tensor(np.zeros((1, 64), np.float32))
    view._rebuild()
    routed, out = 0, []
    while routed < 100:
        out = handle(dispatcher, min_accuracy=0.97, latency_ms=50.0, inputs=one_row, sent_at=NOW - 20)
        if out[-1].topic != base_settings.variant_topic(LARGE.variant_id):
            break
        routed += 1
        assert CODEC.decode_as("RoutedQuery", out[-1].value)["deadline_at"] == NOW + 30  # still sent_at + SLO
    # 6 ms to run the query, 13 ms per batch of 8 ahead: 15 fit in 30 ms (28 in the whole 50 ms)
    assert routed == 15
    shed = result_of(out, base_settings)
    assert shed["status"] == "NO_FEASIBLE_VARIANT" and "20 ms of the SLO had passed" in shed["error"]
    late = result_of(handle(dispatcher, latency_ms=50.0, inputs=one_row, sent_at=NOW - 60), base_settings)
    assert late["status"] == "NO_FEASIBLE_VARIANT"  # past its deadline already: shed at once, not queued


def large_active_and_idle(view, base_settings, monkeypatch) -> int:
    """LARGE active on one replica with an empty queue as of now, a frozen clock (nothing drains); now."""
    now = NOW
    monkeypatch.setattr(views, "time", SimpleNamespace(time=lambda: now / 1000, monotonic=time.monotonic))
    state = {"variant_id": LARGE.variant_id, "task": "digits", "state": "ACTIVE", "replicas": 1, "workers": ["w1"],
             "qps": 0.0, "avg_latency_ms": 0.0, "queue_len": 0, "avg_rows": 1.0, "demand_accuracy": 0.0,
             "demand_slo_ms": 0.0, "updated_at": now}
    view._apply(base_settings.topic("state"), CODEC.encode("VariantState", state))
    view._apply(base_settings.topic("metrics"), CODEC.encode("WorkerReport", worker_report(now, queue_len=0)))
    return now


def worker_report(reported_at: int, queue_len: int) -> dict:
    metrics = {"variant_id": LARGE.variant_id, "replicas": 1, "served": 0, "errors": 0, "deadline_missed": 0,
               "qps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "avg_latency_ms": 0.0, "exec_ms": 0.0, "service_ms": 0.0,
               "queue_len": queue_len, "avg_batch": 0.0, "memory_mb": 10.0, "avg_rows": 1.0,
               "demand_accuracy": 0.0, "demand_slo_ms": 0.0}
    return {"worker_id": "w1", "hardware": "cpu", "host": "h", "pid": 1, "reported_at": reported_at,
            "interval_ms": 1000, "cpu_util": 0.5, "gpu_util": None, "memory_mb": 100.0, "memory_budget_mb": 2048.0,
            "variants": [metrics]}


def test_a_cold_variant_chosen_before_any_worker_is_ready_is_loaded_once_one_is(dispatcher, base_settings):
    """A query routed while no worker had reported waits in the variant's topic: the dispatcher
    remembers the variant and asks the first ready worker to load it, even if no other query comes."""
    dispatcher.view.snapshot = Snapshot(variants=CATALOG, workers={}, at_ms=1)
    out = handle(dispatcher, min_accuracy=0.97)
    assert [o.topic for o in out] == [base_settings.variant_topic(LARGE.variant_id)]  # routed, nobody told
    assert dispatcher.place_unplaced() == []  # still no worker
    dispatcher.view.snapshot = Snapshot(variants=CATALOG, workers=WORKERS, at_ms=2)
    commands = dispatcher.place_unplaced()
    assert [o.topic for o in commands] == [base_settings.topic("control")]
    command = CODEC.decode_as("WorkerCommand", commands[0].value)
    assert (command["action"], command["variant_id"], command["worker_id"]) == ("LOAD", LARGE.variant_id, "w2")
    assert "queries wait on it" in command["reason"]
    assert dispatcher.place_unplaced() == []  # asked once


def test_while_no_worker_is_ready_the_next_classes_wait_on_the_variant_already_chosen(dispatcher, base_settings):
    """As in the simulator: the variant chosen while no worker was ready is believed loading, so a less
    demanding class waits on it too instead of loading its own cheapest variant (three variants for one
    task in a live replay's first second, where the simulator loaded one)."""
    dispatcher.view.snapshot = Snapshot(variants=CATALOG, workers={}, at_ms=1)
    handle(dispatcher, min_accuracy=0.97)
    out = handle(dispatcher, query_id="q2")  # no accuracy demand: SMALL would be the cheapest cold variant
    assert [o.topic for o in out] == [base_settings.variant_topic(LARGE.variant_id)]
    assert list(dispatcher.unplaced) == [LARGE.variant_id]
    dispatcher.view.snapshot = dataclasses.replace(dispatcher.view.snapshot, workers=WORKERS, at_ms=2)
    commands = dispatcher.place_unplaced()  # the belief is no load: a worker is still asked for one
    assert [CODEC.decode_as("WorkerCommand", c.value)["variant_id"] for c in commands] == [LARGE.variant_id]


def test_a_variant_unloaded_after_queries_were_routed_to_it_is_watched_for_stranded_ones(dispatcher):
    from infaas.policies.snapshot import ACTIVE, VariantLive
    loaded = {LARGE.variant_id: VariantLive(ACTIVE, replicas=1, workers=("w2",))}
    dispatcher.view.snapshot = Snapshot(variants=CATALOG, live=loaded, workers=WORKERS, at_ms=10_000)
    handle(dispatcher, min_accuracy=0.97)
    assert dispatcher.unloaded_since_routed() == []  # still loaded
    dispatcher.view.snapshot = Snapshot(variants=CATALOG, workers=WORKERS, at_ms=12_000)
    assert dispatcher.unloaded_since_routed() == []  # unloaded, but the routed query may still be in flight
    dispatcher.view.snapshot = Snapshot(variants=CATALOG, workers=WORKERS, at_ms=16_000)
    assert dispatcher.unloaded_since_routed() == [LARGE.variant_id]
    dispatcher.view.snapshot = Snapshot(variants=CATALOG, workers=WORKERS, at_ms=10_000 + 121_000)
    assert dispatcher.unloaded_since_routed() == [] and dispatcher.routed_at == {}  # past the window


def test_a_cold_variant_with_no_worker_with_room_is_loaded_at_once_on_a_ready_worker(dispatcher, base_settings):
    """Selection names no worker when none has unreserved room; no live scaler hears of that, so the
    dispatcher loads the variant now on the least utilized ready worker of its hardware, in the same
    round as the query, not at its next timer tick."""
    full = {wid: dataclasses.replace(w, variants={SMALL.variant_id: 8, MEDIUM.variant_id: 8}) for wid, w in WORKERS.items()}
    dispatcher.view.snapshot = Snapshot(variants=CATALOG, workers=full, at_ms=1)
    out = handle(dispatcher, min_accuracy=0.97)
    assert [o.topic for o in out] == [base_settings.topic("control"), base_settings.variant_topic(LARGE.variant_id)]
    command = CODEC.decode_as("WorkerCommand", out[0].value)
    assert (command["action"], command["variant_id"], command["worker_id"]) == ("LOAD", LARGE.variant_id, "w2")
    assert dispatcher.unplaced == {}
