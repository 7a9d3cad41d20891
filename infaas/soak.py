"""`infaas bench soak`: `infaas serve` under a steady, moderate load for a long time (30 minutes by
default), with every service's resident memory sampled as it goes.

A service that leaks grows steadily; one that is bounded levels off once its caches, pools and
windows are full. So the check compares each service's RSS at the end with its RSS after the
warm-up (5 minutes by default): within 10% passes. Every query is accounted for (sent, answered,
lost), and latency is reported per segment of the run, so a slow drift shows as well.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .client import InfaasClient
from .loadgen import Arrival, LoadRun, validation_inputs
from .serve import Pipeline, ServeOptions
from .settings import Settings

TASK = "digits-classification"
TOLERANCE = 0.10  # RSS at the end may exceed RSS after the warm-up by this share


def descendants(root: int) -> list[int]:
    """Every process below `root` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def service_name(pid: int) -> str | None:
    """`dispatcher`, `monitor`, `scaler` or the worker's id, for an `infaas` service process."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "infaas" not in args:
        return None
    command = args[args.index("infaas") + 1] if args.index("infaas") + 1 < len(args) else ""
    if command == "worker" and "--worker-id" in args:
        return args[args.index("--worker-id") + 1]
    return command or None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def sample_services() -> dict[str, float]:
    """RSS (MB) of every infaas service below this process, by service name."""
    sample = {}
    for pid in descendants(os.getpid()):
        name, rss = service_name(pid), rss_mb(pid)
        if name and rss is not None:
            sample[name] = rss
    return sample


def steady_arrivals(duration_s: float, qps: float, seed: int = 0) -> list[Arrival]:
    """Poisson arrivals of model-less queries with a loose SLO (moderate load, not overload)."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / qps, size=int(duration_s * qps * 1.2) + 10))
    return [Arrival(float(t), TASK, latency_ms=200.0, label="steady") for t in times[times < duration_s]]


def verdict(samples: list[tuple[float, dict[str, float]]], baseline_s: float) -> dict[str, dict]:
    """Per service: RSS at the first sample at or after `baseline_s`, at the end, their ratio, and whether
    the end is within the tolerance."""
    after_warmup = next((s for t, s in samples if t >= baseline_s), samples[-1][1] if samples else {})
    end = samples[-1][1] if samples else {}
    rows = {}
    for name, last in end.items():
        base = after_warmup.get(name)
        if base is None:
            rows[name] = {"rss_mb_after_warmup": None, "rss_mb_end": last, "ratio": None, "within": None}
            continue  # started after the warm-up (a replacement or a scaled worker): no baseline
        ratio = last / base if base else None
        rows[name] = {"rss_mb_after_warmup": base, "rss_mb_end": last, "ratio": ratio,
                      "within": ratio is not None and ratio <= 1.0 + TOLERANCE}
    return rows


def segments(stats, duration_s: float, count: int = 6) -> list[dict]:
    """Answered queries and SLO attainment per segment of the run."""
    size = max(duration_s / count, 1.0)
    out = []
    for i in range(count):
        seconds = [s for s in stats.timeline if i * size <= s < (i + 1) * size]
        answered = sum(stats.timeline[s]["answered"] for s in seconds)
        met = sum(stats.timeline[s]["slo_met"] for s in seconds)
        out.append({"from_s": round(i * size), "answered": answered,
                    "slo_attainment": met / answered if answered else None})
    return out


def run_soak(settings: Settings, duration_s: float = 1800.0, qps: float = 20.0, baseline_s: float = 300.0,
             sample_every_s: float = 10.0, out: Path | None = None, say: Callable[[str], None] = print) -> dict:
    from .launcher import initialize
    initialize(settings)  # the keyspace and topics exist (a fresh keyspace or prefix is fine)
    from .registration.zoo import ensure_zoo
    variants = {v.variant_id: v for v in ensure_zoo(settings, quick=True, zoo="digits", say=say)}
    inputs = validation_inputs(settings, TASK)
    arrivals = steady_arrivals(duration_s, qps)
    samples: list[tuple[float, dict[str, float]]] = []
    with Pipeline(settings, ServeOptions(workers=1, scaler=True)) as pipeline:
        say(f"serving; {len(arrivals)} queries at {qps:g} q/s for {duration_s:.0f} s; logs in {pipeline.log_dir}")
        with InfaasClient(settings, app_id="demo", timeout_s=60) as client:
            run = LoadRun(client, arrivals, {TASK: inputs}, variants, timeout_s=60)
            worker = threading.Thread(target=run.run, name="soak-load", daemon=True)
            started = time.monotonic()
            worker.start()
            while worker.is_alive():
                worker.join(sample_every_s)
                elapsed = time.monotonic() - started
                samples.append((elapsed, sample_services()))
                if len(samples) % max(int(60 / sample_every_s), 1) == 0:
                    say(f"{elapsed:5.0f} s: {run.stats.answered} answered; RSS MB "
                        + ", ".join(f"{n} {v:.0f}" for n, v in sorted(samples[-1][1].items())))
    stats = run.stats
    rows = verdict(samples, baseline_s)
    report = {"duration_s": duration_s, "qps": qps, "baseline_s": baseline_s, "tolerance": TOLERANCE,
              "load": stats.summary(), "segments": segments(stats, duration_s), "rss": rows,
              "all_within": all(r["within"] for r in rows.values() if r["within"] is not None),
              "samples": [{"t_s": round(t, 1), "rss_mb": s} for t, s in samples]}
    out = out or Path("bench-results") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    load = report["load"]
    say(f"{load['queries']} sent, {load['answered']} answered, {load['lost']} lost; p50 {load['p50_ms']:.1f} ms, "
        f"p99 {load['p99_ms']:.1f} ms")
    for name, row in sorted(rows.items()):
        if row["ratio"] is None:
            say(f"  {name}: {row['rss_mb_end']:.0f} MB at the end (started after the warm-up)")
        else:
            say(f"  {name}: {row['rss_mb_after_warmup']:.0f} MB after {baseline_s:.0f} s -> {row['rss_mb_end']:.0f} MB "
                f"at the end ({100 * (row['ratio'] - 1):+.1f}%): {'ok' if row['within'] else 'GREW'}")
    say(f"wrote {out}")
    return report
