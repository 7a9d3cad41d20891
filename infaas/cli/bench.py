"""`infaas bench ...`: benchmarks and the evaluation report.

Each subcommand is one `add_*` function below, listed in SUBCOMMANDS: to add one, write its
function (parser + handler) and append it there.
"""

from __future__ import annotations

from ..paths import proteus_dir
from ..settings import POLICY_NAMES
from . import user_errors


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks and the evaluation report")
    actions = bench.add_subparsers(dest="bench_command", metavar="ACTION", required=True)
    for add in SUBCOMMANDS:
        add(actions)


def _workload_args(p) -> None:
    """The evaluation's workloads, as `report` and `ablate` take them."""
    p.add_argument("--profiles", default=str(proteus_dir() / "aggregate_profiled.csv"),
                   help="variant catalogue (a Proteus profile CSV, `store`, `synthetic[:CSV]`)")
    p.add_argument("--traces-dir", default=str(proteus_dir() / "traces"))
    p.add_argument("--scenarios", default="", help="comma-separated subset of: flat, fluctuating-low, "
                                                     "fluctuating-medium, fluctuating-high, bursty")
    p.add_argument("--time-scale", type=float, default=12.0, help="stretch the ~290 s traces X times")
    p.add_argument("--rate-scale", type=float, default=12.0, help="and multiply their queries by Y")
    p.add_argument("--warmup-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default="", help="comma-separated seeds (the goal table covers each; the detailed "
                                               "tables, the first); overrides --seed")
    p.add_argument("--max-workers", type=int, default=500)


def add_report(actions) -> None:
    p = actions.add_parser("report", help="simulate infaas vs static vs replica-only on the Proteus traces and "
                                          "write docs/evaluation.md with plots in docs/img/")
    _workload_args(p)
    p.add_argument("--reuse", action="store_true", help="use the summaries a run left in RESULTS/seed-N instead "
                                                        "of simulating again")
    p.add_argument("--speed-runs", type=int, default=3,
                   help="times the 1 h x 1,000 q/s x synthetic-catalogue speed run (0: skip)")
    p.add_argument("--results", default="bench-results", help="where run summaries go (and live-*.json are read)")
    p.add_argument("--out", default="docs/evaluation.md")
    p.add_argument("--img", default="docs/img")
    p.set_defaults(handler=cmd_report)


@user_errors(ValueError, OSError)
def cmd_report(args, settings) -> int:
    from ..sim.runner import generate_report
    path = generate_report(args, settings, say=lambda msg: print(f"infaas: {msg}", flush=True))
    print(f"infaas: wrote {path}")
    return 0


def add_ablate(actions) -> None:
    p = actions.add_parser("ablate", help="the goal table's verdicts for infaas with settings changed (simulated "
                                          "against static on the report's workloads; prints a table)")
    _workload_args(p)
    p.add_argument("--set", dest="policy_set", action="append", default=[], metavar="NAME=VALUE",
                   help="a policy threshold (a PolicyConfig field, e.g. target_util_min=0.7); repeatable")
    p.add_argument("--sim", dest="sim_set", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of the simulated world (a SimOptions field, e.g. worker_start_s=1,1 or "
                        "billing_minimum_s=0); repeatable")
    p.add_argument("--jobs", type=int, default=2, help="simulations run at once, each in a process")
    p.add_argument("--results", default="bench-results",
                   help="where the rows go (ablate-<changes>.json; `bench report` shows those run at its scales)")
    p.set_defaults(handler=cmd_ablate)


@user_errors(ValueError, OSError)
def cmd_ablate(args, settings) -> int:
    from dataclasses import replace
    from pathlib import Path

    from ..policies.snapshot import PolicyConfig
    from ..sim.ablation import (
        NOT_SIM_SETTINGS,
        Setup,
        check_ranges,
        parse_overrides,
        render,
        run_ablation,
        save,
    )
    from ..sim.engine import SimOptions
    from ..sim.runner import SCENARIOS, workloads_and_seeds

    config = PolicyConfig(max_workers=args.max_workers, hardware_catalog=settings.hardware_catalog)
    policy_changes = parse_overrides(args.policy_set, config, frozenset({"hardware_catalog"}))
    sim = parse_overrides(args.sim_set, SimOptions(), NOT_SIM_SETTINGS)
    check_ranges(policy_changes, config)
    check_ranges(sim, SimOptions())
    config = replace(config, **policy_changes)
    wanted, seeds = workloads_and_seeds(args)
    unknown = sorted(set(wanted) - {s.name for s in SCENARIOS})
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(s.name for s in SCENARIOS)}")
    for path in (args.profiles, args.traces_dir):
        if not path.startswith(("store", "synthetic")) and not Path(path).exists():
            raise ValueError(f"{path}: no such file or directory (INFAAS_PROTEUS_DIR names the Proteus data)")
    setup = Setup(args.profiles, args.traces_dir, args.time_scale, args.rate_scale, args.warmup_s,
                  settings.hardware_catalog, config, sim)
    rows = run_ablation(setup, wanted or [s.name for s in SCENARIOS], seeds, args.jobs,
                        say=lambda msg: print(f"infaas: {msg}", flush=True))
    changes = [f"--set {pair}" for pair in args.policy_set] + [f"--sim {pair}" for pair in args.sim_set]
    print(render(rows, " ".join(changes)))
    print(f"infaas: wrote {save(Path(args.results), changes, setup, seeds, rows)}")
    return 0


def add_pipeline(actions) -> None:
    p = actions.add_parser("pipeline", help="selection latency, dispatcher throughput, end-to-end overhead and "
                                            "pipeline vs raw executor throughput (writes JSON)")
    p.add_argument("--quick", action="store_true", help="fewer decisions and queries")
    p.add_argument("--out", help="JSON file (default bench-results/pipeline-<time>.json)")
    p.add_argument("--only", help="comma-separated parts to run: selection, dispatcher, variants (the pipeline vs "
                                  "the raw executor, with CPU per query; builds the mnist1d zoo if missing), activation (the first "
                                  "query to a variant nobody hosts), gateway")
    p.set_defaults(handler=cmd_pipeline)


def cmd_pipeline(args, settings) -> int:
    import sys
    from pathlib import Path

    from ..benchmarks import PARTS, run_benchmarks
    parts = PARTS if not args.only else tuple(p.strip() for p in args.only.split(",") if p.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"infaas: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    run_benchmarks(settings, quick=args.quick, out=Path(args.out) if args.out else None,
                   say=lambda msg: print(f"infaas: {msg}", flush=True), parts=parts)
    return 0


def add_trace(actions) -> None:
    p = actions.add_parser("trace", help="replay a trace against the live pipeline and compare with the simulator")
    p.add_argument("--trace", default=str(proteus_dir() / "traces" / "zipf_exponential_bursty_300" / "resnet.txt"),
                   help="arrivals (arrival_ms,qos,deadline_ms lines) or a per-second rate CSV (second,qps[,deadline_ms])")
    p.add_argument("--task", default="digits-classification", help="the registered task the queries go to")
    p.add_argument("--policy", default="infaas", choices=POLICY_NAMES)
    p.add_argument("--time-scale", type=float, default=0.25, help="stretch (>1) or compress (<1) the trace")
    p.add_argument("--rate-scale", type=float, default=0.5, help="multiply its number of queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="workers at the start")
    p.add_argument("--min-workers", type=int, default=1)
    p.add_argument("--max-workers", type=int, default=2)
    p.add_argument("--results", default="bench-results")
    p.set_defaults(handler=cmd_trace)


@user_errors(ValueError, OSError)
def cmd_trace(args, settings) -> int:
    import json
    from pathlib import Path

    from ..replay import replay
    comparison = replay(settings, Path(args.trace), args.task, args.policy, args.time_scale, args.rate_scale,
                        args.seed, args.workers, args.min_workers, args.max_workers, Path(args.results),
                        say=lambda msg: print(f"infaas: {msg}", flush=True))
    keys = ("queries", "slo_violation_rate", "cost_usd", "throughput_qps", "mean_accuracy")
    measured = comparison["simulated_at_measured_speeds"]
    print(f"{'':20} {'live':>14} {'simulated':>14} {'at measured speeds':>20}")
    for key in keys:
        print(f"{key:20} {comparison['live'][key]:>14.6g} {comparison['simulated'][key]:>14.6g} {measured[key]:>20.6g}")
    print(json.dumps(comparison["difference"]))
    return 0


def add_soak(actions) -> None:
    p = actions.add_parser("soak", help="`serve` under a steady moderate load for a long time; every service's RSS "
                                        "at the end vs after the warm-up (writes JSON)")
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 30 minutes)")
    p.add_argument("--qps", type=float, default=20.0, help="mean queries per second (Poisson arrivals)")
    p.add_argument("--baseline", type=float, default=300.0, help="seconds of warm-up before the reference RSS")
    p.add_argument("--out", help="JSON file (default bench-results/soak-<time>.json)")
    p.set_defaults(handler=cmd_soak)


def cmd_soak(args, settings) -> int:
    from pathlib import Path

    from ..soak import run_soak
    report = run_soak(settings, args.duration, args.qps, args.baseline, out=Path(args.out) if args.out else None,
                      say=lambda msg: print(f"infaas: {msg}", flush=True))
    return 0 if report["all_within"] and report["load"]["lost"] == 0 else 1


def add_overload(actions) -> None:
    p = actions.add_parser("overload", help="goodput at 1x and 3x capacity, idle and beside a busy process; shed "
                                            "answers' latency; services' memory (writes JSON)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per phase (two phases per condition; 300 for the 5-minute memory check)")
    p.add_argument("--conditions", default="idle,busy",
                   help="comma-separated: idle (the machine otherwise idle), busy (beside a busy loop)")
    p.add_argument("--out", help="JSON file (default bench-results/overload-<time>.json)")
    p.set_defaults(handler=cmd_overload)


def cmd_overload(args, settings) -> int:
    from pathlib import Path

    from ..benchmarks import bench_overload
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    if args.duration <= 0:
        print("infaas: --duration must be positive")
        return 2
    if not conditions or set(conditions) - {"idle", "busy"}:
        print(f"infaas: --conditions {args.conditions!r}: name idle, busy or both")
        return 2
    bench_overload(settings, args.duration, Path(args.out) if args.out else None,
                   say=lambda msg: print(f"infaas: {msg}", flush=True), conditions=conditions)
    return 0


SUBCOMMANDS = [add_report, add_ablate, add_pipeline, add_trace, add_overload, add_soak]
