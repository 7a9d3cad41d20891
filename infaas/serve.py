"""`infaas serve`: the dispatcher, the load monitor, the scaler and a pool of workers as processes.

One owner per process. `serve` owns and supervises the dispatcher(s), the monitor and the scaler:
one that crashes is started again after an exponential back-off, each restart logged with the
exit cause, and `serve` gives up (a clear error, every service stopped) only on a crash loop
(`CRASH_LOOP` crashes within `CRASH_WINDOW_S`). The workers, the initial ones included, belong to
the scaler's backend, which replaces a crashed one; a worker the scaler retires is not a failure.
With `--no-scaler` nothing else would own the workers, so `serve` supervises them like its other
services (fixed pool: a crashed worker is restarted with the same id and preloads).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .scaler.processes import ServiceError, ServiceProcess, pid_alive, supervised_by
from .settings import Settings

log = logging.getLogger(__name__)

CRASH_LOOP = 5  # crashes ...
CRASH_WINDOW_S = 60.0  # ... within this many seconds: give up on the service
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
SUPERVISE_EVERY_S = 0.25


@dataclass
class ServeOptions:
    workers: int = 1
    hardware: str = "cpu"
    preload: list[str] = field(default_factory=list)  # variants every initial worker loads at start
    worker_memory_mb: float = 2048.0
    max_batch_delay_ms: float = 5.0
    scaler: bool = True
    policy: str = "infaas"
    scaler_args: list[str] = field(default_factory=list)  # more `infaas scaler` options
    worker_extra: list[str] = field(default_factory=list)  # more `infaas worker` options
    ready_timeout_s: float = 120.0
    dispatchers: int = 1  # more than one share the queries topic's partitions


def backoff_s(recent_crashes: int) -> float:
    """Delay before restarting a service that crashed `recent_crashes` times in the window."""
    return min(FIRST_BACKOFF_S * 2 ** max(recent_crashes - 1, 0), MAX_BACKOFF_S)


@dataclass
class Supervision:
    """The crash history of one supervised service."""
    crashes: deque = field(default_factory=deque)  # monotonic times of recent crashes
    restart_at: float | None = None  # when the crashed service is to be started again
    restarts: int = 0

    def crashed(self, now: float) -> float:
        """Note a crash; the delay before the restart."""
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW_S:
            self.crashes.popleft()
        delay = backoff_s(len(self.crashes))
        self.restart_at = now + delay
        return delay

    @property
    def crash_loop(self) -> bool:
        return len(self.crashes) >= CRASH_LOOP


class Pipeline:
    """The running services; `start()` returns once every one printed its readiness line, and
    a supervisor thread then restarts those that crash."""

    def __init__(self, settings: Settings, options: ServeOptions, env: dict[str, str] | None = None,
                 echo: Callable[[str], None] | None = None):
        self.settings = settings
        self.options = options
        self.env = env or dict(os.environ)
        self.echo = echo
        self.log_dir = settings.state_dir / "logs" / "serve"
        self.services: dict[str, ServiceProcess] = {}
        self.supervision: dict[str, Supervision] = {}
        self.failed: str | None = None  # why `serve` gave up, once it has
        self._lock = threading.RLock()  # services and supervision: the supervisor thread vs the caller
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def _say(self, text: str) -> None:
        log.warning(text)
        if self.echo:
            self.echo(f"[serve] {text}")

    def _service(self, name: str, args: list[str]) -> ServiceProcess:
        service = ServiceProcess(name, args, self.log_dir, self.env, self.echo)
        with self._lock:
            self.services[name] = service
            self.supervision.setdefault(name, Supervision())
        return service.start()

    def worker_args(self, worker_id: str) -> list[str]:
        args = ["worker", "--hardware", self.options.hardware, "--worker-id", worker_id,
                "--memory-mb", str(self.options.worker_memory_mb),
                "--max-batch-delay-ms", str(self.options.max_batch_delay_ms)]
        if self.options.preload:
            args += ["--variants", ",".join(self.options.preload)]
        return args + self.options.worker_extra

    def scaler_args(self) -> list[str]:
        """The scaler starts (and owns) the initial workers."""
        o = self.options
        args = ["scaler", "--policy", o.policy, "--initial-workers", str(o.workers), "--worker-hardware", o.hardware,
                "--worker-memory-mb", str(o.worker_memory_mb), "--worker-max-batch-delay-ms",
                str(o.max_batch_delay_ms), "--ready-timeout", str(o.ready_timeout_s)]
        if o.preload:
            args += ["--preload", ",".join(o.preload)]
        return args + [f"--worker-arg={arg}" for arg in o.worker_extra] + o.scaler_args

    def start(self) -> float:
        started = time.monotonic()
        try:
            for i in range(self.options.dispatchers):
                self._service("dispatcher" if i == 0 else f"dispatcher-{i + 1}", ["dispatcher"])
            self._service("monitor", ["monitor"])
            if self.options.scaler:
                self._service("scaler", self.scaler_args())
            else:
                for i in range(self.options.workers):
                    worker_id = f"{self.options.hardware}-worker-{i + 1}"
                    self._service(worker_id, self.worker_args(worker_id))
            for service in list(self.services.values()):
                service.wait_ready(self.options.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise_loop, name="serve-supervisor", daemon=True)
        self._supervisor.start()
        return time.monotonic() - started

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- supervision ---------------------------------------------------------------------------
    def _supervise_loop(self) -> None:
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            try:
                self.supervise()
            except Exception:  # the supervisor must outlive any one bad restart
                log.exception("supervision failed")

    def supervise(self) -> None:
        """Restart what crashed, after its back-off; give up on a crash loop."""
        now = time.monotonic()
        with self._lock:
            for name, service in list(self.services.items()):
                if self._stopping.is_set() or self.failed:
                    return
                if service.alive:
                    continue
                watch = self.supervision[name]
                if watch.restart_at is None:
                    delay = watch.crashed(now)
                    if watch.crash_loop:
                        self.failed = (f"{name} crashed {len(watch.crashes)} times in {CRASH_WINDOW_S:.0f} s "
                                       f"(last: {service.exit_cause}); giving up. See {service.log_path}:\n"
                                       f"{service.tail()}")
                        self._say(self.failed.splitlines()[0])
                        return
                    self._say(f"{name} stopped ({service.exit_cause}); restarting it in {delay:.1f} s "
                              f"(crash {len(watch.crashes)} in {CRASH_WINDOW_S:.0f} s)")
                elif now >= watch.restart_at:
                    watch.restart_at = None
                    watch.restarts += 1
                    self._service(name, service.args)
                    self._say(f"{name} restarted (pid {self.services[name].pid}, restart {watch.restarts})")

    def check(self) -> None:
        """Raise once the supervisor gave up on a service."""
        if self.failed:
            raise ServiceError(f"service stopped: {self.failed}")

    def restart(self, name: str, kill: bool = True) -> float:
        """Fault injection: end a service (SIGKILL by default) and wait until the supervisor has
        started it again and it is ready; returns the seconds that took."""
        with self._lock:
            old = self.services[name]
        if kill:
            old.kill()
        else:
            old.stop()
        return self.wait_replaced(name, old)

    def wait_replaced(self, name: str, old: ServiceProcess) -> float:
        started = time.monotonic()
        deadline = started + self.options.ready_timeout_s + MAX_BACKOFF_S
        while time.monotonic() < deadline:
            self.check()
            with self._lock:
                new = self.services[name]
            if new is not old:
                new.wait_ready(max(deadline - time.monotonic(), 1.0))
                return time.monotonic() - started
            time.sleep(0.05)
        raise ServiceError(f"{name} was not restarted within {deadline - started:.0f} s")

    def worker_pids(self) -> dict[int, str]:
        """The live workers of this pipeline (pid -> worker id), whoever started them."""
        found = {}
        for pid, cmdline in supervised_by(os.getpid()).items():
            if "worker" in cmdline and "--worker-id" in cmdline:
                found[pid] = cmdline[cmdline.index("--worker-id") + 1]
        return found

    # --- stopping ------------------------------------------------------------------------------
    def stop(self) -> dict[str, int | None]:
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(5)
        with self._lock:
            services = dict(self.services)
        # Workers last: what the dispatcher already routed is still served while it stops.
        # The scaler stops the workers it owns itself.
        order = sorted(services, key=lambda n: ("worker" in n, n))
        codes = {name: services[name].stop() for name in order}
        self._stop_stray_workers()
        return codes

    def _stop_stray_workers(self, timeout_s: float = 15.0) -> None:
        """Workers whose scaler was killed outlive it (a restarted or standby scaler adopts them);
        once every scaler is stopped, they are stopped here."""
        strays = list(self.worker_pids())
        for pid in strays:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(pid_alive(pid) for pid in strays) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in strays:
            _signal(pid, signal.SIGKILL)

    def kill(self) -> None:
        """Escalation (a second stop signal): SIGKILL every service now, and the workers the
        scaler started, which would otherwise be left waiting to notice that `serve` is gone.

        It runs in a signal handler, which may have interrupted this thread inside `stop()` while
        it held the stopping event's lock or ours: it takes no lock (the stop already began)."""
        services = list(self.services.copy().values())
        for service in services:
            if service.alive:
                service.proc.kill()
        for pid in self.worker_pids():
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:  # already gone
        pass
