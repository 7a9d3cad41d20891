"""`infaas serve`: the dispatcher, the load monitor, the scaler and a pool of workers as processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .scaler.processes import ServiceError, ServiceProcess
from .settings import Settings


@dataclass
class ServeOptions:
    workers: int = 1
    hardware: str = "cpu"
    preload: list[str] = field(default_factory=list)  # variants every worker loads at start
    worker_memory_mb: float = 2048.0
    max_batch_delay_ms: float = 5.0
    scaler: bool = True
    policy: str = "infaas"
    scaler_args: list[str] = field(default_factory=list)  # more `infaas scaler` options
    worker_extra: list[str] = field(default_factory=list)  # more `infaas worker` options
    ready_timeout_s: float = 120.0


class Pipeline:
    """The running services; `start()` returns once every one printed its readiness line."""

    def __init__(self, settings: Settings, options: ServeOptions, env: dict[str, str] | None = None,
                 echo: Callable[[str], None] | None = None):
        self.settings = settings
        self.options = options
        self.env = env or dict(os.environ)
        self.echo = echo
        self.log_dir = settings.state_dir / "logs" / "serve"
        self.services: dict[str, ServiceProcess] = {}

    def _service(self, name: str, args: list[str]) -> ServiceProcess:
        service = ServiceProcess(name, args, self.log_dir, self.env, self.echo)
        self.services[name] = service
        return service.start()

    def worker_args(self, worker_id: str) -> list[str]:
        args = ["worker", "--hardware", self.options.hardware, "--worker-id", worker_id,
                "--memory-mb", str(self.options.worker_memory_mb),
                "--max-batch-delay-ms", str(self.options.max_batch_delay_ms)]
        if self.options.preload:
            args += ["--variants", ",".join(self.options.preload)]
        return args + self.options.worker_extra

    def start(self) -> float:
        started = time.monotonic()
        try:
            self._service("dispatcher", ["dispatcher"])
            self._service("monitor", ["monitor"])
            for i in range(self.options.workers):
                worker_id = f"{self.options.hardware}-worker-{i + 1}"
                self._service(worker_id, self.worker_args(worker_id))
            if self.options.scaler:
                self._service("scaler", ["scaler", "--policy", self.options.policy, *self.options.scaler_args])
            for service in self.services.values():
                service.wait_ready(self.options.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - started

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def restart(self, name: str, kill: bool = True) -> float:
        """Fault injection and recovery: end a service (SIGKILL by default) and start it again;
        returns the seconds until the new process is ready."""
        old = self.services[name]
        if kill:
            old.kill()
        else:
            old.stop()
        started = time.monotonic()
        self._service(name, old.args).wait_ready(self.options.ready_timeout_s)
        return time.monotonic() - started

    def check(self) -> None:
        dead = [f"{name} (exit {s.proc.returncode}; {s.log_path})" for name, s in self.services.items() if not s.alive]
        if dead:
            raise ServiceError(f"service(s) stopped: {', '.join(dead)}")

    def stop(self) -> dict[str, int | None]:
        # Workers last: what the dispatcher already routed is still served while it stops.
        order = sorted(self.services, key=lambda n: ("worker" in n, n))
        return {name: self.services[name].stop() for name in order}
