"""Online serving: `infaas app`, `dispatcher`, `monitor`, `worker`, `serve`, `query`."""

from __future__ import annotations

import json
import os
import sys
import time

from ..scaler.processes import watch_supervisor, yield_to_model_runs
from ..settings import POLICY_NAMES, SCALER_BACKENDS


def register(sub) -> None:
    app = sub.add_parser("app", help="applications (tenants)")
    asub = app.add_subparsers(dest="app_command", metavar="ACTION", required=True)
    p = asub.add_parser("create", help="register an application id (on a secure stack also its Kafka principal "
                                       "app-<id>, its ACLs and its results topic)")
    p.add_argument("app_id")
    p.add_argument("--description", default="")
    p.add_argument("--print-credentials", action="store_true",
                   help="secure stack: give the app's principal a new password and print it as shell exports "
                        "(the only time it is shown)")
    p.add_argument("--analytics", action="store_true",
                   help="a streaming-analytics app: it reads infaas.load, infaas.scaling and the results of the "
                        "apps named in --apps (on a secure stack nothing else), and sends no queries")
    p.add_argument("--apps", default="", help="with --analytics: comma-separated apps whose results it may read")
    p.set_defaults(handler=cmd_app_create)
    asub.add_parser("list", help="registered applications").set_defaults(handler=cmd_app_list)
    from .ecosystem import add_app_delete
    add_app_delete(asub)

    p = sub.add_parser("dispatcher", help="run the dispatcher (Faust agent on the queries topic)")
    p.add_argument("--web-port", type=int, help="Faust's web port (default: a free one)")
    p.set_defaults(handler=cmd_dispatcher)
    p = sub.add_parser("monitor", help="run the load monitor (Faust stream on the metrics topic)")
    p.add_argument("--web-port", type=int)
    p.set_defaults(handler=cmd_monitor)

    p = sub.add_parser("worker", help="run a worker that hosts variants")
    p.add_argument("--hardware", default="cpu", help="cpu or a GPU kind of the hardware catalogue (gpu-t4, ...)")
    p.add_argument("--worker-id", help="default: <host>-<hardware>-<pid>")
    p.add_argument("--variants", default="", help="comma-separated variant ids to load at start")
    p.add_argument("--memory-mb", type=float, help="memory budget for hosted variants (setting worker_memory_mb)")
    p.add_argument("--max-batch-delay-ms", type=float, help="longest wait for a batch to fill (setting "
                                                            "max_batch_delay_ms)")
    p.add_argument("--offline-cpu-threshold", type=float,
                   help="run batch-job chunks only while CPU utilization is at most this, 0..1 (setting "
                        "offline_cpu_threshold)")
    p.add_argument("--no-offline", action="store_true", help="never run batch jobs on this worker")
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("serve", help="dispatcher + monitor + scaler + workers, until Ctrl-C")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--hardware", default="cpu")
    p.add_argument("--preload", default="", help="comma-separated variant ids every worker loads at start")
    p.add_argument("--memory-mb", type=float, help="each worker's (setting worker_memory_mb)")
    p.add_argument("--max-batch-delay-ms", type=float, help="setting max_batch_delay_ms")
    p.add_argument("--policy", choices=POLICY_NAMES, help="setting scaling_policy")
    p.add_argument("--no-scaler", action="store_true",
                   help="no scaler: a fixed pool of workers, which serve then owns and restarts itself")
    p.add_argument("--dispatchers", type=int, default=1, help="dispatchers sharing the queries topic's partitions")
    p.add_argument("--plan", help="the baseline plan (JSON) that replica-only needs: the fixed variant per task")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("scaler", help="run the scaler (replicas, variants, workers)")
    p.add_argument("--policy", choices=POLICY_NAMES, help="setting scaling_policy")
    p.add_argument("--backend", choices=SCALER_BACKENDS, help="setting scaler_backend")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="aws: asg.<hardware>=GROUP, region=R; kubernetes: deployment.<hardware>=NAME, namespace=NS")
    p.add_argument("--plan", help="baseline plan (JSON) for static / replica-only: the fixed variant per task")
    p.add_argument("--interval", type=float, help="seconds between decisions (setting scaler_interval_s)")
    p.add_argument("--min-workers", type=int, help="setting min_workers")
    p.add_argument("--max-workers", type=int, help="setting max_workers")
    p.add_argument("--unload-idle-s", type=float, help="setting unload_idle_s")
    p.add_argument("--initial-workers", type=int, default=0,
                   help="workers to have at the start (local backend): started unless already reporting")
    p.add_argument("--worker-hardware", default="cpu", help="hardware of the initial workers")
    p.add_argument("--preload", default="", help="comma-separated variant ids the initial workers load at start")
    p.add_argument("--worker-memory-mb", type=float, help="setting worker_memory_mb")
    p.add_argument("--worker-max-batch-delay-ms", type=float, help="setting max_batch_delay_ms")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                   help="one more `infaas worker` argument for the workers it starts (repeat; --worker-arg=--x)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds the initial workers may take")
    p.set_defaults(handler=cmd_scaler)

    p = sub.add_parser("events", help="scaling events: what the system did and why")
    p.add_argument("--since-min", type=float, default=60.0, help="look back this many minutes")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_events)

    p = sub.add_parser("trace", help="where a query is: sent, routed, answered, or lost on the way")
    p.add_argument("query_id", help="the query's id (QueryResult.query_id, or the one given to submit)")
    p.add_argument("--since-min", type=float, default=10.0, help="look at messages from this many minutes back")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_trace)

    p = sub.add_parser("demo", help="stack + zoo + pipeline + a trace with mixed requirements, with a dashboard")
    p.add_argument("--duration", type=float, default=150.0, help="seconds of load")
    p.add_argument("--qps", type=float, default=40.0, help="mean queries per second")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="register the zoo with quick profiling")
    p.add_argument("--trace", help="a trace file (arrival_ms,qos,deadline_ms lines, or a second,qps CSV); default: the Proteus bursty trace when the Proteus data is present, else the bundled one")
    p.set_defaults(handler=cmd_demo)

    batch = sub.add_parser("batch", help="offline (batch) queries, served from spare capacity")
    bsub = batch.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    p = bsub.add_parser("submit", help="submit a batch job: every row of a .npy through one variant")
    p.add_argument("--input", required=True, help="file:///... or s3://bucket/key .npy (a batch of inputs)")
    p.add_argument("--output", required=True, help="file:// or s3:// URL; .npz gets every output, else the first")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--task")
    target.add_argument("--model")
    p.add_argument("--app", default="demo")
    p.add_argument("--min-accuracy", type=float)
    p.add_argument("--max-cost", type=float, help="USD per 1,000 queries")
    p.add_argument("--chunk-size", type=int, help="rows per chunk (default: setting offline_chunk_size)")
    p.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
    p.set_defaults(handler=cmd_batch_submit)
    p = bsub.add_parser("status", help="a batch job's progress")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_batch_status)
    bsub.add_parser("list", help="batch jobs").set_defaults(handler=cmd_batch_list)

    p = sub.add_parser("query", help="send one query and print the result")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--task")
    target.add_argument("--model")
    target.add_argument("--variant")
    p.add_argument("--input", required=True, help=".npy file: a batch of inputs (or one sample)")
    p.add_argument("--app", default="demo")
    p.add_argument("--min-accuracy", type=float)
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--max-cost", type=float, help="USD per 1,000 queries")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_query)


