"""The ways into and around infaas besides Kafka: `infaas gateway` (KServe V2 over HTTP), `infaas status`."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("gateway", help="the Open Inference Protocol (KServe V2) over HTTP, in front of the pipeline")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (printed in the readiness line)")
    p.add_argument("--app", default="demo", help="the application the gateway's queries are sent as")
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
