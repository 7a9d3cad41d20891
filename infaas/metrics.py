"""Prometheus metrics and Kubernetes probes for every service, and how `infaas status` finds them.

A service calls `serve_endpoint(settings, "dispatcher")` once at start: a small HTTP server on
`metrics_host:metrics_port` (port 0, the default, takes a free port, so workers started by the
scaler never collide) answers

    /metrics   the Prometheus text format (this module's metrics and the process collector)
    /healthz   200 while the process serves (liveness)
    /readyz    200 once the service called `mark_ready()` (it printed its readiness line), else 503

and advertises itself in `<state dir>/run/<topic prefix>/<name>-<pid>.json` (name, service, pid,
URL), removed when the process exits. `infaas status` reads those files; a file whose process is
gone is reported as such and removed.

The metrics are module-level, so a service updates them with one line at a point it already has.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from .settings import Settings

log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# dispatcher
ROUTED = Counter("infaas_dispatcher_routed", "Queries routed, per variant (arrivals)", ["variant"])
SHED = Counter("infaas_dispatcher_shed", "Queries answered at once with an error, by status", ["status"])
DEAD_LETTERS = Counter("infaas_dead_letters", "Messages sent to the dead-letter topic")
# workers (from the per-second report each already builds)
SERVED = Counter("infaas_worker_queries", "Queries a worker answered, per variant and outcome", ["variant", "outcome"])
LATENCY = Histogram("infaas_worker_latency_ms", "End-to-end latency of served queries (ms), per variant", ["variant"],
                    buckets=LATENCY_BUCKETS_MS)
BATCH = Histogram("infaas_worker_batch_size", "Average batch size per report, per variant", ["variant"],
                  buckets=BATCH_BUCKETS)
QUEUE = Gauge("infaas_variant_queue", "Queries waiting in a variant's topic for this worker's replicas "
                                      "(the replicas' consumer lag)", ["variant"])
REPLICAS = Gauge("infaas_worker_replicas", "Replicas of each variant on this worker", ["variant"])
# scaler and monitor
SCALING_ACTIONS = Counter("infaas_scaling_actions", "Scaling actions carried out, by kind", ["kind"])
WRITE_BACKLOG = Gauge("infaas_cassandra_write_backlog", "Rows waiting in the buffered Cassandra writer")
# gateway
HTTP_REQUESTS = Counter("infaas_gateway_requests", "V2 requests, by route and HTTP status", ["route", "code"])
HTTP_LATENCY = Histogram("infaas_gateway_latency_ms", "V2 infer requests' time in the gateway (ms)",
                         buckets=LATENCY_BUCKETS_MS)

_ready = threading.Event()


def mark_ready() -> None:
    _ready.set()


def track_backlog(writer) -> None:
    """Export a BufferedWriter's backlog (read at scrape time)."""
    WRITE_BACKLOG.set_function(lambda: writer.pending)


def worker_report(variants: list[dict[str, Any]]) -> None:
    """Fold one worker report's per-variant rows (served, errors, missed, queue, batch) into the metrics."""
    for row in variants:
        variant = row["variant_id"]
        for outcome in ("served", "errors", "deadline_missed"):
            if row[outcome]:
                SERVED.labels(variant, outcome).inc(row[outcome])
        QUEUE.labels(variant).set(row["queue_len"])
        REPLICAS.labels(variant).set(row["replicas"])
        if row["served"]:
            BATCH.labels(variant).observe(row["avg_batch"])


def observe_latencies(variant: str, latencies_ms) -> None:
    histogram = LATENCY.labels(variant)
    for value in latencies_ms:
        histogram.observe(value)


# --- the endpoint ---------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 -- the http.server protocol
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
            except Exception as err:  # a metric's callback failed: say so, keep serving
                log.exception("metrics scrape failed")
                self._answer(500, f"metrics failed: {err!r}\n".encode())
        elif path == "/healthz":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            ready = _ready.is_set()
            self._answer(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        else:
            self._answer(404, b"not found: /metrics, /healthz, /readyz\n")

    def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:  # scrapes every few seconds: not worth a log line each
        pass


def run_dir(settings: Settings) -> Path:
    return settings.state_dir / "run" / settings.topic_prefix


def serve_endpoint(settings: Settings, service: str, name: str | None = None) -> str:
    """Start /metrics, /healthz and /readyz in a daemon thread; advertise the URL; return it."""
    server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="infaas-metrics", daemon=True).start()
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "") else settings.metrics_host
    url = f"http://{host}:{server.server_address[1]}"
    name = name or service
    path = run_dir(settings) / f"{name}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "service": service, "pid": os.getpid(), "url": url,
                                "started_at": time.time()}))
    atexit.register(path.unlink, missing_ok=True)
    return url