def cmd_app_create(args, settings) -> int:
    from .. import credentials
    from ..catalog import check_name
    from ..store import Store
    try:
        check_name("app", args.app_id)
    except ValueError as err:
        print(f"infaas: {err}", file=sys.stderr)
        return 2
    read_apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    if read_apps and not args.analytics:
        print("infaas: --apps is for an analytics app (--analytics)", file=sys.stderr)
        return 2
    admin = credentials.admin_settings(settings)  # the local secure stack's admin, if that is where we point
    secure = bool(admin.kafka_sasl_mechanism)
    if args.print_credentials and not secure:
        print("infaas: --print-credentials needs a secure stack (`infaas infra up --secure`, or SASL settings)",
              file=sys.stderr)
        return 2
    with Store(admin) as store:  # a StoreError or BusError is reported by the CLI (InfaasError)
        unknown = [a for a in read_apps if store.get_app(a) is None]
        if unknown:
            print(f"infaas: no app {', '.join(unknown)}: create it first, or leave it out of --apps", file=sys.stderr)
            return 2
        description = args.description or (f"analytics: reads load, scaling and the results of "
                                            f"{', '.join(read_apps) or 'no app'}" if args.analytics else "")
        store.put_app(args.app_id, description)
    if secure:
        _secure_app(admin, args.app_id, args.print_credentials, read_apps if args.analytics else None)
    print(f"infaas: app {args.app_id} created", file=sys.stderr if args.print_credentials else sys.stdout)
    return 0


