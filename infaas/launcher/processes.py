"""Process bookkeeping for the stack's JVMs: state directories, pid files that are trusted only when
the process still carries our markers, ports, starting in a session of its own, and stopping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..settings import Settings


def service_dir(settings: Settings, name: str) -> Path:
    return settings.state_dir / name


def log_file(settings: Settings, name: str) -> Path:
    return service_dir(settings, name) / "logs" / ("server.log" if name == "kafka" else "system.log")


def stdout_file(settings: Settings, name: str) -> Path:
    return service_dir(settings, name) / "logs" / "stdout.log"


def _pidfile(settings: Settings, name: str) -> Path:
    return service_dir(settings, name) / "pid"


def marker(settings: Settings, name: str) -> list[str]:
    # Identify our own JVMs, so a recycled pid is never mistaken for one of them.
    return [f"-Dinfaas.service={name}", f"-Dinfaas.home={settings.state_dir}"]


def running_pid(settings: Settings, name: str) -> int | None:
    try:
        pid = int(_pidfile(settings, name).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    markers = [m.encode() for m in marker(settings, name)]
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


def start_process(settings: Settings, name: str, command: list[str]) -> subprocess.Popen:
    home = service_dir(settings, name)
    out = stdout_file(settings, name).open("ab")
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=home, start_new_session=True)  # survives the CLI, not killed by Ctrl-C
    out.close()
    _pidfile(settings, name).write_text(str(proc.pid))
    return proc


def stop_process(settings: Settings, name: str, timeout: float) -> str:
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


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def failure(settings: Settings, name: str, why: str) -> str:
    logs = [p for p in (log_file(settings, name), stdout_file(settings, name)) if p.is_file()]
    detail = "\n".join(f"--- {p} (last lines) ---\n{tail(p)}" for p in logs)
    return f"{name} failed to start: {why}\nlog: {log_file(settings, name)}\n{detail}"
