"""`infaas bench trace`: a trace replayed against the live pipeline, next to the simulator's
prediction for the same trace, catalogue (our measured profiles) and policy.

The live run starts its own pipeline (dispatcher, monitor, scaler with the chosen policy, local
workers) under a topic prefix of its own, sends the trace's queries on schedule with the same
per-query requirements the simulator draws (same seed), and measures from the results and the
workers' reports: SLO violation rate (late or not OK), cost (worker-seconds at the catalogue's
price), throughput and mean served accuracy. It writes `bench-results/live-<scenario>-<policy>.json`
in the simulator's summary format (see `infaas.sim.report`), which `infaas bench report` puts
beside the simulated runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import bus
from .catalog import Variant
from .client import InfaasClient
from .hardware import hardware
from .loadgen import Arrival, LoadRun, validation_inputs
from .policies.baselines import plan_baseline
from .policies.snapshot import PolicyConfig
from .serve import Pipeline, ServeOptions
from .settings import Settings
from .store import Store


def arrivals_of(workload, task: str, variant: str | None = None) -> list[Arrival]:
    """The workload's queries: model-less with their requirements, or (a baseline's) all to `variant`
    with their SLO, as the simulator sends them."""
    if variant is not None:
        return [Arrival(float(at) / 1000.0, task, float(slo), None, label=variant, variant=variant)
                for at, slo in zip(workload.arrival_ms, workload.deadline_ms, strict=True)]
    return [Arrival(float(at) / 1000.0, task, float(slo), float(acc) if acc > 0 else None, label=f"{acc:.3f}")
            for at, slo, acc in zip(workload.arrival_ms, workload.deadline_ms, workload.accuracy_demand, strict=True)]


def measured_service_times(runs: dict[str, list[tuple[float, float, float, int]]],
                           variants: dict[str, Variant]) -> dict[str, tuple[float, float]]:
    """Per variant that ran, how long its runs took on this machine's shared cores, as `SimOptions.service_times`
    (factor, ms): the model run against the profile at the same batch (factor), and the rest of a run's
    hold on the replica (results produced: ms). `runs`: per report interval, the model's mean ms a batch,
    the replica's, the mean batch and the queries served; averaged by the queries served."""
    out = {}
    for variant_id, measured in runs.items():
        variant, served = variants[variant_id], sum(n for *_, n in measured)
        if served <= 0:
            continue
        factor = sum(n * exec_ms / max(variant.latency_at(min(batch, variant.batch_size)), 1e-6)
                     for exec_ms, _, batch, n in measured) / served
        overhead = sum(n * max(held - exec_ms, 0.0) for exec_ms, held, _, n in measured) / served
        out[variant_id] = (factor, overhead)
    return out