def _secure_app(admin, app_id: str, print_credentials: bool, analytics_of: list[str] | None = None) -> None:
    """The app's principal, ACLs and results topic (an analytics app: its read ACLs and output topic);
    a new password only when it is to be printed."""
    import secrets

    from .. import bus
    from .infra import credential_exports
    principal = bus.app_principal(app_id)
    if analytics_of is None:
        created = bus.provision_app(admin, app_id)
        note = f"infaas: principal User:{principal}: write {admin.topic('queries')}, read {admin.results_topic(app_id)}"
    else:
        created = bus.provision_analytics(admin, app_id, analytics_of)
        group, output = bus.analytics_names(admin, app_id)
        readable = [admin.topic("load"), admin.topic("scaling"), *map(admin.results_topic, analytics_of)]
        note = (f"infaas: principal User:{principal}: read {', '.join(readable)}; its own group {group} and "
                f"topics {group}-*; write and read {output}")
    print(note + (f" (created {', '.join(created)})" if created else ""), file=sys.stderr)
    if print_credentials:
        password = secrets.token_urlsafe(24)
        bus.set_scram_password(admin, principal, password)
        client = admin.replace(kafka_sasl_mechanism=bus.SCRAM_MECHANISM, kafka_sasl_username=principal,
                               kafka_sasl_password=password)
        print(credential_exports(client, cassandra=False))
    elif not bus.has_scram_user(admin, principal):
        print(f"infaas: {principal} has no password yet: run again with --print-credentials to set and show one",
              file=sys.stderr)


def cmd_app_list(args, settings) -> int:
    from .. import credentials
    from ..store import Store
    with Store(credentials.admin_settings(settings)) as store:
        apps = sorted(store.list_apps(), key=lambda r: r["app_id"])
    for row in apps:
        print(f"{row['app_id']}\t{row.get('description') or ''}")
    return 0


def cmd_dispatcher(args, settings) -> int:
    from ..streams import dispatcher
    yield_to_model_runs()  # first: the threads started below inherit it
    watch_supervisor()
    _metrics_endpoint(settings, "dispatcher")
    return dispatcher.run(settings, args.web_port)


def cmd_monitor(args, settings) -> int:
    from ..streams import monitor
    yield_to_model_runs()  # first: the threads started below inherit it
    watch_supervisor()
    _metrics_endpoint(settings, "monitor")
    return monitor.run(settings, web_port=args.web_port)


def cmd_worker(args, settings) -> int:
    from ..consumers import worker
    preload = [v for v in args.variants.split(",") if v]
    threshold = None if args.no_offline else _given(args.offline_cpu_threshold, settings.offline_cpu_threshold)
    watch_supervisor()
    _metrics_endpoint(settings, "worker", args.worker_id)
    return worker.run(settings, args.hardware, args.worker_id, preload,
                      _given(args.memory_mb, settings.worker_memory_mb),
                      _given(args.max_batch_delay_ms, settings.max_batch_delay_ms), threshold)


def _given(flag, setting):
    """A command-line flag overrides the setting for this process; unset, the setting holds."""
    return setting if flag is None else flag


