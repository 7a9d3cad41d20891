"""Summaries of a run (the JSON `infaas simulate --json` prints) and the evaluation report.

The summary format is shared with the live replay (`infaas bench trace`), which writes
`bench-results/live-*.json`, one object per run, with the same keys; the report puts the two
side by side, matching runs on (`scenario`, `policy`). Keys (REQUIRED_KEYS must be present):
  scenario              str   workload name (`flat`, `fluctuating-high`, `bursty`, ... or a trace path)
  policy                str   infaas | static | replica-only
  queries               int   queries that arrived in the measured window (after the warm-up)
  slo_violation_rate    float share of them answered after their deadline, or never answered
  cost_usd              float what the workers cost over the measured window
  throughput_qps        float queries answered per second of the window
  mean_accuracy         float mean accuracy of the variants that answered (0..1)
Optional (the simulator always writes them): goodput_qps (answered within the SLO per second),
duration_s, served, unserved, rejected, slo_violations, accuracy_shortfall (mean of
max(0, demand - served accuracy)), accuracy_shortfall_rate, mean_accuracy_demand, latency_p50_ms,
latency_p99_ms, workers_mean, workers_peak, cost_by_hardware, actions, wall_s, variants, tasks,
and `timeline` (per second: load_qps, completed, violations, workers per hardware, workers_total,
cost_usd cumulative, replicas_per_task; replicas per variant as [second, count] change points).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("scenario", "policy", "queries", "slo_violation_rate", "cost_usd", "throughput_qps", "mean_accuracy")
PAPER = {"throughput": 1.3, "violations": 1.6, "cost_mean": 8.5, "cost_max": 21.6}


def summarize(sim, end_ms: float, wall_s: float) -> dict:
    w = sim.workload
    warmup_ms = sim.options.warmup_s * 1000.0
    window_end = max(w.duration_ms, warmup_ms + 1.0)
    measured = w.arrival_ms >= warmup_ms
    latency = sim.finish - w.arrival_ms
    served = measured & np.isfinite(sim.finish)
    violated = measured & ~(latency <= w.deadline_ms)
    accuracy = np.array([sv.variant.accuracy for sv in sim.by_index] or [0.0])
    served_accuracy = accuracy[sim.served_by[served]] if served.any() else np.zeros(0)
    shortfall = np.maximum(w.accuracy_demand[served] - served_accuracy, 0.0)
    duration_s = (window_end - warmup_ms) / 1000.0
    costs = _costs(sim, warmup_ms, window_end)
    queries = int(measured.sum())
    summary = {
        "scenario": sim.options.scenario, "policy": sim.policy, "queries": queries,
        "served": int(served.sum()), "unserved": int(queries - served.sum()),
        "rejected": int((measured & (sim.served_by < 0)).sum()),
        "slo_violations": int(violated.sum()), "slo_violation_rate": float(violated.sum() / queries) if queries else 0.0,
        "cost_usd": float(sum(costs.values())), "cost_by_hardware": costs, "duration_s": duration_s,
        "throughput_qps": float(served.sum() / duration_s), "goodput_qps": float((served & ~violated).sum() / duration_s),
        "mean_accuracy": float(served_accuracy.mean()) if len(served_accuracy) else 0.0,
        "mean_accuracy_demand": float(w.accuracy_demand[measured].mean()) if queries else 0.0,
        "accuracy_shortfall": float(shortfall.mean()) if len(shortfall) else 0.0,
        "accuracy_shortfall_rate": float((shortfall > 1e-9).mean()) if len(shortfall) else 0.0,
        "latency_p50_ms": _percentile(latency[served], 50), "latency_p99_ms": _percentile(latency[served], 99),
        "tasks": list(w.tasks), "variants": len(sim.catalog), "seed": sim.options.seed,
        "warmup_s": sim.options.warmup_s, "tick_ms": sim.options.tick_ms,
        "actions": dict(sorted(sim.action_counts.items())), "wall_s": wall_s,
        "baseline": dict(sim.baseline.variants) if sim.baseline is not None else None,
        "baseline_notes": dict(sim.baseline.notes) if sim.baseline is not None else None,
    }
    summary["timeline"] = _timeline(sim, end_ms, latency, violated | (~measured & ~(latency <= w.deadline_ms)))
    workers = summary["timeline"]["workers_total"]
    first = int(warmup_ms // 1000)
    last = max(int(math.ceil(window_end / 1000)), first + 1)
    summary["workers_mean"] = float(np.mean(workers[first:last])) if workers[first:last] else 0.0
    summary["workers_peak"] = int(max(workers[first:last], default=0))
    return summary


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def _costs(sim, start_ms: float, end_ms: float) -> dict[str, float]:
    costs: dict[str, float] = {}
    for worker in sim.all_workers:
        overlap = min(billed_until(sim, worker), end_ms) - max(worker.started_at, start_ms)
        if overlap > 0:
            costs[worker.hardware] = costs.get(worker.hardware, 0.0) + worker.price_per_hour * overlap / 3.6e6
    return dict(sorted(costs.items()))


def billed_until(sim, worker) -> float:
    """When a worker stops being billed: its removal, but no sooner than the billing minimum after its start
    (EC2 bills at least 60 s)."""
    return max(worker.removed_at, worker.started_at + sim.options.billing_minimum_s * 1000.0)


def _timeline(sim, end_ms: float, latency: np.ndarray, violated: np.ndarray) -> dict:
    w = sim.workload
    seconds = int(math.ceil(end_ms / 1000))
    arrival_s = np.minimum((w.arrival_ms // 1000).astype(np.int64), seconds - 1)
    load = np.bincount(arrival_s, minlength=seconds)
    finished = np.isfinite(sim.finish)
    done_s = np.minimum((sim.finish[finished] // 1000).astype(np.int64), seconds - 1)
    completed = np.bincount(done_s, minlength=seconds)
    violations = np.bincount(arrival_s[violated], minlength=seconds)
    workers: dict[str, np.ndarray] = {}
    cost_rate = np.zeros(seconds + 1)
    for worker in sim.all_workers:
        begin = min(int(worker.started_at // 1000), seconds)
        stop = min(int(math.ceil(min(worker.removed_at, end_ms) / 1000)), seconds)
        billed = min(int(math.ceil(min(billed_until(sim, worker), end_ms) / 1000)), seconds)
        counts = workers.setdefault(worker.hardware, np.zeros(seconds + 1))
        counts[begin] += 1
        counts[stop] -= 1
        cost_rate[begin] += worker.price_per_hour / 3600.0
        cost_rate[billed] -= worker.price_per_hour / 3600.0
    per_kind = {hw: np.cumsum(c)[:seconds].astype(int).tolist() for hw, c in sorted(workers.items())}
    total = np.sum([np.array(c) for c in per_kind.values()], axis=0).tolist() if per_kind else [0] * seconds
    replicas = {vid: [list(c) for c in changes] for vid, changes in sorted(sim.replica_timeline.items())
                if any(count for _, count in changes)}
    per_task: dict[str, np.ndarray] = {}
    for variant_id, changes in replicas.items():
        task = sim.catalog[variant_id].task
        series = per_task.setdefault(task, np.zeros(seconds + 1))
        for second, count, previous in zip([c[0] for c in changes], [c[1] for c in changes],
                                           [0] + [c[1] for c in changes[:-1]], strict=True):
            series[min(max(second, 0), seconds)] += count - previous
    return {"load_qps": load.tolist(), "completed": completed.tolist(), "violations": violations.tolist(),
            "workers": per_kind, "workers_total": total,
            "cost_usd": np.cumsum(np.cumsum(cost_rate)[:seconds]).round(6).tolist(),
            "replicas_per_task": {t: np.cumsum(c)[:seconds].astype(int).tolist() for t, c in sorted(per_task.items())},
            "replicas": replicas}


def without_timeline(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "timeline"}


def check_summary(record: dict, source: str = "") -> dict:
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{source or 'summary'}: missing key(s) {', '.join(missing)}")
    return record


def load_live(results_dir: str | Path) -> list[dict]:
    """`bench-results/live-*.json` written by the live replay (REQUIRED_KEYS at least)."""
    return [check_summary(json.loads(p.read_text()), str(p)) for p in sorted(Path(results_dir).glob("live-*.json"))]


# ------------------------------------------------------------ ratios and the markdown report

def ratio(numerator: float, denominator: float) -> float:
    if denominator <= 0:
        return math.inf if numerator > 0 else 1.0
    return numerator / denominator


def ratios(runs: dict[str, dict]) -> dict[str, float]:
    """INFaaS vs the baselines, stated as the paper states them (>1 means INFaaS is better)."""
    infaas, static, replica = runs["infaas"], runs["static"], runs["replica-only"]
    return {"cost_vs_static": ratio(static["cost_usd"], infaas["cost_usd"]),
            "cost_vs_replica_only": ratio(replica["cost_usd"], infaas["cost_usd"]),
            "violations_vs_replica_only": ratio(replica["slo_violation_rate"], infaas["slo_violation_rate"]),
            "violations_vs_static": ratio(static["slo_violation_rate"], infaas["slo_violation_rate"]),
            "goodput_vs_replica_only": ratio(infaas["goodput_qps"], replica["goodput_qps"])}


def _x(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.2f}x"


def render_markdown(results: dict[str, dict[str, dict]], meta: dict, live: Iterable[dict] = (),
                    images: dict[str, str] | None = None) -> str:
    """`results[scenario][policy]` = summary; `meta` describes the set-up (all generated)."""
    images = images or {}
    lines = ["# Evaluation: infaas vs static vs replica-only (simulated)", "",
             f"_Generated by `{meta['command']}` on {meta['date']}; do not edit by hand — rerun it._", ""]
    lines += _setup(meta)
    if meta.get("goal"):
        lines += goal_section(meta["goal"], meta.get("bounds") or {})
    if meta.get("ablations"):
        lines += ablation_section(meta["ablations"])
    lines += ["## Results", "",
              "| workload | policy | queries | SLO violations | cost (USD) | throughput (q/s) | goodput (q/s) "
              "| mean accuracy | accuracy shortfall | mean workers |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario, runs in results.items():
        for policy, s in runs.items():
            lines.append(f"| {scenario} | {policy} | {s['queries']:,} | {s['slo_violation_rate']:.2%} | "
                         f"{s['cost_usd']:.3f} | {s['throughput_qps']:.1f} | {s['goodput_qps']:.1f} | "
                         f"{s['mean_accuracy']:.4f} | {s['accuracy_shortfall']:.4f} "
                         f"({s['accuracy_shortfall_rate']:.1%}) | {s['workers_mean']:.1f} |")
    lines += ["", *_ratio_section(results), ""]
    if meta.get("why"):
        lines += ["What bounds the ratios here (from the runs):", "", *[f"- {line}" for line in meta["why"]], ""]
    for scenario in results:
        if scenario in images:
            lines += [f"![{scenario}]({images[scenario]})", ""]
    if "summary" in images:
        lines += [f"![summary]({images['summary']})", ""]
    lines += _baseline_section(results)
    if meta.get("single_traces"):
        lines += single_trace_section(meta["single_traces"])
    if meta.get("speed"):
        lines += _speed_section(meta["speed"])
    lines += _live_section(results, list(live))
    return "\n".join(lines).rstrip() + "\n"


# Issue 13's goal: infaas's cost below static's by this factor, per kind of workload (the name's prefix).
COST_GOAL = {"flat": 1.15, "fluctuating": 2.0, "bursty": 1.5}
VIOLATIONS_VS_REPLICA_ONLY_GOAL = 3.0


def goal_section(per_seed: dict, bounds: dict) -> list[str]:
    """The goal table: per workload and seed, violations against both baselines and cost against static,
    beside the cost bounds the trace allows (sim/bounds.py) and the share of each infaas reaches."""
    lines = ["## Goal: SLOs as well as static, at a fraction of its cost", "",
             "Per workload and seed: infaas's SLO violations must be at most static's and at least "
             f"{VIOLATIONS_VS_REPLICA_ONLY_GOAL:g}x fewer than replica-only's; its cost lower than static's by "
             + ", ".join(f"{v:g}x ({k})" for k, v in COST_GOAL.items())
             + ". Bounds (`infaas/sim/bounds.py`): static's cost over the cheapest the trace allows with "
             "fluid capacity (every class on its cheapest variant / on static's variant), with static's variant "
             "in whole workers resized every 10 s, and with each class on the variant that makes its task "
             "cheapest in such workers (*best packed*: what a cost-aware autoscaler could reach with whole "
             "workers, a 10 s reaction, no start-up and no slack); *share* = infaas's cost ratio / that bound. "
             "A goal above the best packed bound is beyond what the trace allows with whole workers. The same "
             "settings on every workload.", "",
             "| workload | seed | violations infaas / static / replica-only | <= static | fewer than replica-only "
             "| cost vs static (goal) | bound: cheapest fluid / static fluid / static packed / best packed "
             "| share of each | met |",
             "|---|---:|---|---|---:|---|---|---|---|"]
    met_all = True
    for seed, results in per_seed.items():
        for scenario, runs in results.items():
            if not {"infaas", "static", "replica-only"} <= set(runs):
                continue
            infaas, static, replica = (runs[p] for p in ("infaas", "static", "replica-only"))
            row = goal_row(scenario, seed, infaas, static)
            goal, cost, le_static = row["goal"], row["cost_vs_static"], row["violations_within_static"]
            fewer = ratio(replica["slo_violation_rate"], infaas["slo_violation_rate"])
            met = row["met"] and fewer >= VIOLATIONS_VS_REPLICA_ONLY_GOAL
            met_all &= met
            bound = bounds.get(seed, {}).get(scenario, {})
            keys = ("cheapest_fluid", "static_fluid", "static_packed", "best_packed")
            allowed = [ratio(static["cost_usd"], bound[k]) if bound.get(k) else math.nan for k in keys]
            beyond = goal > allowed[-1]  # NaN (no bound) compares False
            verdict = "yes" if met else "**no** (goal > best packed)" if beyond else "**no**"
            lines.append(
                f"| {scenario} | {seed} | {infaas['slo_violation_rate']:.2%} / {static['slo_violation_rate']:.2%} / "
                f"{replica['slo_violation_rate']:.2%} | {'yes' if le_static else 'no'} | {_x(fewer)} | "
                f"{_x(cost)} ({goal:g}x) | {' / '.join(_x(a) for a in allowed)} | "
                f"{' / '.join(f'{cost / a:.0%}' if a > 0 else '–' for a in allowed)} | {verdict} |")
    lines += ["", "Every goal met." if met_all else "Not every goal is met yet (rows marked **no**).", "",
              "The paper's ratios (below, for the first seed) were measured against baselines that were not "
              "cost-aware; ours are: static and replica-only run the cheapest variant that meets the strictest "
              "demand of each task, so every ratio here compares infaas with a cost-aware baseline.", ""]
    return lines


def goal_row(scenario: str, seed: int, infaas: dict, static: dict) -> dict:
    """The goal's verdict against static for one workload and seed (the goal table, `bench ablate`)."""
    goal = COST_GOAL.get(scenario.split("-")[0], 1.0)
    cost = ratio(static["cost_usd"], infaas["cost_usd"])
    within = infaas["slo_violation_rate"] <= static["slo_violation_rate"]
    return {"scenario": scenario, "seed": seed, "violations": infaas["slo_violation_rate"],
            "static_violations": static["slo_violation_rate"], "cost_usd": infaas["cost_usd"],
            "static_cost_usd": static["cost_usd"], "cost_vs_static": cost, "goal": goal,
            "violations_within_static": within, "met": within and cost >= goal}


