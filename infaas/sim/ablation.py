"""`infaas bench ablate`: the goal table's numbers for infaas with some settings changed.

A rule or a threshold is judged here before it is proposed: infaas and static run on the evaluation's
workloads with `--set NAME=VALUE` (a `PolicyConfig` field: the policies' thresholds, the same for every
policy) and `--sim NAME=VALUE` (a `SimOptions` field: worker start, billing minimum), and each row
says whether the goal of `docs/evaluation.md` would be met. Static runs with the same changes, so that
a change of the world (a faster worker start) moves both sides. Replica-only is not run: the goal's
"3x fewer violations than replica-only" has held by far more than that (see the report), so each row
checks violations against static's and cost against the goal ratio only. The rows are kept in
`RESULTS/ablate-<changes>-<hash>.json`, and the report shows those run at its scales beside its goal table.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..policies.snapshot import PolicyConfig
from .engine import SimOptions
from .report import ablation_verdict, goal_row
from .runner import SCENARIOS, simulate, workload_from

# SimOptions fields `--sim` does not take: the run's identity, what other options give (--warmup-s,
# --set), and what the policy derives (its initial workers).
NOT_SIM_SETTINGS = frozenset({"policy", "scenario", "seed", "config", "service_times", "app_id", "initial_workers",
                              "warmup_s"})


def parse_overrides(pairs: Sequence[str], defaults: Any, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`NAME=VALUE` pairs as typed values of `defaults`' dataclass fields (a tuple as comma-separated
    values; a bool as true/false). Raises ValueError naming the bad pair and what is accepted."""
    known = {f.name: getattr(defaults, f.name) for f in fields(defaults) if f.name not in exclude}
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ValueError(f"{pair!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        parsed[name] = _typed(name, text.strip(), known[name])
    return parsed


_KIND = {bool: "true or false", int: "an integer", float: "a number", tuple: "comma-separated values", str: "text"}


def _typed(name: str, text: str, current: Any) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{text!r}")
            return text.lower() in ("true", "1")
        if isinstance(current, tuple):
            kind = type(current[0]) if current else str
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        value = type(current)(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}={text!r}: expected {_KIND.get(type(current), type(current).__name__)} "
                         f"({err})") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={text!r}: must be finite")
    return value


def check_ranges(values: Mapping[str, Any], defaults: Any) -> None:
    """Thresholds, times and counts are never negative, and a tuple keeps its length (a worker start is
    `low,high`); a fraction of capacity lies in (0, 1]. Raises ValueError naming the setting."""
    for name, value in values.items():
        default = getattr(defaults, name)
        numbers = value if isinstance(value, tuple) else (value,)
        if isinstance(default, tuple) and default and len(value) != len(default):
            raise ValueError(f"{name}: expected {len(default)} comma-separated values, like "
                             f"{','.join(map(str, default))}")
        if any(isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 for v in numbers):
            raise ValueError(f"{name}={value}: must not be negative")
    for name in ("target_util_min", "target_util_max"):
        if name in values and not 0 < values[name] <= 1:
            raise ValueError(f"{name}={values[name]}: must be above 0 and at most 1")
    if hasattr(defaults, "target_util_min"):
        low, high = (values.get(n, getattr(defaults, n)) for n in ("target_util_min", "target_util_max"))
        if low > high:
            raise ValueError(f"target_util_min ({low}) is above target_util_max ({high})")
    if values.get("tick_ms", 1) <= 0:
        raise ValueError(f"tick_ms={values['tick_ms']}: must be above 0")


@dataclass(frozen=True)
class AblationRun:
    scenario: str
    seed: int
    policy: str


@dataclass(frozen=True)
class Setup:
    """What every run shares (picklable: each run simulates in a process of its own)."""
    profiles: str
    traces_dir: str
    time_scale: float
    rate_scale: float
    warmup_s: float
    hardware_catalog: str
    config: PolicyConfig
    sim: Mapping[str, Any]