def cmd_serve(args, settings) -> int:
    from ..scaler.processes import ServiceError
    from ..serve import Pipeline, ServeOptions
    options = ServeOptions(workers=args.workers, hardware=args.hardware,
                           preload=[v for v in args.preload.split(",") if v],
                           worker_memory_mb=_given(args.memory_mb, settings.worker_memory_mb),
                           max_batch_delay_ms=_given(args.max_batch_delay_ms, settings.max_batch_delay_ms),
                           scaler=not args.no_scaler, policy=_given(args.policy, settings.scaling_policy),
                           dispatchers=args.dispatchers, scaler_args=["--plan", args.plan] if args.plan else [])
    if options.scaler and options.policy == "replica-only" and not args.plan:
        print("infaas: --policy replica-only needs --plan PLAN.json (the fixed variant per task); static needs no "
              "plan (it keeps what is loaded)", file=sys.stderr)
        return 2
    pipeline = Pipeline(settings, options, echo=lambda line: print(line, flush=True))
    signals = _StopSignals(pipeline)
    try:
        took = pipeline.start()
        owner = "the scaler's" if options.scaler else "serve's"
        print(f"infaas serving: {', '.join(pipeline.services)} ready in {took:.1f} s, {options.workers} worker(s) "
              f"owned by {owner} backend (logs in {pipeline.log_dir}); Ctrl-C to stop", flush=True)
        while True:
            time.sleep(0.5)
            pipeline.check()
    except ServiceError as err:
        print(f"infaas: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("infaas: stopping ... (again to kill the services at once)", flush=True)
        return 0
    finally:
        signals.stopping()
        pipeline.stop()


class _StopSignals:
    """The first SIGINT/SIGTERM stops `serve` gracefully (KeyboardInterrupt); one that comes while
    it is stopping escalates: every service is killed at once, none is left running on its own."""

    def __init__(self, pipeline):
        import faulthandler
        import signal
        faulthandler.register(signal.SIGUSR1)  # a stuck serve tells where it is (its threads' tracebacks)
        self.pipeline = pipeline
        self.escalated = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._first)

    def _first(self, signum, _frame) -> None:
        self.stopping()  # from now on, another signal escalates
        raise KeyboardInterrupt(f"signal {signum}")

    def stopping(self) -> None:
        import signal
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._again)

    def _again(self, signum, _frame) -> None:
        if not self.escalated:
            self.escalated = True
            print(f"infaas: signal {signum} while stopping: killing the services", file=sys.stderr, flush=True)
            self.pipeline.kill()
            # Nothing is left to wait for: exit now rather than in the graceful stop's timeouts.
            os._exit(130)


def cmd_scaler(args, settings) -> int:
    from ..policies.snapshot import PolicyConfig
    from ..scaler import service
    try:
        options = dict(item.split("=", 1) for item in args.backend_option)
    except ValueError:
        print("infaas: --backend-option takes KEY=VALUE", file=sys.stderr)
        return 2
    _metrics_endpoint(settings, "scaler")
    config = PolicyConfig(min_workers=_given(args.min_workers, settings.min_workers),
                          max_workers=_given(args.max_workers, settings.max_workers),
                          unload_idle_s=_given(args.unload_idle_s, settings.unload_idle_s),
                          hardware_catalog=settings.hardware_catalog)
    memory_mb = _given(args.worker_memory_mb, settings.worker_memory_mb)
    batch_delay_ms = _given(args.worker_max_batch_delay_ms, settings.max_batch_delay_ms)
    workers = service.WorkerSpec(args.initial_workers, args.worker_hardware,
                                 [v for v in args.preload.split(",") if v],
                                 ["--memory-mb", str(memory_mb), "--max-batch-delay-ms", str(batch_delay_ms),
                                  *args.worker_arg], args.ready_timeout)
    watch_supervisor()
    return service.run(settings, _given(args.policy, settings.scaling_policy),
                       _given(args.backend, settings.scaler_backend), args.plan,
                       _given(args.interval, settings.scaler_interval_s), config, options, workers)


def cmd_events(args, settings) -> int:
    from ..store import Store, now_ms
    with Store(settings) as store:
        events = store.scaling_events(since_ms=now_ms() - int(args.since_min * 60_000), limit=args.limit)
    if args.json:
        print(json.dumps(events, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"scaling events, last {args.since_min:g} min (newest first)")
    for column in ("time", "kind", "policy", "variant / worker", "count", "reason"):
        table.add_column(column, overflow="fold")
    for e in events:
        subject = e["variant_id"] or e["worker_id"] or e["hardware"] or ""
        if e.get("target_variant_id"):
            subject += f" -> {e['target_variant_id']}"
        table.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"] / 1000)), e["kind"], e["policy"], subject,
                      f"{e['from_count']}->{e['to_count']}", e["reason"])
    Console().print(table)
    return 0


def cmd_trace(args, settings) -> int:
    from dataclasses import asdict

    from ..store import now_ms
    from ..tracing import trace_query
    from . import UserFacingError
    if args.since_min <= 0:
        raise UserFacingError(f"--since-min must be positive, not {args.since_min:g}")
    found = trace_query(settings, args.query_id, since_ms=now_ms() - int(args.since_min * 60_000))
    if args.json:
        print(json.dumps({**asdict(found), "verdict": found.verdict()}))
    else:
        print("\n".join(found.lines()))
    return 0 if found.answered else 1