def ablation_verdict(row: dict) -> str:
    """A `goal_row`'s verdict in the ablation tables: met, or why not."""
    return "yes" if row["met"] else "no" if row["violations_within_static"] else "no (violations)"


def ablation_section(records: list[dict]) -> list[str]:
    """The saved `infaas bench ablate` runs at the report's scales: the goal's verdicts with settings changed."""
    lines = ["## What the goal would take (`infaas bench ablate`)", "",
             "infaas and static simulated again on the same workloads with the settings named (`--set`: a policy "
             "threshold; `--sim`: the simulated world, the same for static), to see which changes would meet the "
             "goal. Violations are judged against static's with the same changes, cost against the goal's ratio "
             "(replica-only is not rerun).", ""]
    for record in records:
        lines += [f"With `{' '.join(record['changes']) or 'the settings as they are'}`:", "",
                  "| workload | seed | violations infaas / static | cost infaas / static (USD) | cost vs static (goal) "
                  "| met |", "|---|---:|---|---|---|---|"]
        for r in record["rows"]:
            lines.append(f"| {r['scenario']} | {r['seed']} | {r['violations']:.3%} / {r['static_violations']:.3%} | "
                         f"{r['cost_usd']:.3f} / {r['static_cost_usd']:.3f} | {_x(r['cost_vs_static'])} "
                         f"({r['goal']:g}x) | {ablation_verdict(r)} |")
        lines += ["", f"Met: {sum(r['met'] for r in record['rows'])} of {len(record['rows'])}.", ""]
    return lines


