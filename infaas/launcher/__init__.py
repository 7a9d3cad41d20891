"""The local stack: a single-node Kafka (KRaft) and a single-node Cassandra, run from the
Maven Central jars that `infra/jvm/pom.xml` resolves. For development, tests and the demo;
in production, point the settings at existing clusters instead.

`jars` fetches the artifacts, `processes` keeps track of the JVMs, `kafka` and `cassandra` render
each one's configuration and tell when it answers; this module starts, stops and reports the stack.
Credentials of the secure stack live in `infaas.credentials`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import credentials
from ..settings import Settings
from . import cassandra, kafka
from .jars import INFRA_DIR, LaunchError, fetch_jars, jar_dir, jar_version, java_binary
from .processes import (
    failure,
    log_file,
    port_in_use,
    running_pid,
    service_dir,
    service_ports,
    start_process,
    stop_process,
    tail,
)

__all__ = ["INFRA_DIR", "SERVICES", "LaunchError", "ServiceStatus", "UpReport", "down",
           "fetch_jars", "initialize", "is_up", "jar_dir", "log_file", "port_in_use", "running_pid", "service_dir",
           "stack_mode", "status", "tail_logs", "up"]

SERVICES = ("kafka", "cassandra")


# --- the state directory's mode ----------------------------------------------------------------------
def stack_mode(settings: Settings) -> str | None:
    """The state directory's mode, "secure" or "plain", once it holds data; None while it holds none."""
    has_data = ((service_dir(settings, "kafka") / "data" / "meta.properties").is_file()
                or (service_dir(settings, "cassandra") / "data").is_dir())
    if not has_data:
        return None
    try:
        return credentials.mode_file(settings).read_text().strip()
    except OSError:
        return "plain"  # data from before modes were recorded


def _claim_mode(settings: Settings, secure: bool) -> None:
    """Refuse to start a state directory in the other mode: plain data started secure would lack its
    accounts and ACLs, secure data started plain would be open to anyone."""
    wanted, mode = ("secure" if secure else "plain"), stack_mode(settings)
    if mode is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        if secure and not credentials.secrets_file(settings).is_file():
            credentials.new_secrets(settings)
        credentials.mode_file(settings).write_text(wanted + "\n")
    elif mode != wanted:
        again = "infaas infra up --secure" if mode == "secure" else "infaas infra up"
        raise LaunchError(f"the stack in {settings.state_dir} was set up in {mode} mode and is not started in "
                          f"{wanted} mode; run `{again}`, or use another state directory (INFAAS_HOME) for a "
                          f"{wanted} stack")
    if secure and not credentials.load_secrets(settings):
        raise LaunchError(f"{credentials.secrets_file(settings)} is missing: the secure stack in "
                          f"{settings.state_dir} cannot be started without the passwords it was set up with")


# --- the stack -----------------------------------------------------------------------------------------
@dataclass
class ServiceStatus:
    service: str
    up: bool
    pid: int | None
    port: int
    version: str
    log: str


@dataclass
class UpReport:
    started: list[str]
    already_running: list[str]
    seconds: dict[str, float]
    fetch_seconds: dict[str, float]
    topics_created: list[str]
    total_seconds: float


_SERVICE_MODULES = {"kafka": kafka, "cassandra": cassandra}


def _start(settings: Settings, name: str, java: str, secure: bool):
    (service_dir(settings, name) / "logs").mkdir(parents=True, exist_ok=True)
    return start_process(settings, name, _SERVICE_MODULES[name].command(settings, java, secure))


def _wait_ready(settings: Settings, name: str, proc, deadline: float) -> str:
    check = _SERVICE_MODULES[name].ready
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(failure(settings, name, f"the JVM exited with code {proc.returncode}"))
        answer = check(settings)
        if answer:
            return answer
        time.sleep(0.5)
    raise LaunchError(failure(settings, name, f"not ready after {settings.start_timeout_s:.0f} s"))


