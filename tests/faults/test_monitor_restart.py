"""SIGKILL of the load monitor mid-window under steady load: the restarted monitor recovers its open
windows from the tables' changelog and goes on from the last committed report, so the windows it
publishes hold exactly what the workers reported: no gap, no report counted twice. Checked in the
table (its changelog topic), on `infaas.load` and in Cassandra, against the reports themselves
(read from `infaas.metrics` by the test). Every query of the steady load is answered as well.

Real processes (dispatcher, monitor, two workers), Kafka, Cassandra and ONNX Runtime. The numbers
are printed and merged into `bench-results/faults.json`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from infaas import bus
from infaas.client import InfaasClient
from infaas.scaler.processes import ServiceProcess
from infaas.schemas.codec import default_codec
from infaas.store import Store
from infaas.streams.monitor import GRACE_MS, WINDOWS_S
from tests.conftest import settings_env
from tests.faults.steady import SteadyLoad, save_report
from tests.small_model import register_small_variant

CODEC = default_codec()
RATE_QPS = 40.0
WORKERS = ("monitor-test-worker-1", "monitor-test-worker-2")


def wait_until(condition, timeout_s: float, what) -> None:
    """`what`: a description, or a function that gives one (what was seen, when it fails)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what() if callable(what) else what}: not within {timeout_s:.0f} s"
        time.sleep(0.1)


class TopicLog(threading.Thread):
    """Every record that arrives on a topic from now on, decoded."""

    def __init__(self, settings, topic: str, decode):
        super().__init__(daemon=True)
        self.records: list[tuple[float, object, object]] = []  # (arrival time, key, value)
        self.decode = decode
        self._done = threading.Event()
        self.consumer = bus.consumer(settings, f"{settings.topic_prefix}.probe")
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
        self.start()

    def run(self) -> None:
        while not self._done.is_set():
            for message in self.consumer.consume(500, 0.2):
                if not message.error():
                    self.records.append((time.time(), message.key(), self.decode(message.value())))
        self.consumer.close()

    def close(self) -> None:
        self._done.set()
        self.join(10)


@pytest.fixture(scope="module")
def variant(settings, tmp_path_factory):
    return register_small_variant(settings, tmp_path_factory.mktemp("monitor-model"), "monitor-digits",
                                  "monitor-logreg")


@pytest.fixture(scope="module")
def services(settings, variant):
    log_dir = settings.state_dir / "logs" / "monitor-test"
    env = settings_env(settings)
    running = {"dispatcher": ServiceProcess("dispatcher", ["dispatcher"], log_dir, env),
               "monitor": ServiceProcess("monitor", ["monitor"], log_dir, env)}
    for worker_id in WORKERS:
        running[worker_id] = ServiceProcess(worker_id, ["worker", "--hardware", "cpu", "--worker-id", worker_id,
                                                        "--variants", variant.variant_id], log_dir, env)
    try:
        for service in running.values():
            service.start()
        for service in running.values():
            service.wait_ready(180)
        yield running
    finally:
        for service in running.values():
            service.stop()


def expected_windows(reports: list[dict], first_ms: int, end_ms: int) -> dict:
    """(scope, key, window_s, start) -> queries served, from the reports themselves, for the windows
    that start at or after `first_ms` (all their reports were seen) and end by `end_ms`."""
    served: dict[tuple, int] = defaultdict(int)
    for report in {(r["worker_id"], r["reported_at"]): r for r in reports}.values():
        for window_s in WINDOWS_S:
            start = report["reported_at"] // (window_s * 1000) * window_s * 1000
            if start < first_ms or start + window_s * 1000 > end_ms:
                continue
            served[("WORKER", report["worker_id"], window_s, start)] += sum(m["served"] for m in report["variants"])
            for m in report["variants"]:
                served[("VARIANT", m["variant_id"], window_s, start)] += m["served"]
    return dict(served)


def in_span(windows: dict, expected: dict, first_ms: int, end_ms: int) -> dict:
    keys = {k[:2] for k in expected}
    return {k: v for k, v in windows.items()
            if k[:2] in keys and k[3] >= first_ms and k[3] + k[2] * 1000 <= end_ms}


def differences(found: dict, expected: dict) -> dict:
    """window -> (found, expected) where they differ (None: missing)."""
    return {k: (found.get(k), expected.get(k)) for k in sorted(set(found) | set(expected))
            if found.get(k) != expected.get(k)}


def published_windows(load: TopicLog) -> dict:
    """The latest LoadWindow per window on infaas.load (a re-published window supersedes)."""
    return {(w["scope"], w["key"], w["window_s"], w["window_start"]): w["served"] for _, _, w in list(load.records)}


