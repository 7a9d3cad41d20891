"""The client's duplicate filter: duplicates of answered queries are dropped and counted, and the
filter forgets answers older than its window (a long-lived client must not grow without bound).
Its adaptive throttle: a class of queries the service sheds for load is partly refused by the
client itself; a class refused for its requirements never is."""

from __future__ import annotations

import time

import numpy as np

from infaas import bus
from infaas.client import THROTTLED, AdaptiveThrottle, InfaasClient, QueryResult, RecentIds, shed_for_load
from infaas.schemas.codec import default_codec


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_recent_ids_forget_what_is_older_than_the_window():
    clock = Clock()
    recent = RecentIds(window_s=10.0, clock=clock)
    for i in range(10_000):  # one answer every 10 ms for 100 s
        clock.now = i * 0.01
        recent.add(f"q{i}")
    assert len(recent) <= 1001  # only the last 10 s are kept
    assert "q9999" in recent and "q9000" in recent
    assert "q0" not in recent and "q8999" not in recent
    clock.now += 11.0
    assert "q9999" not in recent  # expired even before the next add prunes it


def answered(throttle: AdaptiveThrottle, key: tuple, accepted: int, shed: int) -> None:
    for _ in range(accepted):
        throttle.record(key, accepted=True)
    for _ in range(shed):
        throttle.record(key, accepted=False)


def test_throttle_refuses_in_proportion_to_what_the_service_sheds():
    clock = Clock()
    always, never = AdaptiveThrottle(2.0, clock=clock, draw=lambda: 0.0), AdaptiveThrottle(2.0, clock=clock,
                                                                                          draw=lambda: 0.999)
    for throttle in (always, never):
        assert throttle.refuses(("a",)) is None  # nothing known: sent
        answered(throttle, ("a",), accepted=100, shed=100)  # shedding half: k = 2 still sends everything
        assert throttle.refuses(("a",)) is None
        answered(throttle, ("a",), accepted=0, shed=800)  # now 100 of 1000: refused with chance 800/1001
    why = always.refuses(("a",))
    assert why is not None and "accepted 100 of the last 1000" in why
    assert never.refuses(("a",)) is None  # the draw decides: 0.999 is above the chance
    assert always.refuses(("b",)) is None  # another class is not affected


def test_throttle_waits_for_enough_sheds_and_its_own_refusals_do_not_count_as_sheds():
    clock = Clock()
    throttle = AdaptiveThrottle(2.0, min_shed=20, clock=clock, draw=lambda: 0.0)
    answered(throttle, ("a",), accepted=0, shed=19)  # a few sheds of a quiet class: not overload
    assert throttle.refuses(("a",)) is None
    answered(throttle, ("a",), accepted=0, shed=1)
    assert throttle.refuses(("a",)) is not None
    clock.now += 4.0  # the 20 sheds are still in the window; the refusals above are not sheds
    assert throttle.refuses(("a",)) is not None
    clock.now += 1.0  # the sheds expired: the refusals alone do not keep the class refused
    assert throttle.refuses(("a",)) is None


def test_throttle_forgets_after_its_window_and_can_be_off():
    clock = Clock()
    throttle = AdaptiveThrottle(2.0, window_s=5.0, clock=clock, draw=lambda: 0.0)
    answered(throttle, ("a",), accepted=0, shed=100)
    assert throttle.refuses(("a",)) is not None
    clock.now += 5.0
    assert throttle.refuses(("a",)) is None and len(throttle) == 0  # all of it expired: forgotten
    off = AdaptiveThrottle(0.0, clock=clock, draw=lambda: 0.0)
    answered(off, ("a",), accepted=0, shed=100)
    assert off.refuses(("a",)) is None and len(off) == 0


def refusal(status: str, fastest_ms: float | None) -> QueryResult:
    return QueryResult("q", status, "e", [], None, None, None, None, 0.0, 0.0, 0.0, None, fastest_ms)


def test_only_load_sheds_count_as_refusals():
    assert shed_for_load(refusal("DEADLINE_EXCEEDED", None), 50.0)
    assert shed_for_load(refusal("NO_FEASIBLE_VARIANT", 10.0), 50.0)  # meets the SLO idle: refused for load
    assert not shed_for_load(refusal("NO_FEASIBLE_VARIANT", 80.0), 50.0)  # never fast enough
    assert not shed_for_load(refusal("NO_FEASIBLE_VARIANT", None), 50.0)  # never accurate enough
    assert not shed_for_load(refusal("NO_FEASIBLE_VARIANT", 10.0), None)
    assert not shed_for_load(refusal("BAD_INPUT", None), 50.0)


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def result(query_id: str) -> dict:
    return {"query_id": query_id, "app_id": "demo", "status": "OK", "error": None, "outputs": [], "model": "m",
            "variant": "v", "hardware": "cpu", "accuracy": 0.9, "latency_ms": 1.0, "queue_ms": 0.0, "compute_ms": 1.0,
            "best_accuracy_within_slo": None, "fastest_latency_ms": None, "completed_at": 0}


