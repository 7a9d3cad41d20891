"""The ways into and around infaas besides Kafka: `infaas gateway` (KServe V2 over HTTP)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("gateway", help="the Open Inference Protocol (KServe V2) over HTTP, in front of the pipeline")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (printed in the readiness line)")
    p.add_argument("--app", default="demo", help="the application the gateway's queries are sent as")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a result (then 504)")
    p.set_defaults(handler=cmd_gateway)


def cmd_gateway(args, settings) -> int:
    from ..catalog import check_name
    from ..gateway import run
    check_name("app", args.app)
    return run(settings, args.host, args.port, args.app, args.timeout)
