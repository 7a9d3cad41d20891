"""`infaas demo` (`make demo`): the whole system on this machine, for a new user.

Stack up, the demo zoo registered (if absent), the pipeline serving (dispatcher, monitor, scaler,
workers), then a trace's arrivals replayed with mixed requirements, while a live dashboard shows
what the system chooses; a summary table at the end. Nothing shown is made up: every number comes
from the results the pipeline returned and the profiles it measured.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from . import launcher
from .catalog import Variant
from .client import InfaasClient, QueryTimeout
from .loadgen import Arrival, LoadRun, RunStats, validation_inputs
from .paths import proteus_dir
from .registration.zoo import ensure_zoo
from .serve import Pipeline, ServeOptions
from .settings import Settings

TASK = "mnist1d-classification"  # the mnist1d zoo's (infaas/registration/zoo_mnist1d.py)
# Shipped with the package (synthetic, per-second rates): quiet, a ramp to a plateau, a burst, then
# quiet again, so a demo sees the scaler add capacity and take it away.
BUNDLED_TRACE = Path(__file__).parent / "data" / "demo-trace.csv"


def default_trace() -> Path:
    """The Proteus bursty trace where the Proteus data is present, else the bundled one."""
    proteus = proteus_dir() / "traces" / "zipf_exponential_bursty_300" / "resnet.txt"
    return proteus if proteus.is_file() else BUNDLED_TRACE


@dataclass(frozen=True)
class RequirementClass:
    label: str
    share: float
    latency_ms: float | None
    min_accuracy: float | None
    note: str
    rows: int = 1  # signals per query


ACCURATE_ROWS = 4  # the accurate clients score batches of signals: the load that needs scaling


def requirement_classes(variants: list[Variant]) -> list[RequirementClass]:
    """Three kinds of client, from the registered models: any answer, fast; an answer as good as the
    second most accurate model's, soon; the most accurate model's, for batches of signals, within a
    loose SLO. Each demand excludes the cheaper models, so each class has its own model."""
    floors: dict[str, float] = {}  # model -> its least accurate variant (floored: every variant qualifies)
    for v in variants:
        floors[v.model] = min(floors.get(v.model, 1.0), math.floor(v.accuracy * 1e4) / 1e4)
    ranked = sorted(floors.values())
    best, second = ranked[-1], ranked[max(len(ranked) - 2, 0)]
    return [RequirementClass("fast", 0.45, 25.0, None, "any accuracy, 25 ms"),
            RequirementClass("balanced", 0.35, 60.0, second, f"accuracy >= {second:.3f}, 60 ms"),
            RequirementClass("accurate", 0.2, 250.0, best, f"accuracy >= {best:.3f}, {ACCURATE_ROWS} signals, 250 ms",
                             rows=ACCURATE_ROWS)]


def arrivals_from_trace(path: Path, duration_s: float, mean_qps: float, classes: list[RequirementClass],
                        seed: int = 0) -> list[Arrival]:
    """The trace's shape, time-scaled to `duration_s` and thinned/replicated to `mean_qps`."""
    from .sim.traces import is_rate_csv, load_trace, rates_total, read_trace
    rng = np.random.default_rng(seed)
    shape = read_trace(path, task=TASK, rng=rng)
    time_scale = duration_s * 1000.0 / max(shape.duration_ms, 1.0)
    queries = rates_total(path) if is_rate_csv(path) else len(shape)  # a rate CSV's draw is only a sample
    rate_scale = mean_qps * duration_s / max(queries, 1)
    trace = load_trace(path, TASK, time_scale, rate_scale, rng)
    shares = np.array([c.share for c in classes])
    picks = rng.choice(len(classes), size=len(trace), p=shares / shares.sum())
    return [Arrival(float(at) / 1000.0, TASK, classes[k].latency_ms, classes[k].min_accuracy, classes[k].label,
                    rows=classes[k].rows) for at, k in zip(trace.arrival_ms, picks, strict=True)]


class Dashboard:
    def __init__(self, classes: list[RequirementClass], variants: dict[str, Variant], total: int):
        self.classes, self.variants, self.total = classes, variants, total
        self.events: list[str] = []
        self.actions: list[dict] = []  # the scaling actions seen: {"kind", "variant", "reason"}

    def render(self, stats: RunStats) -> Group:
        elapsed = max(time.monotonic() - stats.started, 1e-9) if stats.started else 0.0
        recent = sum(stats.timeline[s]["answered"] for s in range(int(elapsed) - 5, int(elapsed)))
        head = Table.grid(padding=(0, 3))
        head.add_row(f"[b]{elapsed:5.1f} s[/]", f"sent {stats.sent}/{self.total}", f"answered {stats.answered}",
                     f"{recent / 5:.0f} q/s", f"SLO met {100 * stats.slo_attainment:5.1f}%",
                     f"p50 {stats.percentile(50):.1f} ms", f"p99 {stats.percentile(99):.1f} ms",
                     f"cost ${stats.cost_usd:.3g}")
        table = Table(title="variants chosen", expand=True)
        for column in ("variant", "accuracy", "queries", *[c.label for c in self.classes]):
            table.add_column(column, justify="right" if column != "variant" else "left")
        per_class = defaultdict(Counter)
        for (label, variant), count in stats.label_variants.items():
            per_class[variant][label] += count
        for variant_id, count in stats.variants.most_common(8):
            variant = self.variants.get(variant_id)
            table.add_row(variant_id, f"{variant.accuracy:.4f}" if variant else "?", str(count),
                          *[str(per_class[variant_id][c.label]) for c in self.classes])
        events = "\n".join(self.events[-5:]) or "(none yet)"
        return Group(Panel(head, title="infaas demo"), table, Panel(events, title="scaling actions"))


