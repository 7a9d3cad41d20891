"""The load monitor: a Faust stream over `infaas.metrics` (workers' reports, every second).

It aggregates load into tumbling windows (1 s and 10 s) per variant and per worker, writes them to
Cassandra (with a TTL) and to `infaas.load` for streaming analytics, keeps each variant's state
(active / overloaded / interfered, by the INFaaS thresholds) in the compacted `infaas.state`
topic, and emits scaling triggers on `infaas.scaling` when a variant becomes overloaded or
interfered. Cassandra writes are fire-and-forget: the monitor never waits on the store.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from ..catalog import Variant
from ..metrics import track_backlog
from ..policies.monitoring import classify
from ..policies.snapshot import INACTIVE, INTERFERED, OVERLOADED, PolicyConfig
from ..schemas.codec import DecodeError, default_codec
from ..settings import Settings

log = logging.getLogger(__name__)

WINDOWS_S = (1, 10)
REPORT_EXPIRY_MS = 3000  # a worker silent this long no longer counts as hosting its variants


@dataclass
class Window:
    served: int = 0
    errors: int = 0
    missed: int = 0
    latency_sum: float = 0.0  # latency x served, for a served-weighted mean
    p99: float = 0.0
    max_queue: int = 0
    util_sum: float = 0.0
    reports: int = 0

    def add(self, served: int, errors: int, missed: int, avg_latency: float, p99: float, queue: int,
            util: float) -> None:
        self.served += served
        self.errors += errors
        self.missed += missed
        self.latency_sum += avg_latency * served
        self.p99 = max(self.p99, p99)
        self.max_queue = max(self.max_queue, queue)
        self.util_sum += util
        self.reports += 1


@dataclass
class Observed:
    """A variant as the latest reports of its workers show it."""
    replicas: int = 0
    workers: list[str] = field(default_factory=list)
    qps: float = 0.0
    queue_len: int = 0
    latency_sum: float = 0.0
    served: int = 0
    exec_sum: float = 0.0  # execution time per batch x reports, for the interference check
    exec_reports: int = 0
    rows_sum: float = 0.0  # avg rows x served
    demand_accuracy: float = 0.0
    demand_slo_ms: float = 0.0

    @property
    def avg_latency_ms(self) -> float:
        return self.latency_sum / self.served if self.served else 0.0

    @property
    def exec_ms(self) -> float:
        return self.exec_sum / self.exec_reports if self.exec_reports else 0.0

    @property
    def avg_rows(self) -> float:
        return self.rows_sum / self.served if self.served else 1.0

    def add(self, worker_id: str, m: dict) -> None:
        self.replicas += m["replicas"]
        self.workers.append(worker_id)
        self.qps += m["qps"]
        self.queue_len += m["queue_len"]
        self.latency_sum += m["avg_latency_ms"] * m["served"]
        self.served += m["served"]
        if m["exec_ms"] > 0:
            self.exec_sum += m["exec_ms"]
            self.exec_reports += 1
        self.rows_sum += m["avg_rows"] * m["served"]
        self.demand_accuracy = max(self.demand_accuracy, m["demand_accuracy"])
        if m["demand_slo_ms"]:
            self.demand_slo_ms = min(self.demand_slo_ms or m["demand_slo_ms"], m["demand_slo_ms"])


class LoadAggregator:
    """Windows and states from worker reports; pure bookkeeping, driven by `add` and `tick`."""

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.windows: dict[tuple[str, str, int, int], Window] = defaultdict(Window)
        self.latest: dict[str, dict] = {}  # worker id -> latest report
        self.states: dict[str, dict] = {}  # variant id -> last published VariantState

    def add(self, report: dict) -> None:
        self.latest[report["worker_id"]] = report
        at = report["reported_at"]
        util = report["gpu_util"] if report["gpu_util"] is not None else report["cpu_util"]
        for window_s in WINDOWS_S:
            start = at // (window_s * 1000) * window_s * 1000
            served = sum(m["served"] for m in report["variants"])
            errors = sum(m["errors"] for m in report["variants"])
            missed = sum(m["deadline_missed"] for m in report["variants"])
            latency = (sum(m["avg_latency_ms"] * m["served"] for m in report["variants"]) / served) if served else 0.0
            p99 = max((m["p99_ms"] for m in report["variants"]), default=0.0)
            queue = sum(m["queue_len"] for m in report["variants"])
            self.windows[("WORKER", report["worker_id"], window_s, start)].add(
                served, errors, missed, latency, p99, queue, util)
            for m in report["variants"]:
                self.windows[("VARIANT", m["variant_id"], window_s, start)].add(
                    m["served"], m["errors"], m["deadline_missed"], m["avg_latency_ms"], m["p99_ms"],
                    m["queue_len"], 0.0)

    def closed_windows(self, now_ms: int) -> list[dict]:
        """Windows that ended at least one report interval ago (late reports had their chance)."""
        closed = []
        for key in [k for k in self.windows if k[3] + k[2] * 1000 + 1000 <= now_ms]:
            scope, name, window_s, start = key
            w = self.windows.pop(key)
            closed.append({"scope": scope, "key": name, "window_s": window_s, "window_start": start,
                           "served": w.served, "errors": w.errors, "deadline_missed": w.missed,
                           "qps": (w.served + w.missed) / window_s,
                           "avg_latency_ms": w.latency_sum / w.served if w.served else 0.0, "p99_ms": w.p99,
                           "max_queue_len": w.max_queue, "avg_util": w.util_sum / w.reports if w.reports else 0.0})
        return closed

    def observe(self, now_ms: int) -> dict[str, Observed]:
        observed: dict[str, Observed] = defaultdict(Observed)
        for worker_id, report in list(self.latest.items()):
            if now_ms - report["reported_at"] > REPORT_EXPIRY_MS:
                del self.latest[worker_id]
                continue
            for m in report["variants"]:
                observed[m["variant_id"]].add(worker_id, m)
        return observed

    def states_changed(self, variants: dict[str, Variant], now_ms: int) -> tuple[list[dict], list[dict]]:
        """New VariantState records (changed, or loaded and refreshed) and scaling triggers."""
        states, triggers = [], []
        observed = self.observe(now_ms)
        for variant_id in set(observed) | {v for v, s in self.states.items() if s["state"] != INACTIVE}:
            o = observed.get(variant_id, Observed())
            previous = self.states.get(variant_id, {}).get("state", INACTIVE)
            variant = variants.get(variant_id)
            if variant is None or o.replicas == 0:
                status = INACTIVE
            else:
                # Interference is slower *execution* than profiled; queueing is overload, not interference.
                status = classify(variant, o.qps, o.exec_ms, o.queue_len, o.replicas, previous, self.config)
            record = {"variant_id": variant_id, "task": variant.task if variant else "", "state": status,
                      "replicas": o.replicas, "workers": sorted(o.workers), "qps": o.qps,
                      "avg_latency_ms": o.avg_latency_ms, "queue_len": o.queue_len, "avg_rows": o.avg_rows,
                      "demand_accuracy": o.demand_accuracy, "demand_slo_ms": o.demand_slo_ms, "updated_at": now_ms}
            if status != previous or status != INACTIVE:
                states.append(record)
            if status != previous and status in (OVERLOADED, INTERFERED):
                triggers.append({"event_id": uuid.uuid4().hex, "at": now_ms, "kind": "TRIGGER", "policy": "monitor",
                                 "task": record["task"], "variant_id": variant_id, "target_variant_id": None,
                                 "worker_id": None, "hardware": variant.hardware if variant else None,
                                 "from_count": o.replicas, "to_count": o.replicas,
                                 "reason": f"{variant_id} became {status}: qps {o.qps:.1f}, avg latency "
                                           f"{o.avg_latency_ms:.1f} ms, queue {o.queue_len}"})
            self.states[variant_id] = record
        return states, triggers


# --- the Faust service ----------------------------------------------------------------------------
def make_app(settings: Settings, config: PolicyConfig, web_port: int | None = None):
    import asyncio

    import faust

    from .. import bus
    from ..store import BufferedWriter, Store
    from .faust_support import faust_app
    from .views import Catalog

    app = faust_app(settings, "monitor", web_port)
    codec = default_codec()
    aggregator = LoadAggregator(config)
    metrics = app.topic(settings.topic("metrics"), value_serializer="raw", key_serializer="raw")
    producer = bus.producer(settings)
    writer = BufferedWriter(Store(settings))
    track_backlog(writer)
    catalog = {"variants": {}}

    def refresh_catalog() -> None:
        try:
            with Store(settings, connect_timeout=3.0) as store:
                catalog["variants"] = Catalog.load(store).variants
        except Exception as err:  # Cassandra down: classify with the profiles we have
            log.warning("catalogue refresh failed: %s", err)

    @app.timer(interval=5.0, on_leader=False)
    async def reload() -> None:
        await asyncio.get_running_loop().run_in_executor(None, refresh_catalog)

    @app.agent(metrics)
    async def monitor(stream: faust.Stream) -> None:
        async for payload in stream:
            try:
                aggregator.add(codec.decode_as("WorkerReport", payload))
            except DecodeError as err:
                log.warning("ignoring undecodable worker report: %s", err.reason)

    @app.timer(interval=1.0)
    async def publish() -> None:
        now = int(time.time() * 1000)
        for window in aggregator.closed_windows(now):
            producer.produce(settings.topic("load"), key=window["key"].encode(),
                             value=codec.encode("LoadWindow", window))
            writer.submit("put_load_window", window)
        states, triggers = aggregator.states_changed(catalog["variants"], now)
        for state in states:
            producer.produce(settings.topic("state"), key=state["variant_id"].encode(),
                             value=codec.encode("VariantState", state))
            writer.submit("put_variant_state", state)
        for trigger in triggers:
            producer.produce(settings.topic("scaling"), key=(trigger["variant_id"] or "").encode(),
                             value=codec.encode("ScalingEvent", trigger))
            writer.submit("put_scaling_event", trigger)
        producer.poll(0)

    return app


def run(settings: Settings, config: PolicyConfig | None = None, web_port: int | None = None) -> int:
    from .faust_support import run_app
    return run_app(make_app(settings, config or PolicyConfig(), web_port), "monitor")
