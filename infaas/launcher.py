"""The local stack: a single-node Kafka (KRaft) and a single-node Cassandra, run from the
Maven Central jars that `infra/jvm/pom.xml` resolves. For development, tests and the demo;
in production, point the settings at existing clusters instead.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
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


def _render(templates: list[Path], target: Path, values: dict[str, str]) -> None:
    text = "\n".join(template.read_text() for template in templates)
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_private(target, text)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (rendered configs may hold passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # also when the file existed with a wider mode
        handle.write(text)


# --- secure mode: the state directory's mode and its generated secrets ------------------------------
ADMIN_USER = "admin"  # Kafka super user: the broker itself, the launcher, `infaas app create`
CASSANDRA_ROLE = "infaas"  # the role the services log in with
CASSANDRA_SUPERUSER = "cassandra"  # Cassandra's default superuser; its password is replaced at once
SECRET_NAMES = ("kafka_admin_password", "kafka_service_password", "cassandra_superuser_password",
                "cassandra_password")


def mode_file(settings: Settings) -> Path:
    return settings.state_dir / "mode"


def secrets_file(settings: Settings) -> Path:
    return settings.state_dir / "secrets.toml"


def stack_mode(settings: Settings) -> str | None:
    """The state directory's mode, "secure" or "plain", once it holds data; None while it holds none."""
    has_data = ((service_dir(settings, "kafka") / "data" / "meta.properties").is_file()
                or (service_dir(settings, "cassandra") / "data").is_dir())
    if not has_data:
        return None
    try:
        return mode_file(settings).read_text().strip()
    except OSError:
        return "plain"  # data from before modes were recorded


def _claim_mode(settings: Settings, secure: bool) -> None:
    """Refuse to start a state directory in the other mode: plain data started secure would lack its
    accounts and ACLs, secure data started plain would be open to anyone."""
    wanted, mode = ("secure" if secure else "plain"), stack_mode(settings)
    if mode is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        if secure and not secrets_file(settings).is_file():
            _new_secrets(settings)
        mode_file(settings).write_text(wanted + "\n")
    elif mode != wanted:
        again = "infaas infra up --secure" if mode == "secure" else "infaas infra up"
        raise LaunchError(f"the stack in {settings.state_dir} was set up in {mode} mode and is not started in "
                          f"{wanted} mode; run `{again}`, or use another state directory (INFAAS_HOME) for a "
                          f"{wanted} stack")
    if secure and not load_secrets(settings):
        raise LaunchError(f"{secrets_file(settings)} is missing: the secure stack in {settings.state_dir} cannot be "
                          "started without the passwords it was set up with")


def _new_secrets(settings: Settings) -> None:
    lines = [f'{name} = "{secrets.token_urlsafe(24)}"\n' for name in SECRET_NAMES]
    _write_private(secrets_file(settings), "# Generated by `infaas infra up --secure`; keep private.\n" + "".join(lines))


def load_secrets(settings: Settings) -> dict[str, str]:
    """The local secure stack's generated passwords; empty when there is none."""
    try:
        with secrets_file(settings).open("rb") as handle:
            found = tomllib.load(handle)
    except OSError:
        return {}
    except tomllib.TOMLDecodeError as err:
        raise LaunchError(f"{secrets_file(settings)} is not valid TOML: {err}") from None
    missing = [name for name in SECRET_NAMES if not found.get(name)]
    if missing:
        raise LaunchError(f"{secrets_file(settings)} lacks {', '.join(missing)}")
    return found


def _targets_local_stack(settings: Settings) -> bool:
    # Local passwords go only to the local stack, never to clusters the settings point elsewhere.
    hosts = {"127.0.0.1", "localhost"}
    return (set(settings.kafka_bootstrap.split(",")) <= {f"{host}:{settings.kafka_port}" for host in hosts}
            and set(settings.cassandra_hosts) <= hosts)