def cmd_demo(args, settings) -> int:
    from pathlib import Path

    from ..demo import run_demo
    summary = run_demo(settings, args.duration, args.qps, args.workers, args.quick,
                       Path(args.trace) if args.trace else None)
    return 0 if summary["lost"] == 0 else 1


def cmd_batch_submit(args, settings) -> int:
    from ..offline import submit, wait_for
    job = submit(settings, args.app, args.input, args.output, args.task, args.model, args.min_accuracy,
                 args.max_cost, args.chunk_size)
    print(f"infaas: job {job['job_id']}: {job['rows']} rows in {job['chunks']} chunks on {job['variant_id']}")
    if not args.wait:
        return 0
    from rich.progress import Progress
    with Progress() as progress:
        bar = progress.add_task(f"job {job['job_id']}", total=job["rows"])
        status = wait_for(settings, job["job_id"], timeout_s=24 * 3600,
                          on_progress=lambda s: progress.update(bar, completed=s["rows_done"],
                                                                description=f"job {job['job_id']} {s['status']}"))
    print(f"infaas: job {job['job_id']} {status['status']}" + (f": {status['error']}" if status.get("error") else ""))
    return 0 if status["status"] == "DONE" else 1


def cmd_batch_status(args, settings) -> int:
    from ..offline import job_status
    from ..store import Store
    with Store(settings) as store:
        status = job_status(store, args.job_id)
    if status is None:
        print(f"infaas: no batch job {args.job_id!r}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, default=str))
    else:
        print(f"job {status['job_id']}: {status['status']}, {status['chunks_done']}/{status['chunks']} chunks, "
              f"{status['rows_done']}/{status['rows']} rows, variant {status['variant_id']}, output "
              f"{status['output_url']}" + (f", error: {status['error']}" if status.get("error") else ""))
    return 0


def cmd_batch_list(args, settings) -> int:
    from ..store import Store
    with Store(settings) as store:
        for job in sorted(store.list_jobs(), key=lambda j: j["submitted_at"] or 0):
            print(f"{job['job_id']}\t{job['status']}\t{job['rows']} rows\t{job['variant_id']}\t{job['output_url']}")
    return 0


def cmd_query(args, settings) -> int:
    import numpy as np

    from ..client import InfaasClient
    try:
        inputs = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as err:
        print(f"infaas: cannot read {args.input}: {err}", file=sys.stderr)
        return 2
    with InfaasClient(settings, app_id=args.app) as client:
        inputs = _as_batch(inputs, client, args)
        result = client.query(inputs, task=args.task, model=args.model, variant=args.variant,
                              min_accuracy=args.min_accuracy, latency_ms=args.latency_ms, max_cost=args.max_cost,
                              timeout_s=args.timeout)  # QueryTimeout is reported by the CLI (InfaasError)
    prediction = result.prediction
    if args.json:
        print(json.dumps({"query_id": result.query_id, "status": result.status, "error": result.error,
                          "prediction": prediction.tolist() if prediction is not None else None,
                          "variant": result.variant, "model": result.model, "accuracy": result.accuracy,
                          "latency_ms": result.latency_ms, "queue_ms": result.queue_ms,
                          "compute_ms": result.compute_ms}))
    elif result.ok:
        print(f"prediction: {prediction.tolist() if prediction is not None else '-'}\n"
              f"variant:    {result.variant} (accuracy {result.accuracy:.4f}, {result.hardware})\n"
              f"latency:    {result.latency_ms:.1f} ms (queue {result.queue_ms:.1f} ms, compute {result.compute_ms:.2f} ms)")
    else:
        print(f"{result.status}: {result.error}")
    return 0 if result.ok else 1


def _as_batch(inputs, client, args):
    """A single sample (the task's per-sample shape) becomes a batch of one."""
    from ..store import Store
    with Store(client.settings) as store:
        task = args.task
        if args.model:
            model = store.get_model(args.model)
            task = model.task if model else None
        elif args.variant:
            task = next((v.task for v in store.all_variants() if v.variant_id == args.variant), None)
        info = store.get_task(task) if task else None
    if info is not None and tuple(inputs.shape) == tuple(info.input_shape):
        return inputs[None, ...]
    return inputs


def _metrics_endpoint(settings, service: str, name: str | None = None) -> None:
    """/metrics, /healthz and /readyz of this service, advertised for `infaas status`."""
    from ..metrics import serve_endpoint
    serve_endpoint(settings, service, name)