def _setup(meta: dict) -> list[str]:
    return ["## Set-up", "", *[f"- {line}" for line in meta["setup"]], ""]


def _ratio_section(results: dict[str, dict[str, dict]]) -> list[str]:
    complete = {s: ratios(r) for s, r in results.items() if {"infaas", "static", "replica-only"} <= set(r)}
    if not complete:
        return []
    lines = ["## INFaaS's ratios, ours next to the paper's", "",
             "Higher is better for infaas. Cost reduction = baseline cost / infaas cost; fewer violations = "
             "baseline violation rate / infaas violation rate; goodput = infaas / replica-only (queries "
             "answered within their SLO per second; the paper's \"throughput\" is at the SLO).", "",
             "| workload | cost vs static | cost vs replica-only | fewer violations vs replica-only "
             "| fewer violations vs static | goodput vs replica-only |", "|---|---:|---:|---:|---:|---:|"]
    for scenario, r in complete.items():
        lines.append(f"| {scenario} | {_x(r['cost_vs_static'])} | {_x(r['cost_vs_replica_only'])} | "
                     f"{_x(r['violations_vs_replica_only'])} | {_x(r['violations_vs_static'])} | "
                     f"{_x(r['goodput_vs_replica_only'])} |")
    cost = [v for r in complete.values() for v in (r["cost_vs_static"], r["cost_vs_replica_only"]) if math.isfinite(v)]
    violations = [r["violations_vs_replica_only"] for r in complete.values()]
    goodput = [r["goodput_vs_replica_only"] for r in complete.values()]
    mean_cost, max_cost = (float(np.mean(cost)), float(np.max(cost))) if cost else (0.0, 0.0)
    finite_viol = [v for v in violations if math.isfinite(v)]
    mean_viol = float(np.mean(finite_viol)) if finite_viol else math.inf
    mean_goodput = float(np.mean(goodput))
    lines += ["", "| | ours | paper (ATC'21) | beaten? |", "|---|---:|---:|---|",
              f"| lower cost, average over workloads and baselines | {_x(mean_cost)} | {PAPER['cost_mean']}x | "
              f"{_verdict(mean_cost, PAPER['cost_mean'])} |",
              f"| lower cost, maximum | {_x(max_cost)} | {PAPER['cost_max']}x | {_verdict(max_cost, PAPER['cost_max'])} |",
              f"| fewer SLO violations vs replica-only, average | {_x(mean_viol)} | {PAPER['violations']}x | "
              f"{_verdict(mean_viol, PAPER['violations'])} |",
              f"| throughput (goodput) vs replica-only, average | {_x(mean_goodput)} | {PAPER['throughput']}x | "
              f"{_verdict(mean_goodput, PAPER['throughput'])} |", ""]
    lines += _shortfalls(complete, results)
    return lines