class LiveObserver(threading.Thread):
    """What the run cost and did, from the topics: every worker report covers `interval_ms` of one
    worker being up (cost), and carries its replicas per variant (timeline); scaling events are
    the actions taken."""

    def __init__(self, settings: Settings):
        super().__init__(daemon=True)
        from confluent_kafka import OFFSET_END, TopicPartition
        self.consumer = bus.consumer(settings, "infaas-replay-observer")
        self.consumer.assign([TopicPartition(settings.topic(name), 0, OFFSET_END) for name in ("metrics", "scaling")])
        self.seconds: dict[str, float] = defaultdict(float)  # hardware -> worker-seconds
        self.workers: dict[int, set[str]] = defaultdict(set)  # second -> workers reporting
        self.replicas: dict[int, dict[str, int]] = defaultdict(dict)  # second -> worker:variant -> replicas
        self.actions: list[dict] = []
        # variant -> per report interval: (model ms a batch, replica ms a batch, mean batch, queries served)
        self.runs: dict[str, list[tuple[float, float, float, int]]] = defaultdict(list)
        self.started = time.time()
        self.stopping = threading.Event()

    def run(self) -> None:
        from .schemas.codec import DecodeError, default_codec
        codec = default_codec()
        while not self.stopping.is_set():
            for message in self.consumer.consume(200, 0.5):
                try:
                    name, record = codec.decode(message.value())
                except DecodeError:
                    continue
                if name == "WorkerReport":
                    self._report(record)
                elif name == "ScalingEvent" and record["kind"] != "TRIGGER":
                    self.actions.append({"t_s": round(record["at"] / 1000 - self.started, 1), "kind": record["kind"],
                                         "subject": record["variant_id"] or record["worker_id"] or record["hardware"],
                                         "count": f"{record['from_count']}->{record['to_count']}",
                                         "reason": record["reason"]})
        self.consumer.close()

    def _report(self, report: dict) -> None:
        self.seconds[report["hardware"]] += report["interval_ms"] / 1000.0
        second = int(report["reported_at"] / 1000 - self.started)
        self.workers[second].add(report["worker_id"])
        for m in report["variants"]:
            self.replicas[second][f"{report['worker_id']}:{m['variant_id']}"] = m["replicas"]
            if m["exec_ms"] > 0 and m["avg_batch"] > 0 and m["served"] > 0:
                self.runs[m["variant_id"]].append((m["exec_ms"], max(m["service_ms"], m["exec_ms"]),
                                                   m["avg_batch"], m["served"]))

    def wait_for_workers(self, count: int, timeout_s: float) -> None:
        """Until `count` workers have reported (the simulator's initial workers are ready at 0)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(set().union(*self.workers.values())) < count:
            time.sleep(0.5)

    def wait_for_replicas(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not any(any(r.values()) for r in self.replicas.values()):
            time.sleep(0.5)

    def cost_usd(self) -> dict[str, float]:
        return {hw: seconds * hardware(hw).worker_price_per_hour / 3600.0 for hw, seconds in self.seconds.items()}

    def timeline(self) -> list[dict]:
        """Per second: workers up, replicas per variant, and the cost so far."""
        rows, cost = [], 0.0
        price = {hw: hardware(hw).worker_price_per_hour / 3600.0 for hw in self.seconds} or {"cpu": 0.0}
        for second in sorted(self.workers):
            per_variant: dict[str, int] = defaultdict(int)
            for key, count in self.replicas.get(second, {}).items():
                per_variant[key.split(":", 1)[1]] += count
            cost += len(self.workers[second]) * max(price.values())
            rows.append({"t_s": second, "workers": len(self.workers[second]), "replicas": dict(per_variant),
                         "cost_usd": cost})
        return rows

    @property
    def peak_workers(self) -> int:
        return max((len(w) for w in self.workers.values()), default=0)


def live_run(settings: Settings, variants: list[Variant], workload, task: str, policy: str, scenario: str,
             workers: int, config: PolicyConfig, say=print) -> dict:
    run_settings = settings.replace(topic_prefix=f"{settings.topic_prefix}-replay-{uuid.uuid4().hex[:6]}")
    bus.ensure_core_topics(run_settings)
    scaler_args = ["--min-workers", str(config.min_workers), "--max-workers", str(config.max_workers)]
    fixed_variant = None
    if policy != "infaas":
        from .sim.traces import task_demands
        plan = plan_baseline(policy, variants, task_demands(workload), config)
        plan_path = settings.state_dir / f"plan-{uuid.uuid4().hex[:6]}.json"
        plan_path.write_text(json.dumps({"policy": plan.policy, "variants": dict(plan.variants),
                                         "replicas": dict(plan.replicas), "notes": dict(plan.notes)}))
        scaler_args += ["--plan", str(plan_path)]
        fixed_variant = plan.variants[task]
    env = {**os.environ, **run_settings.as_env()}
    # The baselines provision their own workers before the first query (as in the simulator);
    # infaas starts from the initial pool and scales.
    initial = workers if policy == "infaas" else 0
    pipeline = Pipeline(run_settings, ServeOptions(workers=initial, scaler=True, policy=policy,
                                                   scaler_args=scaler_args), env=env)
    inputs = validation_inputs(settings, task)
    observer = LiveObserver(run_settings)
    say(f"live {scenario} / {policy}: starting the pipeline ...")
    pipeline.start()
    observer.start()
    if policy != "infaas":
        observer.wait_for_replicas(timeout_s=90)  # provisioned before the first query, as simulated
    else:
        # Its initial workers up first, as simulated: queries sent before any worker was ready waited in the
        # queries topic, and the dispatcher read that backlog in partition order, not the trace's, so which
        # class chose first (and so which variants loaded) changed from run to run.
        observer.wait_for_workers(initial, timeout_s=90)
    try:
        with InfaasClient(run_settings, app_id="demo", timeout_s=120) as client:
            run = LoadRun(client, arrivals_of(workload, task, fixed_variant), {task: inputs},
                          {v.variant_id: v for v in variants}, timeout_s=120)
            say(f"live {scenario} / {policy}: replaying {len(workload)} queries over {workload.duration_ms / 1000:.0f} s")
            stats = run.run()
    finally:
        observer.stopping.set()
        observer.join(timeout=5)
        pipeline.stop()
        bus.delete_prefixed_topics(run_settings)
    summary = stats.summary()
    answered = summary["answered"]
    violations = summary["queries"] - stats.slo_met  # late, not OK, or never answered
    costs = observer.cost_usd()
    return {"scenario": scenario, "policy": policy, "source": "live", "queries": summary["queries"],
            "served": summary["ok"], "unserved": summary["queries"] - summary["ok"],
            "slo_violations": violations, "slo_violation_rate": violations / max(summary["queries"], 1),
            "cost_usd": float(sum(costs.values())), "cost_by_hardware": costs,
            "throughput_qps": summary["ok"] / max(workload.duration_ms / 1000.0, 1e-9),
            "mean_accuracy": summary["mean_accuracy"], "latency_p50_ms": summary["p50_ms"],
            "latency_p99_ms": summary["p99_ms"], "duration_s": workload.duration_ms / 1000.0,
            "workers_peak": observer.peak_workers, "answered": answered, "lost": summary["lost"],
            "statuses": summary["statuses"], "actions": observer.actions, "timeline": observer.timeline(),
            "service_times": measured_service_times(observer.runs, {v.variant_id: v for v in variants})}


def replay(settings: Settings, trace_path: Path, task: str, policy: str, time_scale: float, rate_scale: float,
           seed: int, workers: int, min_workers: int, max_workers: int, out_dir: Path, say=print) -> dict:
    from .sim.engine import SimOptions
    from .sim.runner import simulate, workload_from
    from .sim.traces import load_trace
    config = PolicyConfig(min_workers=min_workers, max_workers=max_workers,
                          hardware_catalog=settings.hardware_catalog)
    with Store(settings) as store:
        variants = store.variants_for_task(task)
    if not variants:
        raise ValueError(f"no variants of task {task!r}: register models first (e.g. `infaas zoo build`)")
    rng = np.random.default_rng(seed)
    trace = load_trace(trace_path, task, time_scale, rate_scale, rng)  # arrivals or rates
    workload = workload_from([trace], variants, rng, config)
    scenario = f"{trace_path.parent.name}/{trace_path.stem}"
    live = live_run(settings, variants, workload, task, policy, scenario, workers, config, say)
    say("simulating the same trace and policy ...")
    # The local backend's workers: processes that start in seconds and are billed for the seconds they
    # report (no per-worker minimum), as the live observer counts them.
    options = SimOptions(policy=policy, scenario=scenario, seed=seed, worker_start_s=(3.0, 6.0), billing_minimum_s=0.0,
                         initial_workers={"cpu": workers}, config=config)
    simulated = simulate(variants, workload, options)
    simulated.pop("timeline", None)
    # Again at the speeds the live replicas measured: what the simulator's dynamics predict once the
    # profiles' error on this machine (its shared cores) is taken out.
    say("and at the run times the live replicas measured (profile x factor + ms): " + ", ".join(
        f"{vid} x{factor:.2f} + {ms:.2f} ms" for vid, (factor, ms) in sorted(live["service_times"].items())))
    at_measured = simulate(variants, workload, replace(options, service_times=live["service_times"]))
    at_measured.pop("timeline", None)
    comparison = {"live": live, "simulated": simulated, "simulated_at_measured_speeds": at_measured,
                  "difference": {key: live[key] - simulated[key] for key in
                                 ("slo_violation_rate", "cost_usd", "throughput_qps", "mean_accuracy")}}
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"live-{scenario.replace('/', '-')}-{policy}.json"
    (out_dir / name).write_text(json.dumps({**live, "simulated": simulated,
                                            "simulated_at_measured_speeds": at_measured}, indent=1))
    (out_dir / f"compare-{scenario.replace('/', '-')}-{policy}.json").write_text(json.dumps(comparison, indent=1))
    return comparison