def _preflight(settings: Settings, names: list[str]) -> None:
    for name in names:
        for role, port in service_ports(settings, name).items():
            if port_in_use(port):
                setting = {"client": "kafka_port", "controller": "kafka_controller_port",
                           "cql": "cassandra_port", "storage": "cassandra_storage_port"}[role]
                raise LaunchError(f"port {port} ({name} {role}) is already in use by another process, not by an "
                                  f"infaas-started {name} of {settings.state_dir}; stop that process or choose "
                                  f"another port (INFAAS_{setting.upper()})")


def up(settings: Settings, say: Callable[[str], None] = print, secure: bool = False,
       services: tuple[str, ...] = SERVICES) -> UpReport:
    """Start what is not running, wait until it answers, apply the schema, create the topics."""
    began = time.monotonic()
    _claim_mode(settings, secure)
    running = [name for name in services if running_pid(settings, name)]
    to_start = [name for name in services if name not in running]
    fetch_seconds: dict[str, float] = {}
    seconds: dict[str, float] = {}
    if to_start:
        _preflight(settings, to_start)
        java = java_binary(settings)
        fetch_seconds = fetch_jars(settings, tuple(to_start), say)
        procs = {}
        try:
            for name in to_start:
                say(f"starting {name} (log: {log_file(settings, name)})")
                procs[name] = _start(settings, name, java, secure)
            _wait_all(settings, procs, seconds, say)
            topics = initialize(settings, services)
        except BaseException:
            for name in procs:  # nothing is left half-running
                stop_process(settings, name, timeout=10)
            raise
    else:
        topics = initialize(settings, services)
    return UpReport(to_start, running, seconds, fetch_seconds, topics, time.monotonic() - began)


def _wait_all(settings: Settings, procs: dict, seconds: dict[str, float], say: Callable[[str], None]) -> None:
    started = time.monotonic()
    deadline = started + settings.start_timeout_s
    errors: list[BaseException] = []

    def wait(name: str) -> None:
        try:
            answer = _wait_ready(settings, name, procs[name], deadline)
            seconds[name] = time.monotonic() - started
            say(f"{name} is up after {seconds[name]:.1f} s ({answer})")
        except BaseException as err:  # collected and re-raised in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=wait, args=(name,), daemon=True) for name in procs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def initialize(settings: Settings, services: tuple[str, ...] = SERVICES) -> list[str]:
    """Apply the schema and create the core topics; on the local secure stack also (idempotently) the
    services' Cassandra role, their Kafka principal and its ACLs. Returns the topics created."""
    from .. import bus
    from ..store import Store
    secure = bool(credentials.local_secrets(settings))
    admin = credentials.admin_settings(settings)
    created: list[str] = []
    if "cassandra" in services:
        if secure:
            cassandra.secure(settings)
        with Store(admin) as store:
            store.apply_schema()
    if "kafka" in services:
        if secure:  # the services' principal: its password and ACLs (both idempotent)
            password = credentials.load_secrets(settings)["kafka_service_password"]
            bus.set_scram_password(admin, bus.SERVICE_PRINCIPAL, password)
            bus.create_acls(admin, bus.service_acls(settings))
        created = bus.ensure_core_topics(admin)
    return created


def down(settings: Settings, services: tuple[str, ...] = SERVICES) -> dict[str, str]:
    return {name: stop_process(settings, name, settings.stop_timeout_s) for name in services}


def status(settings: Settings) -> list[ServiceStatus]:
    result = []
    for name in SERVICES:
        pid = running_pid(settings, name)
        port = settings.kafka_port if name == "kafka" else settings.cassandra_port
        if name == "kafka":
            version = jar_version(settings, "kafka", "kafka_2.13")
        else:
            answer = cassandra.ready(settings) if pid else None
            version = answer.split()[-1] if answer else jar_version(settings, "cassandra", "cassandra-all")
        up_now = bool(pid) and port_in_use(port)
        result.append(ServiceStatus(name, up_now, pid, port, version, str(log_file(settings, name))))
    return result


def is_up(settings: Settings) -> bool:
    return all(s.up for s in status(settings))


def tail_logs(settings: Settings, name: str, lines: int = 50) -> str:
    return tail(log_file(settings, name), lines)