def _verdict(ours: float, paper: float) -> str:
    return "yes" if ours >= paper else "no"


def _shortfalls(complete: dict[str, dict], results: dict[str, dict[str, dict]]) -> list[str]:
    """Where infaas does worse than a baseline, said plainly, per workload."""
    notes = []
    for scenario, r in complete.items():
        runs = results[scenario]
        for metric, key, label, fmt in (("violations", "slo_violation_rate", "violates more SLOs", ".2%"),
                                        ("cost", "cost_usd", "costs more", ".3f")):
            worse = [p for p in ("replica-only", "static") if r[f"{metric}_vs_{p.replace('-', '_')}"] < 1]
            if worse:
                against = " and ".join(f"{p} ({format(runs[p][key], fmt)})" for p in worse)
                notes.append(f"- **{scenario}**: infaas {label} ({format(runs['infaas'][key], fmt)}) than {against}.")
        if r["goodput_vs_replica_only"] < 1:
            notes.append(f"- **{scenario}**: infaas answers fewer queries within their SLO per second than replica-only.")
    if not notes:
        return ["Infaas is at least as good as both baselines on cost, SLO violations and goodput on every workload.", ""]
    return ["Where infaas does worse than a baseline:", "", *notes, ""]


def _baseline_section(results: dict[str, dict[str, dict]]) -> list[str]:
    lines = ["## The baselines' fixed variants", "",
             "Per task, the variant static and replica-only serve every query with (chosen for the strictest "
             "accuracy demand and SLO of the trace, cheapest at its peak):", ""]
    seen: dict[str, str] = {}
    for runs in results.values():
        for policy in ("static", "replica-only"):
            if policy in runs and runs[policy].get("baseline"):
                seen.update(runs[policy]["baseline"])
    lines += [f"- {task}: `{variant}`" for task, variant in sorted(seen.items())]
    notes = {t: n for runs in results.values() for p in runs.values() for t, n in (p.get("baseline_notes") or {}).items()}
    lines += [f"- note, {task}: {note}" for task, note in sorted(notes.items())]
    return [*lines, ""]


