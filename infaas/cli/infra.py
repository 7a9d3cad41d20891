"""`infaas infra ...`, `infaas init`, `infaas schemas`: the local stack and the shared schemas."""

from __future__ import annotations

import json
import subprocess
import sys
import time


def register(sub) -> None:
    infra = sub.add_parser("infra", help="the local Kafka + Cassandra stack")
    isub = infra.add_subparsers(dest="infra_command", metavar="ACTION", required=True)
    p = isub.add_parser("up", help="start Kafka and Cassandra (if not running), apply schema, create topics")
    p.add_argument("--secure", action="store_true",
                   help="Kafka with SASL/SCRAM and ACLs, Cassandra with password authentication (see README)")
    p.set_defaults(handler=cmd_up)
    isub.add_parser("down", help="stop the services started by `up`").set_defaults(handler=cmd_down)
    p = isub.add_parser("status", help="each service: up/down, pid, port, version")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="print nothing; exit 0 when both are up, 1 otherwise")
    p.set_defaults(handler=cmd_status)
    p = isub.add_parser("logs", help="the end of a service's log")
    p.add_argument("service", nargs="?", choices=("kafka", "cassandra"))
    p.add_argument("-n", "--lines", type=int, default=40)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(handler=cmd_logs)
    isub.add_parser("fetch", help="resolve the JVM jars from Maven Central (once)").set_defaults(handler=cmd_fetch)
    p = isub.add_parser("env", help="print the secure local stack's service credentials as shell exports")
    p.add_argument("--admin", action="store_true", help="the admin's (Kafka super user) instead of the services'")
    p.set_defaults(handler=cmd_env)
    p = isub.add_parser("run", help="run a command with the stack up; stop the stack after if this started it")
    p.add_argument("cmd", nargs="+", help="the command (put it after --)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("init", help="apply the CQL schema and create the core topics on the configured clusters")
    p.set_defaults(handler=cmd_init)
    p = sub.add_parser("schemas", help="the Avro schemas and their fingerprints")
    p.add_argument("--freeze", action="store_true",
                   help="record the current versions in the schema history (do this before shipping a change)")
    p.set_defaults(handler=cmd_schemas)


def cmd_up(args, settings) -> int:
    return _up(settings, secure=args.secure)


def _up(settings, secure: bool = False) -> int:
    from .. import credentials, launcher
    report = launcher.up(settings, say=lambda msg: print(f"infaas: {msg}", flush=True), secure=secure)
    for name in report.already_running:
        print(f"infaas: {name} already running (pid {launcher.running_pid(settings, name)})")
    if report.fetch_seconds:
        print("infaas: jars fetched in " + ", ".join(f"{k} {v:.1f} s" for k, v in report.fetch_seconds.items()))
    if report.topics_created:
        print(f"infaas: created topics {', '.join(report.topics_created)}")
    started = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()) or "nothing new"
    print(f"infaas: stack ready in {report.total_seconds:.1f} s (started: {started}); state in {settings.state_dir}")
    if secure:  # where the credentials are, never the credentials themselves
        print(f"infaas: secure mode: generated passwords in {credentials.secrets_file(settings)} (mode 0600)\n"
              'infaas: for the services:  eval "$(infaas infra env)"\n'
              'infaas: for an app:        eval "$(infaas app create NAME --print-credentials)"')
    return 0


def cmd_env(args, settings) -> int:
    """The one place that prints the stack's own passwords, on request, as shell exports."""
    from .. import credentials
    chosen = (credentials.admin_settings if args.admin else credentials.service_settings)(settings)
    if not chosen.kafka_sasl_username:
        print(f"infaas: no secure local stack in {settings.state_dir} (start one with `infaas infra up --secure`)",
              file=sys.stderr)
        return 1
    print(credential_exports(chosen, cassandra=True))
    return 0


def credential_exports(settings, cassandra: bool) -> str:
    import shlex
    names = ["kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"]
    if cassandra:
        names += ["cassandra_username", "cassandra_password"]
    return "\n".join(f"export INFAAS_{name.upper()}={shlex.quote(str(getattr(settings, name)))}" for name in names)


def cmd_down(args, settings) -> int:
    from .. import launcher
    for name, how in launcher.down(settings).items():
        print(f"infaas: {name}: {how}")
    return 0


def cmd_status(args, settings) -> int:
    from .. import launcher
    statuses = launcher.status(settings)
    all_up = all(s.up for s in statuses)
    if args.check:
        return 0 if all_up else 1
    if args.json:
        print(json.dumps([s.__dict__ for s in statuses], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"infaas stack ({settings.state_dir})")
    for column in ("service", "state", "pid", "port", "version", "log"):
        table.add_column(column)
    for s in statuses:
        table.add_row(s.service, "[green]up[/]" if s.up else "[red]down[/]", str(s.pid or "-"), str(s.port),
                      s.version, s.log)
    Console().print(table)
    return 0


def cmd_logs(args, settings) -> int:
    from .. import launcher
    names = [args.service] if args.service else list(launcher.SERVICES)
    if args.follow:
        paths = [str(launcher.log_file(settings, n)) for n in names]
        return subprocess.call(["tail", "-n", str(args.lines), "-F", *paths])
    for name in names:
        print(f"==> {launcher.log_file(settings, name)} <==")
        print(launcher.tail_logs(settings, name, args.lines))
    return 0


def cmd_fetch(args, settings) -> int:
    from .. import launcher
    spent = launcher.fetch_jars(settings, ("kafka", "cassandra"), say=lambda m: print(f"infaas: {m}"))
    for profile in ("kafka", "cassandra"):
        took = f" in {spent[profile]:.1f} s" if profile in spent else " (cached)"
        print(f"infaas: {profile} jars at {launcher.jar_dir(settings, profile)}{took}")
    return 0


def cmd_run(args, settings) -> int:
    """Start the stack if needed, run the command, and leave the machine as it was found."""
    from .. import launcher
    was_up = launcher.is_up(settings)
    if not was_up and _up(settings, secure=launcher.stack_mode(settings) == "secure") != 0:
        return 1
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    started = time.monotonic()
    try:
        code = subprocess.call(cmd)
    finally:
        if not was_up:
            cmd_down(args, settings)
    print(f"infaas: `{' '.join(cmd)}` exited with {code} after {time.monotonic() - started:.0f} s")
    return code


def cmd_init(args, settings) -> int:
    from .. import launcher
    from ..store import schema_statements
    created = launcher.initialize(settings)
    count = len(schema_statements(settings))
    print(f"infaas: applied {count} CQL statements to keyspace {settings.keyspace}; "
          f"created topics: {', '.join(created) or 'none (all existed)'}")
    return 0


def cmd_schemas(args, settings) -> int:
    from ..schemas.codec import HISTORY_DIR, Codec
    codec = Codec()
    for name, version in sorted(codec.current.items()):
        history = HISTORY_DIR / name / f"{version.fingerprint:016x}.avsc"
        if args.freeze and not history.exists():
            history.parent.mkdir(parents=True, exist_ok=True)
            history.write_text(json.dumps(version.resolved, indent=1) + "\n")
        print(f"{name:14} {version.fingerprint:016x}  {'shipped' if history.exists() else 'NOT IN HISTORY'}")
    return 0