def test_duplicates_are_dropped_within_the_window_and_forgotten_after(settings):
    """Real Kafka; this test answers the queries itself (no dispatcher reads its own queries topic)."""
    own = settings.replace(topic_prefix=f"{settings.topic_prefix}.client")
    bus.ensure_core_topics(own)
    codec, producer = default_codec(), bus.producer(own)
    with InfaasClient(own, app_id="demo", duplicate_window_s=1.0) as client:
        futures = {f"q{i}": client.submit(np.zeros((1, 2), np.float32), variant="v", query_id=f"q{i}")
                   for i in range(50)}
        for query_id in [*futures, *futures]:  # every answer twice: at least once delivery
            producer.produce(client.reply_topic, key=query_id.encode(), value=codec.encode("Result", result(query_id)))
        producer.flush(10)
        assert all(f.result(30).ok for f in futures.values())
        wait_until(lambda: client.duplicates_dropped == 50)
        assert len(client._answered) == 50
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started > 1.0 and "q49" not in client._answered)
        client.submit(np.zeros((1, 2), np.float32), variant="v", query_id="late")
        producer.produce(client.reply_topic, key=b"late", value=codec.encode("Result", result("late")))
        producer.flush(10)
        wait_until(lambda: "late" in client._answered)
        assert len(client._answered) == 1  # the 50 older answers were forgotten


def test_client_throttles_load_sheds_but_not_impossible_requirements(settings):
    """Real Kafka; this test answers the queries itself: the class with a 50 ms SLO is shed for load (a
    variant meets it idle), the one with 20 ms asks for a latency no variant reaches."""
    own = settings.replace(topic_prefix=f"{settings.topic_prefix}.throttle", client_throttle_k=2.0)
    bus.ensure_core_topics(own)
    codec, producer = default_codec(), bus.producer(own)
    x = np.zeros((1, 2), np.float32)
    with InfaasClient(own, app_id="demo") as client:
        for slo_ms, fastest_ms in ((50.0, 5.0), (20.0, 500.0)):
            futures = {f"{slo_ms}-{i}": client.submit(x, task="t", latency_ms=slo_ms, query_id=f"{slo_ms}-{i}")
                       for i in range(40)}
            for query_id in futures:
                shed = {**result(query_id), "status": "NO_FEASIBLE_VARIANT", "fastest_latency_ms": fastest_ms}
                producer.produce(client.reply_topic, key=query_id.encode(), value=codec.encode("Result", shed))
            producer.flush(10)
            assert all(f.result(30).status == "NO_FEASIBLE_VARIANT" for f in futures.values())
        busy = [client.submit(x, task="t", latency_ms=50.0) for _ in range(40)]
        impossible = [client.submit(x, task="t", latency_ms=20.0) for _ in range(40)]
        refused = [f.result(0) for f in busy if f.done()]
        assert len(refused) >= 20  # each refused with a chance of 40/41 or more
        assert all(r.status == THROTTLED and "adaptive throttling" in r.error for r in refused)
        assert client.throttled == len(refused)
        assert not any(f.done() for f in impossible)  # all sent: the service's own answer is the useful one


def test_a_result_with_unreadable_outputs_answers_its_query_and_the_client_reads_on(settings):
    """Real Kafka; this test answers the queries itself. Before, one result whose tensor did not match its
    shape ended the client's reading thread: every later query of the client waited out its timeout."""
    own = settings.replace(topic_prefix=f"{settings.topic_prefix}.unreadable")
    bus.ensure_core_topics(own)
    codec, producer = default_codec(), bus.producer(own)
    x = np.zeros((1, 2), np.float32)
    with InfaasClient(own, app_id="demo") as client:
        bad, cancelled, good = (client.submit(x, variant="v", query_id=q) for q in ("bad", "cancelled", "good"))
        assert cancelled.cancel()  # its caller gave up on it: its answer must not end the thread either
        wrong_shape = {"dtype": "float32", "shape": [1, 3], "data": b"\0" * 8}
        for query_id, outputs in (("bad", [wrong_shape]), ("cancelled", []), ("good", [])):
            producer.produce(client.reply_topic, key=query_id.encode(), partition=0,  # read in this order
                             value=codec.encode("Result", {**result(query_id), "outputs": outputs}))
        producer.flush(10)
        answer = bad.result(30)
        assert answer.status == "INTERNAL_ERROR" and "outputs cannot be read" in answer.error, answer
        assert good.result(30).ok  # read after both
        assert client.undecodable == 1