def single_trace_section(rows: list[dict]) -> list[str]:
    """Each trace alone, infaas vs static (`runner.single_trace_runs`): where the settings hold and where not."""
    fewer = sum(r["infaas"]["slo_violation_rate"] <= r["static"]["slo_violation_rate"] for r in rows)
    cheaper = sum(r["infaas"]["cost_usd"] <= r["static"]["cost_usd"] for r in rows)
    spent = sum(r["infaas"]["cost_usd"] for r in rows), sum(r["static"]["cost_usd"] for r in rows)
    perfect = sum(r["static"]["slo_violation_rate"] == 0 for r in rows)
    lines = ["## Each trace alone (workloads not tuned on)", "",
             f"Every trace of the workloads' directories as a workload of its own (one task; the same settings, "
             f"scales and first seed), infaas vs static. infaas misses no more SLOs than static on **{fewer} of "
             f"{len(rows)}** and costs no more on **{cheaper} of {len(rows)}**; in all it spends "
             f"${spent[0]:.2f} against static's ${spent[1]:.2f} ({spent[1] / max(spent[0], 1e-12):.2f}x). Static "
             f"misses none at all on {perfect} of them: one task's peak second sizes its replicas, far above the "
             "trace's mean.", "",
             "| traces | trace | queries | SLO violations infaas / static | cost infaas / static (USD) "
             "| cost vs static |", "|---|---|---:|---|---|---:|"]
    for r in rows:
        infaas, static = r["infaas"], r["static"]
        lines.append(f"| {r['traces']} | {r['trace']} | {infaas['queries']:,} | "
                     f"{infaas['slo_violation_rate']:.3%} / {static['slo_violation_rate']:.3%} | "
                     f"{infaas['cost_usd']:.3f} / {static['cost_usd']:.3f} | "
                     f"{static['cost_usd'] / max(infaas['cost_usd'], 1e-12):.2f}x |")
    return lines + [""]