def watch_events(settings: Settings, dashboard: Dashboard, stop: threading.Event) -> None:
    """Scaling actions as they happen, from the `infaas.scaling` topic."""
    from confluent_kafka import OFFSET_END, TopicPartition

    from . import bus
    from .schemas.codec import DecodeError, default_codec
    consumer = bus.consumer(settings, "infaas-demo-events")
    topic = settings.topic("scaling")
    consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
    try:
        while not stop.is_set():
            for message in consumer.consume(50, 0.5):
                try:
                    event = default_codec().decode_as("ScalingEvent", message.value())
                except DecodeError:
                    continue
                subject = event["variant_id"] or event["worker_id"] or event["hardware"]
                dashboard.actions.append({"kind": event["kind"], "variant": event["variant_id"] or subject,
                                          "reason": event["reason"]})
                dashboard.events.append(f"{time.strftime('%H:%M:%S')} {event['kind']} {subject}: {event['reason'][:90]}")
    finally:
        consumer.close()


def summary_table(stats: RunStats, classes: list[RequirementClass], per_class: dict[str, dict]) -> Table:
    table = Table(title="demo summary per client class (client-measured, end to end)")
    for column in ("class", "requirement", "queries", "OK", "SLO met", "p50 ms", "p99 ms", "accuracy demanded",
                   "accuracy served", "cost $", "variants chosen"):
        table.add_column(column)
    for c in classes:
        row = per_class[c.label]
        lat = np.asarray(stats.label_latencies.get(c.label, []))
        table.add_row(c.label, c.note, str(row["queries"]), str(row["ok"]), f"{100 * row['slo_attainment']:.1f}%",
                      f"{np.percentile(lat, 50):.1f}" if len(lat) else "-",
                      f"{np.percentile(lat, 99):.1f}" if len(lat) else "-",
                      f"{c.min_accuracy:.3f}" if c.min_accuracy else "any",
                      f"{row['mean_accuracy']:.3f}" if row["mean_accuracy"] is not None else "-",
                      f"{row['cost_usd']:.3g}",
                      ", ".join(f"{v} x{n}" for v, n in list(row["variants"].items())[:3]))
    return table


def class_summary(stats: RunStats, classes: list[RequirementClass], arrivals: list[Arrival],
                  variants: dict[str, Variant]) -> dict[str, dict]:
    """Per client class: what it asked for, what it got, and from which variants."""
    sent = Counter(a.label for a in arrivals)
    out = {}
    for c in classes:
        chosen = {v: n for (label, v), n in stats.label_variants.items() if label == c.label}
        served = [(variants[v].accuracy, n) for v, n in chosen.items() if v in variants]
        count = sum(n for _, n in served)
        out[c.label] = {"min_accuracy": c.min_accuracy, "latency_ms": c.latency_ms, "queries": sent[c.label],
                        "ok": stats.by_label[c.label]["OK"],
                        "slo_attainment": stats.label_slo_met[c.label] / sent[c.label] if sent[c.label] else 0.0,
                        "mean_accuracy": sum(a * n for a, n in served) / count if count else None,
                        "cost_usd": sum(variants[v].cost_per_1k / 1000.0 * n for v, n in chosen.items() if v in variants),
                        "variants": dict(Counter(chosen).most_common())}
    return out


def static_cost(settings: Settings, variants: list[Variant], arrivals: list[Arrival],
                classes: list[RequirementClass], max_workers: int, policy: str = "static") -> float:
    """What static provisioning (the `static` baseline: a fixed variant per task, replicas for the
    peak) would have cost for the same arrivals: the simulator, running the same policy code. With
    policy "infaas", the same simulation of infaas: worker-hours against worker-hours (the live
    run's `cost_usd` prices the queries served, not the workers held)."""
    from .policies.snapshot import PolicyConfig
    from .sim.engine import SimOptions
    from .sim.runner import simulate
    from .sim.traces import Workload
    labels = [c.label for c in classes]
    arrivals = [a for a in arrivals for _ in range(a.rows)]  # the simulator's queries are single rows
    demand_class = np.array([labels.index(a.label) for a in arrivals], np.int32)
    no_slo_ms = 60_000.0  # a class without a latency requirement still has the client's timeout
    table = tuple((TASK, c.min_accuracy or 0.0, c.latency_ms or no_slo_ms) for c in classes)
    workload = Workload((TASK,), np.array([a.at_s * 1000.0 for a in arrivals]), np.zeros(len(arrivals), np.int32),
                        np.array([table[k][2] for k in demand_class]), np.array([table[k][1] for k in demand_class]),
                        demand_class, table)
    config = PolicyConfig(max_workers=max_workers, hardware_catalog=settings.hardware_catalog)
    return float(simulate(variants, workload, SimOptions(policy=policy, scenario="demo", config=config))["cost_usd"])


