"""Service processes on this machine (`infaas <service> ...` children): started in their own
session, ready when they print their readiness line, stopped with SIGTERM then SIGKILL.
Used by `infaas serve` and by the scaler's local backend to start and stop workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InfaasError


class ServiceError(InfaasError, RuntimeError):
    """A service process failed to start or died."""


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
        env = {**(self.env or os.environ), "PYTHONUNBUFFERED": "1"}
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
