"""Service processes on this machine (`infaas <service> ...` children): started in their own
session, ready when they print their readiness line, stopped with SIGTERM then SIGKILL.
Used by `infaas serve` and by the scaler's local backend to start and stop workers.

Every service started here gets its supervisor's pid in `INFAAS_SUPERVISOR_PID` (inherited: the
workers a scaler starts under `serve` watch `serve`, not the scaler, so a restarted scaler finds
them still serving). A service whose supervisor is gone stops by itself (`watch_supervisor`):
killing `serve` with SIGKILL leaves nothing running."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InfaasError

log = logging.getLogger(__name__)

SUPERVISOR_ENV = "INFAAS_SUPERVISOR_PID"  # process wiring, not a setting
SUPERVISOR_POLL_S = 0.5
SELF_STOP_GRACE_S = 30.0  # after SIGTERM to itself, a service still running this long exits hard



class ServiceError(InfaasError, RuntimeError):
    """A service process failed to start or died."""


def supervised_env(env: dict[str, str] | None) -> dict[str, str]:
    """`env` with this process as the supervisor, unless one is named already (kept: see above)."""
    env = dict(env or os.environ)
    env.setdefault(SUPERVISOR_ENV, str(os.getpid()))
    return env


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:  # no /proc (not Linux): signal 0 tells whether the pid exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state != "Z"  # a zombie has exited; only its exit status waits to be read


def watch_supervisor(environ: dict[str, str] | None = None) -> threading.Thread | None:
    """In a service: once the supervisor named in the environment is gone, stop as on SIGTERM
    (the service's own graceful stop), and exit hard if that does not end it in time."""
    raw = (environ if environ is not None else os.environ).get(SUPERVISOR_ENV, "")
    if not raw.isdigit() or int(raw) == os.getpid():
        return None
    supervisor = int(raw)

    def watch() -> None:
        while pid_alive(supervisor):
            time.sleep(SUPERVISOR_POLL_S)
        print(f"infaas: supervisor {supervisor} is gone; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(SELF_STOP_GRACE_S)
        os._exit(1)
    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    return thread


def yield_to_model_runs() -> bool:
    """Schedule this process (its threads to come, too) as SCHED_BATCH: it still gets its fair share
    of the CPU, but its wake-ups no longer preempt a running thread, the workers' model runs among
    them. For the dispatcher and the monitor, which wake once or more per query: beside them at 3x
    one replica's capacity on 2 cores, a replica's runs were preempted 1,300 times a second and took
    14-21 ms against 12 ms alone; as SCHED_BATCH, 400 times a second (measured). Call it before the
    process starts threads (a thread keeps the policy it was created with). Linux only; elsewhere,
    or if refused, nothing changes."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as err:
        log.info("staying on the default scheduling policy (%s)", err)
        return False
    return True


def exit_cause(returncode: int | None) -> str:
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def supervised_by(supervisor: int) -> dict[int, list[str]]:
    """The live processes (pid -> command line) whose supervisor is `supervisor`, wherever they
    were started from (e.g. the workers a scaler started). Linux only; for tests and diagnostics."""
    found = {}
    marker = f"{SUPERVISOR_ENV}={supervisor}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0") and pid_alive(int(proc.name)):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # ended while we looked, or not ours
            continue
    return found


class ServiceProcess:
    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 echo: Callable[[str], None] | None = None):
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.echo = echo
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.ready_line = ""

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {**supervised_env(self.env), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "infaas", *self.args], stdout=subprocess.PIPE,
                                     stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        threading.Thread(target=self._read_stdout, name=f"{self.name}-stdout", daemon=True).start()
        return self

    def _read_stdout(self) -> None:
        with self.log_path.open("a") as log:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                log.write(line + "\n")
                log.flush()
                if " ready" in line and not self.ready.is_set():
                    self.ready_line = line
                    self.ready.set()
                if self.echo:
                    self.echo(f"[{self.name}] {line}")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with code {self.proc.returncode} before it was ready; "
                                   f"see {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} not ready after {timeout_s:.0f} s; see {self.log_path}:\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_cause(self) -> str:
        return exit_cause(self.proc.poll() if self.proc else None)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if not self.alive:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL, for fault-injection: no chance to clean up."""
        if self.alive:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