def _speed_section(speed: dict) -> list[str]:
    return ["## Simulator speed", "",
            f"{speed['description']}: {speed['queries']:,} queries over {speed['variants']:,} variants "
            f"({speed['tasks']} tasks, {speed['duration_s'] / 60:.0f} min of trace) simulated in "
            f"**{speed['wall_s']:.1f} s** (median of {speed['runs']} run(s): "
            f"{', '.join(f'{t:.1f}' for t in speed['all_wall_s'])} s) on {speed['machine']}.", ""]


def _live_section(results: dict[str, dict[str, dict]], live: list[dict]) -> list[str]:
    if not live:
        return ["## Live vs simulator", "",
                "No live replay results yet (`infaas bench trace` writes `bench-results/live-*.json`, "
                "format in `infaas/sim/report.py`).", ""]
    lines = ["## Live vs simulator", "",
             "| workload | policy | queries live / sim | SLO violations live / sim / sim at measured speeds "
             "| cost live / sim / sim at measured speeds (USD) | throughput live / sim | mean accuracy live / sim "
             "| within tolerance? (sim; at measured speeds) |",
             "|---|---|---|---|---|---|---|---|"]
    for record in live:
        # The replay simulates its own trace and catalogue and keeps that beside the live numbers.
        sim = record.get("simulated") or results.get(record["scenario"], {}).get(record["policy"])
        measured = record.get("simulated_at_measured_speeds")

        def cells(key: str, fmt: str, record: dict = record, sims: tuple = (sim, measured)) -> str:
            shown = [format(record[key], fmt)] + [format(x[key], fmt) if x else "–" for x in sims]
            return " / ".join(shown)
        verdicts = "; ".join(live_agrees(record, x) if x else "–" for x in (sim, measured))
        lines.append(f"| {record['scenario']} | {record['policy']} | {cells('queries', ',', sims=(sim,))} | "
                     f"{cells('slo_violation_rate', '.2%')} | {cells('cost_usd', '.5f')} | "
                     f"{cells('throughput_qps', '.1f', sims=(sim,))} | {cells('mean_accuracy', '.4f', sims=(sim,))} | "
                     f"{verdicts} |")
    lines += ["", "Live: `infaas bench trace` replays the trace through the running pipeline on this machine (local "
              "workers, the demo zoo's measured profiles); sim: the simulator on the same trace, catalogue, policy "
              "and seed; sim at measured speeds: the same, each variant's runs taking what its live replicas "
              "measured (the profile's time x the model's measured slowdown, plus the measured rest of a run: "
              "results produced; averaged over the run) for execution only (the policies still see the "
              "profiles, as live). Its gap to the live run is the "
              "simulator's own; the gap between the two sims is the profiles' error on this machine's shared cores. "
              "Cost counts worker-seconds at the catalogue price; the live run's also counts the seconds "
              "before the first and after the last query. Tolerance: the simulator predicts the SLO violation rate within "
              f"{VIOLATION_TOLERANCE * 100:g} percentage point(s) and the cost within {COST_TOLERANCE:.0%}.", ""]
    return lines


# What the simulator is held to against a live replay (issue: "predict SLO violation rate and cost").
VIOLATION_TOLERANCE = 0.01   # absolute, in violation-rate points
COST_TOLERANCE = 0.10        # relative to the live cost


def live_agrees(live: dict, sim: dict) -> str:
    """'yes', or 'no: ...' naming the measure(s) the simulator missed."""
    missed = []
    if abs(live["slo_violation_rate"] - sim["slo_violation_rate"]) > VIOLATION_TOLERANCE:
        missed.append("violations")
    if abs(live["cost_usd"] - sim["cost_usd"]) > COST_TOLERANCE * live["cost_usd"]:
        missed.append("cost")
    return "yes" if not missed else "no: " + ", ".join(missed)
