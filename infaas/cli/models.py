"""`infaas register`, `infaas zoo build`, `infaas models`, `infaas variants`, `infaas profiles import`."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from . import user_errors


def register(sub) -> None:
    p = sub.add_parser("register", help="register an ONNX model: validate, build its variants, profile them")
    p.add_argument("--app", required=True, help="the owning application id (created if new)")
    p.add_argument("--task", required=True, help="the use case, e.g. digits-classification")
    p.add_argument("--arch", required=True, help="architecture name, e.g. resnet50")
    p.add_argument("--model", required=True, metavar="FILE.onnx", help="the ONNX model file")
    p.add_argument("--validation", required=True, metavar="FILE.npz", help="validation set: arrays inputs, labels")
    p.add_argument("--name", help="model name (default: the architecture name)")
    p.add_argument("--public", action="store_true", help="other apps may use this model")
    p.add_argument("--metric", default="top1", choices=("top1", "top5"))
    p.add_argument("--hardware", help="comma-separated hardware kinds to build for (default: this host's)")
    p.add_argument("--quick", action="store_true", help="a short profiling budget (tests, demos)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_register)

    zoo = sub.add_parser("zoo", help="the demo model zoos (mnist1d: a Pareto front; digits: small, for tests)")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    p = zsub.add_parser("build", help="train a zoo and register it (app demo)")
    p.add_argument("--zoo", default="mnist1d", choices=("mnist1d", "digits"),
                   help="mnist1d (default): task mnist1d-classification, logistic regression to CNN; digits: "
                        "task digits-classification, the test suite's small zoo")
    p.add_argument("--quick", action="store_true", help="short training and profiling")
    p.add_argument("--only", help="comma-separated zoo model names")
    p.add_argument("--directory", help="keep the exported ONNX files and validation set here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_zoo_build)

    p = sub.add_parser("models", help="registered models")
    p.add_argument("--task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models)
    from .ecosystem import add_models_delete
    add_models_delete(p)

    p = sub.add_parser("variants", help="variants with their profiles, cost and state")
    p.add_argument("--task")
    p.add_argument("--model")
    p.add_argument("--json", action="store_true", help="one object per variant (every batch size)")
    p.set_defaults(handler=cmd_variants)

    profiles = sub.add_parser("profiles", help="variant profiles measured elsewhere")
    psub = profiles.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    p = psub.add_parser("import", help="load public Proteus profiles (aggregate_profiled.csv), marked imported")
    p.add_argument("csv", metavar="CSV")
    p.add_argument("--cpu-threads", type=int, default=4, help="vCPUs a CPU row is costed with (default 4)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_profiles_import)


def _errors():
    from ..hardware import UnknownHardware
    from ..registration import RegistrationError
    from ..repository import RepositoryError
    from ..store import StoreError
    return RegistrationError, RepositoryError, StoreError, UnknownHardware, FileNotFoundError


@contextmanager
def _progress(enabled: bool):
    """A rich progress bar over variant bases; `advance(what, done, total)` moves it."""
    if not enabled:
        yield None, (lambda *a: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console(stderr=True), transient=False) as bar:
        state = {"task": None}

        def advance(what: str, done: int, total: int) -> None:
            if state["task"] is None:
                state["task"] = bar.add_task(what, total=total)
            bar.update(state["task"], description=what, completed=done, total=total)

        yield (bar, state), advance


def _console(stderr: bool = False):
    """Rich console; when not a terminal (a pipe, a log) wide enough for the whole table."""
    from rich.console import Console
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=220)


def _report_dict(report) -> dict:
    from ..registration.listing import variant_record
    return {"model": asdict(report.model), "task": asdict(report.task), "unchanged": report.unchanged,
            "new_task": report.new_task, "new_app": report.new_app, "variants": [variant_record(v) for v in
                                                                                   report.variants],
            "accuracy": report.accuracy, "agreement_with_fp32": report.agreement, "unavailable": report.unavailable,
            "skipped": report.skipped, "seconds": report.seconds}


def cmd_register(args, settings) -> int:
    @user_errors(*_errors())
    def run(args, settings):
        from ..registration import register_model
        hardware = [h.strip() for h in args.hardware.split(",") if h.strip()] if args.hardware else None
        with _progress(not args.json) as (_, advance):
            report = register_model(settings, args.app, args.task, args.arch, args.model, args.validation,
                                    public=args.public, metric=args.metric, quick=args.quick, name=args.name,
                                    hardware=hardware, on_progress=advance)
        if args.json:
            print(json.dumps(_report_dict(report), indent=2))
            return 0
        _print_report(report)
        return 0
    return run(args, settings)


def _print_report(report) -> None:
    from ..registration.listing import base_rows, variant_record
    console = _console()
    console.print(f"infaas: {report.summary()}")
    if report.unchanged:
        return
    _print_bases(console, base_rows([variant_record(v) for v in report.variants]), title=report.model.model)
    for key, by_batch in sorted(report.agreement.items()):
        accuracy = report.accuracy[key].values()
        console.print(f"  {key}: accuracy {min(accuracy):.4f}..{max(accuracy):.4f} over batch sizes, top-1 "
                      f"agreement with fp32 {min(by_batch.values()):.4f}..{max(by_batch.values()):.4f}")
    for key, reason in sorted(report.skipped.items()):
        console.print(f"  {key}: build failed, skipped: {reason}")
    for key, reason in sorted(report.unavailable.items()):
        console.print(f"  {key}: {reason}")
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    console.print(f"  time: {seconds}")


def cmd_zoo_build(args, settings) -> int:
    @user_errors(*_errors(), ValueError)
    def run(args, settings):
        from ..registration.zoo import build_zoo, zoos
        names = tuple(n.strip() for n in args.only.split(",") if n.strip()) if args.only else None
        directory = Path(args.directory) if args.directory else None
        started = time.perf_counter()
        with _progress(not args.json) as (_, advance):  # one bar for the whole zoo
            reports = build_zoo(settings, quick=args.quick, names=names, on_progress=advance, directory=directory,
                                zoo=args.zoo)
        took = time.perf_counter() - started
        if args.json:
            print(json.dumps({"seconds": took, "models": [_report_dict(r) for r in reports]}, indent=2))
            return 0
        for report in reports:
            print(f"infaas: {report.summary()}")
        variants = sum(len(r.variants) for r in reports)
        print(f"infaas: zoo built in {took:.1f} s: {len(reports)} models, {variants} variants "
              f"(see `infaas variants --task {zoos()[args.zoo].task}`)")
        return 0
    return run(args, settings)


def cmd_models(args, settings) -> int:
    @user_errors(*_errors())
    def run(args, settings):
        from ..registration.listing import model_records
        from ..store import Store
        with Store(settings) as store:
            records = model_records(store, args.task)
        if args.json:
            print(json.dumps(records, indent=2))
            return 0
        from rich.table import Table
        table = Table(title="registered models")
        for column in ("task", "model", "ver", "app", "public", "architecture", "accuracy", "variants",
                       "p50 ms min b", "p50 ms max b", "max qps", "load ms", "min $/1k", "active"):
            table.add_column(column, justify="right" if column not in ("task", "model", "app", "architecture")
                             else "left")
        for r in records:
            table.add_row(r["task"], r["model"], str(r["version"]), r["app_id"], "yes" if r["public"] else "no",
                          r["architecture"], f"{r['accuracy']:.4f}", str(r["variants"]),
                          _num(r["best_latency_ms_min_batch"]),
                          _num(r["best_latency_ms_max_batch"], f" (b{r['max_batch']})" if r["max_batch"] else ""),
                          _num(r["max_throughput_qps"], digits=0), _num(r["min_load_ms"], digits=1),
                          _money(r["min_cost_per_1k"]), str(r["active"]))
        _console().print(table)
        return 0
    return run(args, settings)


def cmd_variants(args, settings) -> int:
    @user_errors(*_errors())
    def run(args, settings):
        from ..registration.listing import base_rows, variant_records
        from ..store import Store
        with Store(settings) as store:
            records = variant_records(store, args.task, args.model)
        if args.json:
            print(json.dumps(records, indent=2))
            return 0
        console = _console()
        title = f"variants of {args.model or args.task or 'every task'} ({len(records)} variants)"
        _print_bases(console, base_rows(records), title=title)
        from ..consumers.executors import available_backends
        missing = {k: v for k, v in available_backends(settings.gpu_hardware).items() if v}
        for key, reason in sorted(missing.items()):
            console.print(f"  {key}: {reason}")
        return 0
    return run(args, settings)


def _print_bases(console, rows: list[dict], title: str) -> None:
    from rich.table import Table
    table = Table(title=title)
    for column in ("model", "optimizer", "hardware", "accuracy", "p50 ms min b", "p50 ms max b",
                   "p99 ms max b", "max qps", "load ms", "mem MB", "$/1k min b", "$/1k max b", "state", "source"):
        table.add_column(column, justify="left" if column in ("model", "optimizer", "hardware", "state", "source")
                         else "right")
    for r in rows:
        low, high = r["low"], r["high"]
        placement = f"{r['hardware']} {r['threads']}t" if r["hardware"] == "cpu" else r["hardware"]
        table.add_row(r["model"], r["optimizer"], placement, f"{r['accuracy']:.4f}", _num(low["latency_ms"], f" (b{low['batch']})"),
                      _num(high["latency_ms"], f" (b{high['batch']})"), _num(high["latency_p99_ms"]),
                      _num(r["throughput_qps"], digits=0), _num(r["load_ms"], digits=1),
                      _num(r["peak_memory_mb"], digits=1), _money(low["cost_per_1k"]), _money(high["cost_per_1k"]),
                      r["state"], r["source"])
    console.print(table)


def _num(value, suffix: str = "", digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _money(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def cmd_profiles_import(args, settings) -> int:
    @user_errors(*_errors(), OSError, KeyError, ValueError)
    def run(args, settings):
        from collections import Counter

        from ..registration.listing import import_profiles
        from ..store import Store
        with Store(settings) as store:
            variants = import_profiles(store, args.csv, settings.hardware_catalog or None, args.cpu_threads)
        per_task = Counter(v.task for v in variants)
        summary = {"imported": len(variants), "source": "imported", "tasks": dict(sorted(per_task.items())),
                   "models": len({v.model for v in variants}), "hardware": sorted({v.hardware for v in variants})}
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"infaas: imported {len(variants)} variants of {summary['models']} models "
                  f"({', '.join(f'{t} {n}' for t, n in summary['tasks'].items())}) on "
                  f"{', '.join(summary['hardware'])}; marked source=imported (measured elsewhere)")
        return 0
    return run(args, settings)