def _with_credentials(settings: Settings, kafka_user: str, kafka_password: str) -> Settings:
    from .bus import SCRAM_MECHANISM
    found = load_secrets(settings)
    return settings.replace(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism=SCRAM_MECHANISM,
                            kafka_sasl_username=kafka_user, kafka_sasl_password=kafka_password,
                            cassandra_username=CASSANDRA_ROLE, cassandra_password=found["cassandra_password"])


def _local_secrets(settings: Settings) -> dict[str, str]:
    """The secrets, when the settings point at this state directory's stack and it is a secure one."""
    try:
        recorded = mode_file(settings).read_text().strip()
    except OSError:
        return {}
    return load_secrets(settings) if recorded == "secure" and _targets_local_stack(settings) else {}


def admin_settings(settings: Settings) -> Settings:
    """The settings with the local secure stack's admin credentials (Kafka super user, Cassandra role
    `infaas`); the settings unchanged when they do not point at a local secure stack."""
    found = _local_secrets(settings)
    return _with_credentials(settings, ADMIN_USER, found["kafka_admin_password"]) if found else settings


def service_settings(settings: Settings) -> Settings:
    """The settings the services use on the local secure stack (Kafka principal `infaas-service`)."""
    from .bus import SERVICE_PRINCIPAL
    found = _local_secrets(settings)
    return _with_credentials(settings, SERVICE_PRINCIPAL, found["kafka_service_password"]) if found else settings


def _cassandra_superuser(settings: Settings, password: str) -> Settings:
    return settings.replace(cassandra_username=CASSANDRA_SUPERUSER, cassandra_password=password)


# --- Kafka -----------------------------------------------------------------------------------------
def _kafka_command(settings: Settings, java: str, secure: bool = False) -> list[str]:
    home = service_dir(settings, "kafka")
    conf = home / "server.properties"
    templates = [INFRA_DIR / "kafka" / "server.properties"]
    values = {"PORT": str(settings.kafka_port), "CONTROLLER_PORT": str(settings.kafka_controller_port),
              "DATA_DIR": str(home / "data")}
    if secure:
        templates.append(INFRA_DIR / "kafka" / "server-secure.properties")
        values.update(ADMIN_USER=ADMIN_USER, ADMIN_PASSWORD=load_secrets(settings)["kafka_admin_password"])
    _render(templates, conf, values)
    classpath = str(jar_dir(settings, "kafka") / "*")
    jvm = [java, f"-Xms{settings.kafka_heap_mb}m", f"-Xmx{settings.kafka_heap_mb}m", "-XX:+UseG1GC",
           "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={INFRA_DIR / 'kafka' / 'log4j2.yaml'}",
           f"-Dkafka.logs.dir={home / 'logs'}", *_marker(settings, "kafka"), "-cp", classpath]
    if not (home / "data" / "meta.properties").is_file():
        _format_kafka_storage(settings, jvm, conf, secure)
    return [*jvm, "kafka.Kafka", str(conf)]