def run_one(setup: Setup, run: AblationRun) -> dict:
    from .catalogue import load_catalogue
    variants = load_catalogue(setup.profiles, None, setup.hardware_catalog or None)
    scenario = next(s for s in SCENARIOS if s.name == run.scenario)
    rng = np.random.default_rng(run.seed)
    traces = scenario.load(Path(setup.traces_dir), setup.time_scale, setup.rate_scale, rng)
    workload = workload_from(traces, variants, rng, setup.config)
    options = replace(SimOptions(policy=run.policy, scenario=run.scenario, seed=run.seed, warmup_s=setup.warmup_s,
                                 config=setup.config), **setup.sim)
    summary = simulate(variants, workload, options)
    return {key: summary[key] for key in ("scenario", "policy", "slo_violation_rate", "cost_usd", "queries")}


def run_ablation(setup: Setup, scenarios: Sequence[str], seeds: Sequence[int], jobs: int, say=print) -> list[dict]:
    """One row per workload and seed: infaas's and static's violations and cost, and the goal's verdict."""
    runs = [AblationRun(s, seed, p) for seed in seeds for s in scenarios for p in ("infaas", "static")]
    say(f"{len(runs)} simulations ({len(scenarios)} workloads x {len(seeds)} seed(s) x infaas, static), "
        f"{jobs} at a time ...")
    done: dict[AblationRun, dict] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [(run, pool.submit(run_one, setup, run)) for run in runs]
        for run, future in futures:
            try:
                summary = done[run] = future.result()
            except Exception as err:  # a combination of settings the simulator cannot run: say which
                raise ValueError(f"{run.scenario}, seed {run.seed}, {run.policy}: the simulation failed with "
                                 f"these settings ({type(err).__name__}: {err})") from err
            say(f"  {run.scenario}, seed {run.seed}, {run.policy}: violations {summary['slo_violation_rate']:.3%}, "
                f"cost ${summary['cost_usd']:.3f}")
    return [goal_row(scenario, seed, done[AblationRun(scenario, seed, "infaas")],
                     done[AblationRun(scenario, seed, "static")]) for seed in seeds for scenario in scenarios]


def save(results_dir: Path, changes: Sequence[str], setup: Setup, seeds: Sequence[int], rows: Sequence[dict]) -> Path:
    """The rows as `RESULTS/ablate-<changes>-<hash>.json`, which `bench report` shows beside the goal table when
    they were run at its scales (`ablation_records`)."""
    named = " ".join(changes).replace("--", "")
    slug = re.sub(r"[^A-Za-z0-9.=,-]+", "_", named.strip())[:100] or "as-is"
    path = results_dir / f"ablate-{slug}-{hashlib.sha1(named.encode()).hexdigest()[:8]}.json"  # unique though cut
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"changes": list(changes), "time_scale": setup.time_scale,
                                "rate_scale": setup.rate_scale, "warmup_s": setup.warmup_s,
                                "seeds": list(seeds), "rows": list(rows)}, indent=1))
    return path


def ablation_records(results_dir: Path, time_scale: float, rate_scale: float, warmup_s: float) -> list[dict]:
    """The saved ablations run at these scales (others answer a different workload), fewest changes first."""
    records = []
    for path in sorted(results_dir.glob("ablate-*.json")):
        try:
            record = json.loads(path.read_text())
            scales = (record["time_scale"], record["rate_scale"], record["warmup_s"])
            if not isinstance(record["changes"], list) or not isinstance(record["rows"], list):
                raise TypeError("changes and rows must be lists")
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not what `infaas bench ablate` writes ({type(err).__name__}: {err}); "
                             "remove it or run the ablation again") from None
        if scales == (time_scale, rate_scale, warmup_s):
            records.append(record)
    return sorted(records, key=lambda r: (len(r["changes"]), r["changes"]))


def render(rows: Sequence[dict], changes: str) -> str:
    lines = [f"infaas with {changes or 'the settings as they are'} (static with the same):",
             f"{'workload':20s} {'seed':>4s} {'violations infaas / static':>28s} {'cost infaas / static':>22s} "
             f"{'vs static (goal)':>17s}  met"]
    for r in rows:
        lines.append(f"{r['scenario']:20s} {r['seed']:4d} {r['violations']:>12.3%} / {r['static_violations']:<13.3%} "
                     f"{r['cost_usd']:>9.3f} / {r['static_cost_usd']:<10.3f} {r['cost_vs_static']:>6.2f}x "
                     f"({r['goal']:g}x){'':4s} {ablation_verdict(r)}")
    lines.append(f"met: {sum(r['met'] for r in rows)} of {len(rows)}")
    return "\n".join(lines)
