"""`infaas` command line: one program, one subcommand per service or tool.

Each module in this package adds its subcommands with `register(subparsers)`; a handler takes
`(args, settings)` and returns an exit code. Heavy imports happen inside handlers, so
`infaas --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from ..errors import InfaasError
from ..settings import SettingsError, load_settings

COMMAND_MODULES = ("infra", "serving", "models", "evaluation", "bench", "ecosystem")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infaas", description="Automated, model-less inference serving on Kafka.")
    parser.add_argument("--config", help="settings file (TOML); default ./infaas.toml or $INFAAS_CONFIG")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("cassandra", "aiokafka", "faust", "mode", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # librdkafka reports transient broker states (reconnects, coordinator moves) it recovers from itself.
    logging.getLogger("infaas.librdkafka").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args.config)
    except SettingsError as err:
        print(f"infaas: bad settings: {err}", file=sys.stderr)
        return 2
    setup_logging("DEBUG" if args.verbose else settings.log_level)
    # SIGTERM (kill, timeout, a service manager) stops a command as Ctrl-C does, so the processes it
    # started are stopped by its `finally` blocks instead of being orphaned. Long-running services
    # (Faust apps, workers, the scaler) install their own handler for a graceful drain.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.handler(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except InfaasError as err:  # the one place that turns a known error into a message and an exit code
        print(f"infaas: {err}" + (f"\n  hint: {err.hint}" if err.hint else ""), file=sys.stderr)
        return 1


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class UserFacingError(InfaasError):
    """An error whose message is the whole story for the user (no traceback)."""


def user_errors(*types: type[BaseException]):
    """Decorator: turn the given exception types into a clean one-line error."""
    def wrap(handler):
        def run(args, settings):
            try:
                return handler(args, settings)
            except types as err:
                raise UserFacingError(str(err)) from err
        run.__name__ = handler.__name__
        return run
    return wrap