def run_demo(settings: Settings, duration_s: float = 150.0, mean_qps: float = 40.0, workers: int = 2,
             quick: bool = False, trace: Path | None = None) -> dict:
    console = Console()
    if not launcher.is_up(settings):
        console.print("starting the local stack ...")
        launcher.up(settings, say=lambda m: console.print(f"  {m}"))
    launcher.initialize(settings)  # the keyspace and topics of these settings (idempotent)
    variants = {v.variant_id: v for v in ensure_zoo(settings, quick, say=console.print)}
    classes = requirement_classes(list(variants.values()))
    arrivals = arrivals_from_trace(trace or default_trace(), duration_s, mean_qps, classes)
    inputs = validation_inputs(settings, TASK)
    pipeline = Pipeline(settings, ServeOptions(workers=workers, scaler=True,
                                               scaler_args=["--max-workers", str(workers + 1)]))
    console.print("starting the pipeline (dispatcher, monitor, scaler, workers) ...")
    took = pipeline.start()
    console.print(f"[green]serving[/] in {took:.1f} s; logs in {pipeline.log_dir}")
    stop = threading.Event()
    try:
        with InfaasClient(settings, app_id="demo", timeout_s=60) as client:
            dashboard = Dashboard(classes, variants, len(arrivals))  # every action from the warm-up on
            threading.Thread(target=watch_events, args=(settings, dashboard, stop), daemon=True).start()
            warm_up(client, classes, inputs, console)
            run = LoadRun(client, arrivals, {TASK: inputs}, variants, timeout_s=60)
            with Live(dashboard.render(run.stats), console=console, refresh_per_second=2) as live:
                ticker = threading.Thread(target=_refresh, args=(live, dashboard, run, stop), daemon=True)
                ticker.start()
                stats = run.run()
                stop.set()
                live.update(dashboard.render(stats))
    finally:
        stop.set()
        pipeline.stop()
    summary = stats.summary()
    summary["classes"] = class_summary(stats, classes, arrivals, variants)
    console.print(summary_table(stats, classes, summary["classes"]))
    summary["actions"] = list(dashboard.actions)
    summary["static_cost_usd"] = static_cost(settings, list(variants.values()), arrivals, classes, workers + 1)
    summary["simulated_infaas_cost_usd"] = static_cost(settings, list(variants.values()), arrivals, classes,
                                                       workers + 1, policy="infaas")
    console.print(actions_table(summary["actions"]))
    console.print(f"cost: ${summary['cost_usd']:.3g} for the queries served (their variants' price per query); "
                  f"worker-hours for the same arrivals, simulated with the same policy code: static provisioning "
                  f"${summary['static_cost_usd']:.3g}, infaas ${summary['simulated_infaas_cost_usd']:.3g}")
    console.print(f"{summary['queries']} queries, {summary['ok']} OK, {summary['lost']} lost, SLO attainment "
                  f"{100 * summary['slo_attainment']:.1f}%, p50 {summary['p50_ms']:.1f} ms, p99 "
                  f"{summary['p99_ms']:.1f} ms, {summary['throughput_qps']:.0f} q/s, cost ${summary['cost_usd']:.3g}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    path = out / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=1))
    console.print(f"summary written to {path}")
    return summary


def actions_table(actions: list[dict]) -> Table:
    table = Table(title=f"scaling actions ({len(actions)})")
    for column in ("kind", "variant / worker", "reason"):
        table.add_column(column)
    for action in actions:
        table.add_row(action["kind"], action["variant"], action["reason"])
    return table


def warm_up(client: InfaasClient, classes: list[RequirementClass], inputs: np.ndarray, console: Console,
            timeout_s: float = 120.0) -> None:
    """One query per class without a deadline, so the variants they pick are loaded before timing (a
    query that comes before any worker has reported waits until the first one loads its variant)."""
    for c in classes:
        try:
            result = client.query(inputs[:c.rows], task=TASK, min_accuracy=c.min_accuracy, timeout_s=timeout_s)
        except QueryTimeout:
            console.print(f"  warm-up {c.label}: no answer within {timeout_s:g} s")
            continue
        console.print(f"  warm-up {c.label}: {result.status} via {result.variant}")


def _refresh(live: Live, dashboard: Dashboard, run: LoadRun, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        live.update(dashboard.render(run.stats))
