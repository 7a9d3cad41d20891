"""Open-loop load against the running pipeline: queries sent at scheduled times (from a trace),
results collected and summarized (SLO attainment, latency percentiles, variants used, cost).
Used by the demo, `infaas bench trace` and the fault-injection tests."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .catalog import Variant
from .client import InfaasClient, QueryResult
from .settings import Settings
from .store import Store


def validation_inputs(settings: Settings, task: str) -> np.ndarray:
    """Real inputs for a task: the validation set of one of its registered models."""
    from .repository import Repository
    with Store(settings) as store:
        model = store.models_for_task(task)[0]
    data = np.load(Repository.from_settings(settings).fetch(model.validation_artifact), allow_pickle=False)
    return data["inputs"]


@dataclass(frozen=True, slots=True)
class Arrival:
    at_s: float  # seconds after the start of the run
    task: str
    latency_ms: float | None = None
    min_accuracy: float | None = None
    label: str = ""  # requirement class, for reports
    variant: str | None = None  # variant-specific (the task is then not sent)
    rows: int = 1  # samples in the query's input (a client scoring a batch of them at once)


@dataclass
class RunStats:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # client-observed, answered queries
    slo_met: int = 0
    variants: Counter = field(default_factory=Counter)
    by_label: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # label -> statuses
    label_variants: Counter = field(default_factory=Counter)  # (label, variant) -> OK results
    label_latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    label_slo_met: Counter = field(default_factory=Counter)
    cost_usd: float = 0.0
    accuracy_sum: float = 0.0
    timeline: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))  # second -> counts
    lost: int = 0  # no result within the timeout
    duplicates_dropped: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get("OK", 0)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    @property
    def slo_attainment(self) -> float:
        return self.slo_met / self.answered if self.answered else 0.0

    def summary(self) -> dict:
        elapsed = max(self.finished - self.started, 1e-9)
        return {"queries": self.sent, "answered": self.answered, "lost": self.lost, "ok": self.ok,
                "statuses": dict(self.statuses), "slo_attainment": self.slo_attainment,
                "slo_violation_rate": 1.0 - self.slo_attainment if self.answered else 0.0,
                "p50_ms": self.percentile(50), "p99_ms": self.percentile(99),
                "throughput_qps": self.ok / elapsed, "cost_usd": self.cost_usd,
                "mean_accuracy": self.accuracy_sum / self.ok if self.ok else 0.0,
                "variants": dict(self.variants), "duplicates_dropped": self.duplicates_dropped,
                "seconds": elapsed}


class LoadRun:
    """Send `arrivals` on schedule with sample inputs; collect every result (or count it lost)."""

    def __init__(self, client: InfaasClient, arrivals: list[Arrival], inputs: dict[str, np.ndarray],
                 variants: dict[str, Variant], timeout_s: float = 30.0,
                 on_result: Callable[[RunStats], None] | None = None):
        self.client = client
        self.arrivals = sorted(arrivals, key=lambda a: a.at_s)
        self.inputs = inputs  # task -> pool of single samples, shape (n, *sample)
        self.variants = variants
        self.timeout_s = timeout_s
        self.on_result = on_result
        self.stats = RunStats()
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(0)

    def run(self) -> RunStats:
        stats = self.stats
        stats.started = time.monotonic()
        pending = []
        for arrival in self.arrivals:
            delay = stats.started + arrival.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool = self.inputs[arrival.task]
            sample = pool[(self._rng.integers(len(pool)) + np.arange(arrival.rows)) % len(pool)]
            sent_at = time.monotonic()
            if arrival.variant:
                future = self.client.submit(sample, variant=arrival.variant, latency_ms=arrival.latency_ms)
            else:
                future = self.client.submit(sample, task=arrival.task, latency_ms=arrival.latency_ms,
                                            min_accuracy=arrival.min_accuracy)
            future.add_done_callback(lambda f, a=arrival, s=sent_at: self._record(f, a, s))
            pending.append(future)
            stats.sent += 1
        self.client.flush()
        deadline = time.monotonic() + self.timeout_s
        for future in pending:
            try:
                future.result(max(deadline - time.monotonic(), 0.01))
            except Exception:  # TimeoutError: counted as lost below
                stats.lost += 1
        stats.finished = time.monotonic()
        stats.duplicates_dropped = self.client.duplicates_dropped
        return stats

    def _record(self, future, arrival: Arrival, sent_at: float) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        result: QueryResult = future.result()
        observed = (time.monotonic() - sent_at) * 1000.0
        with self._lock:
            stats = self.stats
            stats.statuses[result.status] += 1
            stats.by_label[arrival.label][result.status] += 1
            second = int(sent_at - stats.started)
            stats.timeline[second]["answered"] += 1
            met = result.ok and (arrival.latency_ms is None or observed <= arrival.latency_ms)
            stats.slo_met += met
            stats.label_slo_met[arrival.label] += met
            stats.timeline[second]["slo_met"] += met
            if result.ok:
                stats.latencies_ms.append(observed)
                stats.label_latencies[arrival.label].append(observed)
                stats.variants[result.variant] += 1
                stats.label_variants[(arrival.label, result.variant)] += 1
                variant = self.variants.get(result.variant)
                if variant is not None:
                    stats.cost_usd += variant.cost_per_1k / 1000.0 * arrival.rows
                stats.accuracy_sum += result.accuracy or 0.0
            if self.on_result:
                self.on_result(stats)