def _format_kafka_storage(settings: Settings, jvm: list[str], conf: Path, secure: bool) -> None:
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    command = [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(conf),
               "--standalone"]
    password = ""
    if secure:  # the admin's SCRAM credential must exist before the broker's first start
        from .bus import SCRAM_MECHANISM
        password = load_secrets(settings)["kafka_admin_password"]
        command += ["--add-scram", f"{SCRAM_MECHANISM}=[name={ADMIN_USER},password={password}]"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if password:
            output = output.replace(password, "***")
        raise LaunchError(f"formatting Kafka storage in {service_dir(settings, 'kafka') / 'data'} failed:\n{output}")


def _kafka_ready(settings: Settings) -> str | None:
    from . import bus
    if not port_in_use(settings.kafka_port):
        return None
    try:
        return f"brokers {bus.broker_ids(admin_settings(settings), timeout=1.0)}"
    except bus.BusError:
        return None


# --- Cassandra -------------------------------------------------------------------------------------
def _cassandra_command(settings: Settings, java: str, secure: bool = False) -> list[str]:
    home = service_dir(settings, "cassandra")
    conf = home / "conf" / "cassandra.yaml"
    _render([INFRA_DIR / "cassandra" / "cassandra.yaml"], conf,
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


def _cassandra_logins(settings: Settings) -> list[Settings]:
    """Whom to try: the settings as given; on a secure stack the `infaas` role, then the superuser with
    its generated password, then with its default one (before the first setup)."""
    found = _local_secrets(settings)
    if not found:
        return [settings]
    return [admin_settings(settings), _cassandra_superuser(settings, found["cassandra_superuser_password"]),
            _cassandra_superuser(settings, CASSANDRA_SUPERUSER)]


@contextlib.contextmanager
def _driver_quiet():
    """Failed attempts are expected while a node starts or a login is tried; the driver would log
    each one with a traceback."""
    driver = logging.getLogger("cassandra")
    level = driver.level
    driver.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        driver.setLevel(level)


def _cassandra_ready(settings: Settings) -> str | None:
    from .store import Store
    if not port_in_use(settings.cassandra_port):
        return None
    for login in _cassandra_logins(settings):
        try:
            with _driver_quiet(), Store(login, connect_timeout=2.0) as store:
                return f"release {store.release_version()}"
        except Exception:  # the driver raises several types while the node starts or a login fails
            continue
    return None


def _secure_cassandra(settings: Settings) -> None:
    """Replace the default superuser's password and create the services' role (idempotent).

    The role may create keyspaces; Cassandra grants a keyspace's creator all permissions on it."""
    from .store import Store, StoreError
    found = load_secrets(settings)
    for password in (found["cassandra_superuser_password"], CASSANDRA_SUPERUSER):
        try:
            with _driver_quiet():
                store = Store(_cassandra_superuser(settings, password), connect_timeout=5.0).connect()
            break
        except StoreError:
            continue
    else:
        raise LaunchError(f"cannot log in to Cassandra as {CASSANDRA_SUPERUSER!r} with the password in "
                          f"{secrets_file(settings)} nor with the default one")
    with store, _driver_quiet():  # quiet: a repeated GRANT draws a server warning
        session = store.session
        session.execute(f"ALTER ROLE {CASSANDRA_SUPERUSER} WITH PASSWORD = %s",
                        (found["cassandra_superuser_password"],), timeout=30)
        session.execute(f"CREATE ROLE IF NOT EXISTS {CASSANDRA_ROLE} WITH LOGIN = true AND PASSWORD = %s",
                        (found["cassandra_password"],), timeout=30)
        session.execute(f"ALTER ROLE {CASSANDRA_ROLE} WITH PASSWORD = %s", (found["cassandra_password"],), timeout=30)
        session.execute(f"GRANT CREATE ON ALL KEYSPACES TO {CASSANDRA_ROLE}", timeout=30)


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
    command = (_kafka_command if name == "kafka" else _cassandra_command)(settings, java, secure)
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
    _claim_mode(settings, secure)
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
            topics = initialize(settings, services)
        except BaseException:
            for name in procs:  # nothing is left half-running
                _stop(settings, name, timeout=10)
            raise
    else:
        topics = initialize(settings, services)
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


def initialize(settings: Settings, services: tuple[str, ...] = SERVICES) -> list[str]:
    """Apply the schema and create the core topics; on the local secure stack also (idempotently) the
    services' Cassandra role, their Kafka principal and its ACLs. Returns the topics created."""
    from . import bus
    from .store import Store
    secure = bool(_local_secrets(settings))
    created: list[str] = []
    if "cassandra" in services:
        if secure:
            _secure_cassandra(settings)
        with Store(admin_settings(settings)) as store:
            store.apply_schema()
    if "kafka" in services:
        admin = admin_settings(settings)
        if secure:  # the services' principal: its password and ACLs (both idempotent)
            bus.set_scram_password(admin, bus.SERVICE_PRINCIPAL, load_secrets(settings)["kafka_service_password"])
            bus.create_acls(admin, bus.service_acls(settings))
        created = bus.ensure_core_topics(admin)
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
