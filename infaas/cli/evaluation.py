"""`infaas simulate`: the trace-driven simulator (infaas/sim), on the live system's policies."""

from __future__ import annotations

import json
import sys

from ..paths import proteus_dir
from ..settings import POLICY_NAMES
from . import user_errors


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate serving a trace under a scaling policy (no Kafka, no Cassandra)")
    p.add_argument("--trace", action="append", required=True, metavar="PATH",
                   help="a query trace (`arrival_ms,qos_level,deadline_ms` lines; the task is the file name), "
                        "a per-second rate CSV (`second,qps[,deadline_ms[,qos_level]]`), a directory of them, "
                        "or TASK=PATH; repeat for several tasks")
    p.add_argument("--profiles", default=str(proteus_dir() / "aggregate_profiled.csv"),
                   help="variant catalogue: a Proteus profile CSV, `store` (our metadata store), or "
                        "`synthetic[:CSV]` (about 4,000 variants derived from the Proteus profiles)")
    p.add_argument("--policy", choices=POLICY_NAMES, default="infaas")
    p.add_argument("--time-scale", type=float, default=1.0, help="stretch the trace X times longer (rates / X)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the number of queries by Y")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-s", type=float, default=0.0, help="leave the first seconds out of the metrics")
    p.add_argument("--tick-ms", type=int, default=1000, help="monitor/scaler period (the dispatcher's refresh)")
    p.add_argument("--worker-start-s", default="20,30", help="a new worker is up after MIN,MAX seconds (uniform)")
    p.add_argument("--min-workers", type=int, default=1)
    p.add_argument("--max-workers", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print one JSON object (the summary)")
    p.add_argument("--timeline", action="store_true", help="with --json: include the per-second timelines")
    p.add_argument("--out", metavar="DIR", help="write summary.json (with timelines) and timeline.png here")
    p.set_defaults(handler=cmd_simulate)


@user_errors(ValueError, OSError)
def cmd_simulate(args, settings) -> int:
    import numpy as np

    from ..policies.snapshot import PolicyConfig
    from ..sim.catalogue import load_catalogue
    from ..sim.engine import SimOptions
    from ..sim.report import without_timeline
    from ..sim.runner import load_traces, simulate, workload_from

    low, _, high = args.worker_start_s.partition(",")
    config = PolicyConfig(min_workers=args.min_workers, max_workers=args.max_workers,
                          hardware_catalog=settings.hardware_catalog)
    variants = load_catalogue(args.profiles, settings, settings.hardware_catalog or None)
    rng = np.random.default_rng(args.seed)
    traces = load_traces(args.trace, args.time_scale, args.rate_scale, rng)
    workload = workload_from(traces, variants, rng, config)
    options = SimOptions(policy=args.policy, scenario=" ".join(args.trace), tick_ms=args.tick_ms, seed=args.seed,
                         warmup_s=args.warmup_s, worker_start_s=(float(low), float(high or low)), config=config)
    summary = simulate(variants, workload, options)
    if args.out:
        _write_out(summary, args.out)
    if args.json:
        json.dump(summary if args.timeline else without_timeline(summary), sys.stdout)
        print()
    else:
        _print_summary(summary)
    return 0


def _write_out(summary: dict, directory: str) -> None:
    from pathlib import Path

    from ..sim.plots import run_timeline
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary))
    run_timeline(summary, out / "timeline.png")


def _print_summary(s: dict) -> None:
    print(f"policy {s['policy']}: {s['queries']:,} queries over {s['duration_s']:.0f} s, {len(s['tasks'])} task(s), "
          f"{s['variants']:,} variants")
    print(f"  SLO violations {s['slo_violation_rate']:.2%} ({s['slo_violations']:,}; unserved {s['unserved']:,})")
    print(f"  cost ${s['cost_usd']:.4f}  ({', '.join(f'{k} ${v:.4f}' for k, v in s['cost_by_hardware'].items())})")
    print(f"  throughput {s['throughput_qps']:.1f} q/s, goodput {s['goodput_qps']:.1f} q/s, "
          f"latency p50 {s['latency_p50_ms']:.1f} ms, p99 {s['latency_p99_ms']:.1f} ms")
    print(f"  mean accuracy {s['mean_accuracy']:.4f} (demand {s['mean_accuracy_demand']:.4f}, shortfall "
          f"{s['accuracy_shortfall']:.4f} on {s['accuracy_shortfall_rate']:.1%} of queries)")
    print(f"  workers mean {s['workers_mean']:.1f}, peak {s['workers_peak']}; actions "
          + ", ".join(f"{k} {v}" for k, v in s["actions"].items()))
    print(f"  simulated in {s['wall_s']:.1f} s")
