"""A steady load and its accounting, shared by the fault tests: every query sent is followed to
exactly one Result at the client (OK or an explicit error status); the numbers of each fault go
to `bench-results/faults.json`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from infaas.client import InfaasClient

REPORT = Path("bench-results") / "faults.json"
BASELINE_ANSWERS = 40  # answers under load before the fault: the "before" latency
NORMAL_STREAK = 20  # consecutive answers at normal latency after the fault: recovered


def save_report(results: dict[str, dict]) -> None:
    """Merge into the report (several test modules write their faults to it)."""
    REPORT.parent.mkdir(exist_ok=True)
    try:
        merged = json.loads(REPORT.read_text())
    except (OSError, ValueError):
        merged = {}
    merged.update(results)
    REPORT.write_text(json.dumps(merged, indent=1))


def normal_ms(p50_before: float) -> float:
    """A latency that counts as normal again after a fault (a loose bound: the machine is shared)."""
    return max(3 * p50_before, p50_before + 250.0)


class SteadyLoad:
    """Queries at a constant rate from a thread; every future kept for the accounting."""

    def __init__(self, client: InfaasClient, variant_id: str, rate_qps: float, x: np.ndarray | None = None):
        self.client, self.variant_id, self.rate = client, variant_id, rate_qps
        self.sent: list[tuple[float, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.x = np.zeros((1, 64), np.float32) if x is None else x

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sent.append((time.time(), self.client.submit(self.x, variant=self.variant_id)))
            next_at += 1.0 / self.rate
            time.sleep(max(next_at - time.monotonic(), 0))

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _latencies(self, since: float) -> list[float | None]:
        """Latency (ms) of each query sent since `since`, in order; None while unanswered."""
        out = []
        for sent_at, future in list(self.sent):
            if sent_at < since:
                continue
            if not future.done() or future.exception() is not None:
                out.append(None)
            else:
                out.append((future.result().received_at - sent_at) * 1000)
        return out

    def wait_answers(self, since: float, count: int, timeout_s: float = 120.0) -> list[float]:
        """Wait until the first `count` queries sent since `since` are answered; their latencies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            latencies = self._latencies(since)[:count]
            if len(latencies) == count and None not in latencies:
                return latencies
            time.sleep(0.1)
        raise AssertionError(f"{count} queries sent since the start were not answered in {timeout_s:.0f} s")

    def wait_normal(self, since: float, normal: float, timeout_s: float = 180.0) -> None:
        """Wait until `NORMAL_STREAK` consecutive queries sent since `since` were answered within
        `normal` ms: the load is served as before the fault."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            streak = 0
            for latency in self._latencies(since):
                streak = streak + 1 if latency is not None and latency <= normal else 0
                if streak >= NORMAL_STREAK:
                    return
            time.sleep(0.2)
        raise AssertionError(f"latency not back under {normal:.0f} ms within {timeout_s:.0f} s of the fault")

    def account(self, fault_at: float, normal: float, timeout_s: float = 90.0) -> dict:
        self.client.flush(30)
        deadline = time.monotonic() + timeout_s
        statuses: dict[str, int] = {}
        lost, before, during, recovered_at = 0, [], [], fault_at
        for sent_at, future in self.sent:
            try:
                result = future.result(max(deadline - time.monotonic(), 0.01))
            except Exception:
                lost += 1
                continue
            statuses[result.status] = statuses.get(result.status, 0) + 1
            latency = (result.received_at - sent_at) * 1000
            (before if sent_at < fault_at else during).append(latency)
            if sent_at >= fault_at and latency > normal:
                recovered_at = max(recovered_at, result.received_at)  # the last slow answer
        return {"sent": len(self.sent), "results": sum(statuses.values()), "lost": lost, "statuses": statuses,
                "duplicates_dropped": self.client.duplicates_dropped,
                "p50_before_ms": float(np.percentile(before, 50)) if before else None,
                "max_during_recovery_ms": float(max(during)) if during else None,
                "extra_latency_ms": float(max(during) - np.percentile(before, 50)) if before and during else None,
                "time_to_recover_s": recovered_at - fault_at}


def run_fault(settings, variant_id: str, name: str, inject: Callable[[], float], report: dict,
              rate_qps: float = 40.0) -> dict:
    """Steady load; once its latency is known, the fault (`inject` returns the seconds until the
    faulty process was back or replaced); then load until it is served as before; the accounting."""
    with InfaasClient(settings, app_id="demo", timeout_s=120) as client:
        client.query(np.zeros((1, 64), np.float32), variant=variant_id)  # everything is up
        with SteadyLoad(client, variant_id, rate_qps) as load:
            p50 = float(np.percentile(load.wait_answers(time.time(), BASELINE_ANSWERS), 50))
            fault_at = time.time()
            replaced = inject()
            load.wait_normal(fault_at, normal_ms(p50))
        accounting = load.account(fault_at, normal_ms(p50))
    accounting["process_back_s"] = replaced
    report[name] = accounting
    print(f"\n{name}: {json.dumps(accounting)}")
    assert accounting["lost"] == 0, accounting
    assert accounting["results"] == accounting["sent"], accounting
    return accounting
