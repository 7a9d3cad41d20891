"""`infaas serve` stopped with SIGTERM (kill, timeout, a service manager) stops the services it
started: none is left running on its own, not after a second signal (it escalates) and not when
`serve` itself is killed (every service watches it and stops by itself)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infaas.scaler.processes import ServiceError, pid_alive, supervised_by
from infaas.serve import CRASH_LOOP, FIRST_BACKOFF_S, MAX_BACKOFF_S, Pipeline, ServeOptions, backoff_s
from tests.conftest import settings_env


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    return pid_alive(pid)


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def connected_to(pid: int, port: int) -> bool:
    """Whether the process has an established TCP connection to `port` (e.g. Kafka's)."""
    inodes = socket_inodes(pid)
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                return True
    return False


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.2)


def start_serve(settings, stderr: Path, *args: str) -> subprocess.Popen:
    with stderr.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "infaas", "serve", "--workers", "1", *args],
                                stdout=subprocess.PIPE, stderr=log, env=settings_env(settings), text=True)


def wait_exit(serve: subprocess.Popen, timeout_s: float, stderr: Path) -> int:
    """Its exit status; if it hangs, its threads' tracebacks (SIGUSR1) in the failure."""
    try:
        return serve.wait(timeout_s)
    except subprocess.TimeoutExpired:
        serve.send_signal(signal.SIGUSR1)
        wait_until(lambda: "most recent call first" in stderr.read_text(errors="replace"), 10, "a traceback dump")
        raise AssertionError(f"serve still running {timeout_s:.0f} s later:\n{stderr.read_text()[-8000:]}") from None


def services_connecting(serve: subprocess.Popen, count: int, kafka_port: int) -> list[int]:
    """Wait until `count` services of `serve` run and each has a connection to Kafka open (they
    are up and connecting); return their pids."""
    services: list[int] = []

    def started() -> bool:
        nonlocal services
        services = list(supervised_by(serve.pid))
        return len(services) >= count and all(connected_to(pid, kafka_port) for pid in services)
    wait_until(started, 90, f"{count} services of serve connected to Kafka")
    return services


def cleanup(serve: subprocess.Popen, services: list[int]) -> None:
    if serve.poll() is None:
        serve.kill()
    for pid in services:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(150)
def test_sigterm_stops_every_service_serve_started(settings, tmp_path):
    serve = start_serve(settings, tmp_path / "serve.err", "--no-scaler")
    services: list[int] = []
    try:
        # SIGTERM may come at any point after the services are started; here while they connect.
        services = services_connecting(serve, 3, settings.kafka_port)  # dispatcher, monitor, one worker
        assert sorted(services) == sorted(children_of(serve.pid)), "with --no-scaler serve owns the worker"
        serve.send_signal(signal.SIGTERM)
        assert wait_exit(serve, 60, tmp_path / "serve.err") == 0  # stopped as on Ctrl-C
        wait_until(lambda: not any(alive(pid) for pid in services), 30, "services stopped")
    finally:
        cleanup(serve, services)


@pytest.mark.timeout(200)
def test_second_signal_kills_the_services_instead_of_abandoning_them(settings, tmp_path):
    serve = start_serve(settings, tmp_path / "serve.err")  # with the scaler: the worker is the scaler's child
    services: list[int] = []
    try:
        for line in serve.stdout:  # ready: the scaler has started its worker
            if line.startswith("infaas serving:"):
                break
        services = services_connecting(serve, 4, settings.kafka_port)  # dispatcher, monitor, scaler, worker
        assert len(children_of(serve.pid)) == 3, "the worker is not serve's own child"
        serve.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping" in serve.stdout.readline(), 30, "serve stopping")
        serve.send_signal(signal.SIGTERM)
        wait_exit(serve, 30, tmp_path / "serve.err")
        # Killed, not stopped gracefully (that takes seconds per service): all gone at once.
        wait_until(lambda: not any(alive(pid) for pid in services), 5, "every service killed")
    finally:
        cleanup(serve, services)


@pytest.mark.timeout(200)
def test_services_stop_by_themselves_when_serve_is_killed(settings, tmp_path):
    serve = start_serve(settings, tmp_path / "serve.err")
    services: list[int] = []
    try:
        services = services_connecting(serve, 4, settings.kafka_port)
        serve.kill()
        serve.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in services), 60, "orphaned services stopped")
    finally:
        cleanup(serve, services)


def test_restart_back_off_doubles_up_to_a_limit():
    delays = [backoff_s(n) for n in range(1, 10)]
    assert delays[:4] == [FIRST_BACKOFF_S * 2 ** i for i in range(4)]
    assert max(delays) == MAX_BACKOFF_S


@pytest.mark.timeout(120)
def test_a_crashed_service_is_restarted_and_a_crash_loop_gives_up_clearly(settings, tmp_path):
    pipeline = Pipeline(settings, ServeOptions(), env=settings_env(settings))
    pipeline.log_dir = tmp_path
    pipeline._service("flaky", ["--help"])  # a real process that ends at once, every time
    deadline = time.monotonic() + 90
    while not pipeline.failed:
        assert time.monotonic() < deadline, "no crash loop detected"
        pipeline.supervise()
        time.sleep(0.05)
    watch = pipeline.supervision["flaky"]
    assert watch.restarts == CRASH_LOOP - 1
    gaps = [b - a for a, b in zip(watch.crashes, list(watch.crashes)[1:], strict=False)]
    assert all(gap >= backoff_s(i + 1) for i, gap in enumerate(gaps)), gaps  # each restart waited its back-off
    assert f"flaky crashed {CRASH_LOOP} times" in pipeline.failed and "exit code 0" in pipeline.failed
    with pytest.raises(ServiceError, match="giving up"):
        pipeline.check()
    pipeline.stop()
