"""The ways into and around infaas besides Kafka: `infaas gateway` (KServe V2 over HTTP), `infaas status`."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("gateway", help="the Open Inference Protocol (KServe V2) over HTTP, in front of the pipeline")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (printed in the readiness line)")
    p.add_argument("--app", default="demo", help="the application the gateway's queries are sent as (plain stack; "
                                                 "on a secure stack each request authenticates as its app, HTTP basic)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a result (then 504)")
    p.set_defaults(handler=cmd_gateway)
    register_status(sub)


def cmd_gateway(args, settings) -> int:
    from ..catalog import check_name
    from ..gateway import run
    check_name("app", args.app)
    return run(settings, args.host, args.port, args.app, args.timeout)


def register_status(sub) -> None:
    p = sub.add_parser("status", help="the running services (name, pid, health, readiness, metrics URL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)


def cmd_status(args, settings) -> int:
    import json

    from ..status import services
    rows = services(settings)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"infaas: no services running (prefix {settings.topic_prefix})")
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"infaas services (prefix {settings.topic_prefix})")
    for column in ("name", "service", "pid", "health", "ready", "metrics"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["name"], row["service"], str(row["pid"]), row["health"], row["ready"], row["metrics_url"])
    Console().print(table)
    return 0


def add_models_delete(models_parser) -> None:
    actions = models_parser.add_subparsers(dest="models_command", metavar="ACTION")
    p = actions.add_parser("delete", help="delete a model (or an older version): routing stops, its variants are "
                                          "drained and unloaded, its rows, objects and topics removed")
    p.add_argument("model")
    p.add_argument("--version", type=int, help="only this version (not the newest, which serves)")
    p.set_defaults(handler=cmd_models_delete)


def cmd_models_delete(args, settings) -> int:
    from ..lifecycle import delete_model
    done = delete_model(settings, args.model, args.version, say=lambda msg: print(f"infaas: {msg}", flush=True))
    print(f"infaas: deleted {done.model} version(s) {', '.join(map(str, done.versions))}: {len(done.variants)} "
          f"variants, unloaded from {sum(map(len, done.unloaded_from.values()))} replica set(s), "
          f"{done.objects_removed} objects, {len(done.topics_deleted)} topics"
          + (", and its task (no model left)" if done.task_removed else ""))
    return 0


def add_app_delete(app_actions) -> None:
    p = app_actions.add_parser("delete", help="delete an application that owns no model (its results topics, and "
                                              "on a secure stack its ACLs)")
    p.add_argument("app_id")
    p.set_defaults(handler=cmd_app_delete)


def cmd_app_delete(args, settings) -> int:
    from ..credentials import admin_settings
    from ..lifecycle import delete_app
    topics = delete_app(admin_settings(settings), args.app_id)  # errors: InfaasError, reported by the CLI
    print(f"infaas: app {args.app_id} deleted" + (f" (topics {', '.join(topics)})" if topics else ""))
    return 0
