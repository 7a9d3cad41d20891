"""The local stack: a single-node Kafka (KRaft) and a single-node Cassandra, run from the
Maven Central jars that `infra/jvm/pom.xml` resolves. For development, tests and the demo;
in production, point the settings at existing clusters instead.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA_DIR = REPO_ROOT / "infra"
POM = INFRA_DIR / "jvm" / "pom.xml"
SERVICES = ("kafka", "cassandra")


class LaunchError(RuntimeError):
    """The stack could not be started or stopped; the message names the cause and the log."""


# --- JVM artifacts ---------------------------------------------------------------------------------
def _require_infra() -> None:
    if not POM.is_file():
        raise LaunchError(f"{POM} not found: run infaas from a source checkout installed with `pip install -e .`")


def jar_dir(settings: Settings, profile: str) -> Path:
    # Keyed by the pom's content, so a version change in the pom fetches a fresh set.
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12] if POM.is_file() else "none"
    return Path(settings.cache_dir).expanduser() / "jvm" / f"{profile}-{digest}"


def jars_present(settings: Settings, profile: str) -> bool:
    return (jar_dir(settings, profile) / ".complete").is_file()


def fetch_jars(settings: Settings, profiles: tuple[str, ...] = ("kafka", "cassandra"),
               say: Callable[[str], None] = print) -> dict[str, float]:
    """Resolve each profile's jars from Maven Central into the cache, once. Returns seconds spent."""
    _require_infra()
    spent: dict[str, float] = {}
    for profile in profiles:
        target = jar_dir(settings, profile)
        if jars_present(settings, profile):
            continue
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LaunchError("Maven (`mvn`) is not on PATH; it is needed once to fetch the Kafka and Cassandra "
                              "jars from Maven Central (apt install maven)")
        say(f"fetching {profile} jars from Maven Central into {target} ...")
        started = time.monotonic()
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        proc = subprocess.run([mvn, "-B", "-q", "-f", str(POM), "-P", profile, "dependency:copy-dependencies",
                               f"-DoutputDirectory={partial}"], capture_output=True, text=True,
                              env=_java_env(settings))
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise LaunchError(f"mvn could not resolve the {profile} jars (exit {proc.returncode}):\n{tail}")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        (target / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        spent[profile] = time.monotonic() - started
    return spent


def _java_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    if settings.java_home:
        env["JAVA_HOME"] = settings.java_home
    return env


def java_binary(settings: Settings) -> str:
    if settings.java_home:
        java = Path(settings.java_home) / "bin" / "java"
        if not java.is_file():
            raise LaunchError(f"no java at {java} (setting java_home)")
        return str(java)
    java = shutil.which("java")
    if java is None:
        raise LaunchError("`java` is not on PATH: Kafka 4 and Cassandra 5 need a Java 17 runtime "
                          "(apt install openjdk-17-jre-headless, or set INFAAS_JAVA_HOME)")
    return java


def jar_version(settings: Settings, profile: str, prefix: str) -> str:
    for jar in sorted(jar_dir(settings, profile).glob(f"{prefix}-*.jar")):
        rest = jar.name[len(prefix) + 1:-4]
        if rest[:1].isdigit():
            return rest
    return "?"


# --- process bookkeeping ---------------------------------------------------------------------------
def service_dir(settings: Settings, name: str) -> Path:
    return settings.state_dir / name


def log_file(settings: Settings, name: str) -> Path:
    return service_dir(settings, name) / "logs" / ("server.log" if name == "kafka" else "system.log")


def stdout_file(settings: Settings, name: str) -> Path:
    return service_dir(settings, name) / "logs" / "stdout.log"


def _pidfile(settings: Settings, name: str) -> Path:
    return service_dir(settings, name) / "pid"


def _marker(settings: Settings, name: str) -> list[str]:
    # Identify our own JVMs, so a recycled pid is never mistaken for one of them.
    return [f"-Dinfaas.service={name}", f"-Dinfaas.home={settings.state_dir}"]


def running_pid(settings: Settings, name: str) -> int | None:
    try:
        pid = int(_pidfile(settings, name).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    markers = [m.encode() for m in _marker(settings, name)]
    if all(m in cmdline for m in markers) and not _is_zombie(pid):
        return pid
    return None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def service_ports(settings: Settings, name: str) -> dict[str, int]:
    if name == "kafka":
        return {"client": settings.kafka_port, "controller": settings.kafka_controller_port}
    return {"cql": settings.cassandra_port, "storage": settings.cassandra_storage_port}


def _render(template: Path, target: Path, values: dict[str, str]) -> None:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


# --- Kafka -----------------------------------------------------------------------------------------
def _kafka_command(settings: Settings, java: str) -> list[str]:
    home = service_dir(settings, "kafka")
    conf = home / "server.properties"
    _render(INFRA_DIR / "kafka" / "server.properties", conf,
            {"PORT": str(settings.kafka_port), "CONTROLLER_PORT": str(settings.kafka_controller_port),
             "DATA_DIR": str(home / "data")})
    classpath = str(jar_dir(settings, "kafka") / "*")
    jvm = [java, f"-Xms{settings.kafka_heap_mb}m", f"-Xmx{settings.kafka_heap_mb}m", "-XX:+UseG1GC",
           "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={INFRA_DIR / 'kafka' / 'log4j2.yaml'}",
           f"-Dkafka.logs.dir={home / 'logs'}", *_marker(settings, "kafka"), "-cp", classpath]
    if not (home / "data" / "meta.properties").is_file():
        _format_kafka_storage(jvm, conf, home)
    return [*jvm, "kafka.Kafka", str(conf)]


def _format_kafka_storage(jvm: list[str], conf: Path, home: Path) -> None:
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    proc = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(conf),
                           "--standalone"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaunchError(f"formatting Kafka storage in {home / 'data'} failed:\n{proc.stdout}{proc.stderr}")


def _kafka_ready(settings: Settings) -> str | None:
    from . import bus
    if not port_in_use(settings.kafka_port):
        return None
    try:
        return f"brokers {bus.broker_ids(settings, timeout=1.0)}"
    except bus.BusError:
        return None


# --- Cassandra -------------------------------------------------------------------------------------
def _cassandra_command(settings: Settings, java: str, secure: bool = False) -> list[str]:
    home = service_dir(settings, "cassandra")
    conf = home / "conf" / "cassandra.yaml"
    _render(INFRA_DIR / "cassandra" / "cassandra.yaml", conf,
            {"PORT": str(settings.cassandra_port), "STORAGE_PORT": str(settings.cassandra_storage_port),
             "DATA_DIR": str(home),
             "AUTHENTICATOR": "PasswordAuthenticator" if secure else "AllowAllAuthenticator",
             "AUTHORIZER": "CassandraAuthorizer" if secure else "AllowAllAuthorizer"})
    options = [line.strip() for line in (INFRA_DIR / "cassandra" / "jvm17-server.options").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    jvm_options = []
    for option in options:  # "--add-exports X" is one option spelled as two arguments
        jvm_options += option.split(" ", 1) if option.startswith("--") else [option]
    return [java, f"-Xms{settings.cassandra_heap_mb}m", f"-Xmx{settings.cassandra_heap_mb}m", *jvm_options,
            f"-Dcassandra.config=file://{conf}", f"-Dcassandra.logdir={home / 'logs'}",
            f"-Dcassandra.storagedir={home}", "-Dcassandra-foreground=yes",
            f"-Dlogback.configurationFile=file://{INFRA_DIR / 'cassandra' / 'logback.xml'}",
            f"-XX:HeapDumpPath={home / 'logs'}", *_marker(settings, "cassandra"),
            "-cp", str(jar_dir(settings, "cassandra") / "*"), "org.apache.cassandra.service.CassandraDaemon"]


def _cassandra_ready(settings: Settings) -> str | None:
    from .store import Store, StoreError
    if not port_in_use(settings.cassandra_port):
        return None
    try:
        with Store(settings, connect_timeout=2.0) as store:
            return f"release {store.release_version()}"
    except (StoreError, Exception):  # the driver raises several types while the node starts
        return None


# --- the stack -------------------------------------------------------------------------------------
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


def _start(settings: Settings, name: str, java: str, secure: bool) -> subprocess.Popen:
    home = service_dir(settings, name)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    command = _kafka_command(settings, java) if name == "kafka" else _cassandra_command(settings, java, secure)
    out = stdout_file(settings, name).open("ab")
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=home, start_new_session=True)  # survives the CLI, not killed by Ctrl-C
    out.close()
    _pidfile(settings, name).write_text(str(proc.pid))
    return proc


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _failure(settings: Settings, name: str, why: str) -> str:
    logs = [p for p in (log_file(settings, name), stdout_file(settings, name)) if p.is_file()]
    detail = "\n".join(f"--- {p} (last lines) ---\n{_tail(p)}" for p in logs)
    return f"{name} failed to start: {why}\nlog: {log_file(settings, name)}\n{detail}"


def _wait_ready(settings: Settings, name: str, proc: subprocess.Popen, deadline: float) -> str:
    check = _kafka_ready if name == "kafka" else _cassandra_ready
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(_failure(settings, name, f"the JVM exited with code {proc.returncode}"))
        answer = check(settings)
        if answer:
            return answer
        time.sleep(0.5)
    raise LaunchError(_failure(settings, name, f"not ready after {settings.start_timeout_s:.0f} s"))


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
    running = [name for name in services if running_pid(settings, name)]
    to_start = [name for name in services if name not in running]
    fetch_seconds: dict[str, float] = {}
    seconds: dict[str, float] = {}
    if to_start:
        _preflight(settings, to_start)
        java = java_binary(settings)
        fetch_seconds = fetch_jars(settings, tuple(to_start), say)
        procs: dict[str, subprocess.Popen] = {}
        try:
            for name in to_start:
                say(f"starting {name} (log: {log_file(settings, name)})")
                procs[name] = _start(settings, name, java, secure)
            _wait_all(settings, procs, seconds, say)
            topics = _initialize(settings, services)
        except BaseException:
            for name in procs:  # nothing is left half-running
                _stop(settings, name, timeout=10)
            raise
    else:
        topics = _initialize(settings, services)
    return UpReport(to_start, running, seconds, fetch_seconds, topics, time.monotonic() - began)


def _wait_all(settings: Settings, procs: dict[str, subprocess.Popen], seconds: dict[str, float],
              say: Callable[[str], None]) -> None:
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


def _initialize(settings: Settings, services: tuple[str, ...]) -> list[str]:
    from . import bus
    from .store import Store
    created: list[str] = []
    if "cassandra" in services:
        with Store(settings) as store:
            store.apply_schema()
    if "kafka" in services:
        created = bus.ensure_core_topics(settings)
    return created


def _stop(settings: Settings, name: str, timeout: float) -> str:
    pid = running_pid(settings, name)
    if pid is None:
        _pidfile(settings, name).unlink(missing_ok=True)
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(settings, name):
        _reap(pid)
        time.sleep(0.2)
    how = "stopped"
    if running_pid(settings, name):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        how = f"killed after {timeout:.0f} s"
        while running_pid(settings, name):
            _reap(pid)
            time.sleep(0.1)
    _pidfile(settings, name).unlink(missing_ok=True)
    return how


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # when we are the parent (tests), collect the exit status


def down(settings: Settings, services: tuple[str, ...] = SERVICES) -> dict[str, str]:
    return {name: _stop(settings, name, settings.stop_timeout_s) for name in services}


def status(settings: Settings) -> list[ServiceStatus]:
    result = []
    for name in SERVICES:
        pid = running_pid(settings, name)
        port = settings.kafka_port if name == "kafka" else settings.cassandra_port
        if name == "kafka":
            version = jar_version(settings, "kafka", "kafka_2.13")
        else:
            answer = _cassandra_ready(settings) if pid else None
            version = answer.split()[-1] if answer else jar_version(settings, "cassandra", "cassandra-all")
        up_now = bool(pid) and port_in_use(port)
        result.append(ServiceStatus(name, up_now, pid, port, version, str(log_file(settings, name))))
    return result


def is_up(settings: Settings) -> bool:
    return all(s.up for s in status(settings))


def tail_logs(settings: Settings, name: str, lines: int = 50) -> str:
    return _tail(log_file(settings, name), lines)