def table_windows(settings) -> dict:
    """What the monitor's windowed tables hold: the latest value per key in their changelogs."""
    latest = {}
    consumer = bus.consumer(settings, f"{settings.topic_prefix}.probe")
    try:
        for window_s in WINDOWS_S:
            tp = TopicPartition(f"{settings.topic_prefix}-monitor-load-{window_s}s-changelog", 0, OFFSET_BEGINNING)
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            consumer.assign([tp])
            offset = -1
            while offset < high - 1:  # to the end of the changelog
                for message in consumer.consume(500, 1.0):
                    if message.error():
                        continue
                    offset = message.offset()
                    (scope, name), (start, _) = json.loads(message.key())
                    value = json.loads(message.value()) if message.value() else None
                    latest[(scope, name, window_s, int(round(start * 1000)))] = value["served"] if value else None
    finally:
        consumer.close()
    return latest


def cassandra_windows(settings, expected: dict) -> dict:
    found = {}
    with Store(settings) as store:
        for scope, key, window_s in {k[:3] for k in expected}:
            for row in store.load_windows(scope, key, window_s):
                found[(scope, key, window_s, row["window_start"])] = row["served"]
    return found


def test_monitor_killed_mid_window_resumes_its_windows(settings, services, variant):
    metrics = TopicLog(settings, settings.topic("metrics"), lambda v: CODEC.decode_as("WorkerReport", v))
    load = TopicLog(settings, settings.topic("load"), lambda v: CODEC.decode_as("LoadWindow", v))
    try:
        wait_until(lambda: {r["worker_id"] for _, _, r in metrics.records} >= set(WORKERS), 30, "both workers report")
        first_ms = (metrics.records[0][2]["reported_at"] // 10_000 + 1) * 10_000  # the first whole 10 s window
        with InfaasClient(settings, app_id="demo", timeout_s=120) as client:
            client.query(np.zeros((1, 64), np.float32), variant=variant.variant_id)  # everything is up
            with SteadyLoad(client, variant.variant_id, RATE_QPS) as steady:
                # kill in the middle of a 10 s window, with that window's first half under load
                wait_until(lambda: time.time() * 1000 >= first_ms + 4_000, 30, "mid-window")
                wait_until(lambda: 4.0 <= time.time() % 10 < 6.0, 11, "mid-window")
                fault_at = time.time()
                services["monitor"].kill()
                restarted = time.monotonic()
                services["monitor"] = ServiceProcess("monitor", ["monitor"], services["monitor"].log_path.parent,
                                                     settings_env(settings)).start()
                services["monitor"].wait_ready(180)
                recovery_s = time.monotonic() - restarted
                # the load goes on through the next whole 10 s window
                end_ms = (int(time.time() * 1000) // 10_000 + 2) * 10_000
                wait_until(lambda: time.time() * 1000 >= end_ms, 40, "the next windows under load")
            accounting = steady.account(fault_at, normal=float("inf"))
            accounting.pop("time_to_recover_s")  # the monitor's recovery is measured below
        # the windows are published once the reports passed their end (+ grace)
        wait_until(lambda: max((r["reported_at"] for _, _, r in metrics.records), default=0) > end_ms + GRACE_MS,
                   30, "reports past the last window")
        expected = expected_windows([r for _, _, r in metrics.records], first_ms, end_ms)
        assert sum(v for k, v in expected.items() if k[0] == "VARIANT" and k[2] == 10) > 0, "no load in the windows"
        wait_until(lambda: in_span(published_windows(load), expected, first_ms, end_ms) == expected, 60,
                   lambda: f"infaas.load holds the reported counts (differing windows: "
                           f"{differences(in_span(published_windows(load), expected, first_ms, end_ms), expected)}; "
                           f"the monitor's log ends:\n{services['monitor'].tail(30)})")
        first_after = min((at for at, _, _ in load.records if at > fault_at), default=None)
        wait_until(lambda: in_span(cassandra_windows(settings, expected), expected, first_ms, end_ms) == expected, 60,
                   "Cassandra holds the reported counts")
        assert in_span(table_windows(settings), expected, first_ms, end_ms) == expected
    finally:
        metrics.close()
        load.close()
    accounting.update(recovery_s=recovery_s, windows_checked=len(expected),
                      first_window_after_kill_s=round(first_after - fault_at, 2) if first_after else None,
                      served_in_windows=sum(v for k, v in expected.items() if k[0] == "WORKER" and k[2] == 10))
    print(f"\nmonitor SIGKILL mid-window: {json.dumps(accounting)}")
    save_report({"monitor SIGKILL mid-window": accounting})
    assert accounting["lost"] == 0, accounting
    assert accounting["results"] == accounting["sent"], accounting
