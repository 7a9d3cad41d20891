"""What a worker measures and reports: per-variant counters over a reporting interval, each
variant's part of the report, and the process's own CPU time and memory (from /proc)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics

if TYPE_CHECKING:
    from .replica import HostedVariant


# The dispatcher admits a query to a queued variant only if its estimate plus this percentile of the
# variant's recent overruns fits the SLO: at 3x a replica's capacity its queue was held at the SLO's
# edge, where an estimate off by -120..+50 ms (10th-90th percentile, from once-a-second reports) made
# 11-13% of the answers late and shed others after their deadline (`infaas bench overload`).
OVERRUN_PERCENTILE = 95


class VariantMetrics:
    """Counters for one reporting interval; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.served = self.errors = self.deadline_missed = self.batches = self.rows = self.query_rows = 0
        self.exec_ms = 0.0  # model execution time, summed over batches
        self.busy_ms = 0.0  # time the replicas were busy with batches (runs, results, commits), summed
        self.latencies: list[float] = []
        self.overruns: list[float] = []  # ms each answer came after the dispatcher's estimate (< 0: before)
        self.demand_accuracy = 0.0  # the strictest requirements among the queries served
        self.demand_slo_ms = 0.0

    def record(self, served: list[dict], errors: int, missed: int, rows: int, batches: int, exec_ms: float,
               busy_ms: float = 0.0, overruns: list[float] | None = None) -> None:
        """`served`: the OK results with their queries' requirements (see Replica._serve); `overruns`: how
        much later than the dispatcher estimated each OK or DEADLINE_EXCEEDED answer came (ms)."""
        with self._lock:
            self.overruns += overruns or []
            self.served += len(served)
            self.errors += errors
            self.deadline_missed += missed
            self.batches += batches
            self.rows += rows
            self.exec_ms += exec_ms
            self.busy_ms += busy_ms
            for item in served:
                self.latencies.append(item["latency_ms"])
                self.query_rows += item["rows"]
                if item["min_accuracy"]:
                    self.demand_accuracy = max(self.demand_accuracy, item["min_accuracy"])
                if item["slo_ms"]:
                    self.demand_slo_ms = min(self.demand_slo_ms or item["slo_ms"], item["slo_ms"])

    def take(self) -> dict:
        with self._lock:
            snapshot = {"served": self.served, "errors": self.errors, "deadline_missed": self.deadline_missed,
                        "latencies": self.latencies, "avg_batch": self.rows / self.batches if self.batches else 0.0,
                        "exec_ms": self.exec_ms / self.batches if self.batches else 0.0,
                        "service_ms": self.busy_ms / self.batches if self.batches else 0.0,
                        "avg_rows": self.query_rows / self.served if self.served else 1.0,
                        "overrun_ms": max(float(np.percentile(self.overruns, OVERRUN_PERCENTILE)), 0.0)
                        if self.overruns else 0.0,
                        "demand_accuracy": self.demand_accuracy, "demand_slo_ms": self.demand_slo_ms}
            self.reset()
        return snapshot


def variant_report(hosted: HostedVariant, elapsed_s: float) -> dict:
    """The variant's part of a WorkerReport for the interval that just ended (its counters restart)."""
    taken = hosted.metrics.take()
    metrics.observe_latencies(hosted.variant.variant_id, taken["latencies"])  # Prometheus histogram
    latencies = np.asarray(taken["latencies"]) if taken["latencies"] else None
    # Demand is what arrived, not what was served: queries handled plus the growth of the queue.
    queue = sum(r.waiting for r in hosted.replicas)
    handled = taken["served"] + taken["deadline_missed"] + taken["errors"]
    arrived = max(handled + queue - hosted.last_queue, 0)
    hosted.last_queue = queue
    return {"variant_id": hosted.variant.variant_id, "replicas": len(hosted.replicas),
            "served": taken["served"], "errors": taken["errors"], "deadline_missed": taken["deadline_missed"],
            "qps": arrived / elapsed_s, "exec_ms": taken["exec_ms"], "service_ms": taken["service_ms"],
            "p50_ms": float(np.percentile(latencies, 50)) if latencies is not None else 0.0,
            "p99_ms": float(np.percentile(latencies, 99)) if latencies is not None else 0.0,
            "avg_latency_ms": float(latencies.mean()) if latencies is not None else 0.0,
            "queue_len": queue, "avg_batch": taken["avg_batch"],
            "memory_mb": hosted.memory_mb, "avg_rows": taken["avg_rows"], "overrun_ms": taken["overrun_ms"],
            "demand_accuracy": taken["demand_accuracy"], "demand_slo_ms": taken["demand_slo_ms"]}


def process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def process_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except OSError:
        return 0.0
