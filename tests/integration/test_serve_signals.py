"""`infaas serve` stopped with SIGTERM (kill, timeout, a service manager) stops the services it
started: none is left running on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status waits to be read


@pytest.mark.timeout(120)
def test_sigterm_stops_every_service_serve_started(settings):
    serve = subprocess.Popen([sys.executable, "-m", "infaas", "serve", "--workers", "1", "--no-scaler"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=settings_env(settings))
    services: list[int] = []
    try:
        # Its services are started together, then awaited; SIGTERM may come at any point after that.
        deadline = time.monotonic() + 60
        while len(services) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            services = children_of(serve.pid)
        assert len(services) == 3, services  # dispatcher, monitor, one worker
        time.sleep(3.0)  # the services are up and connecting to Kafka and Cassandra
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0  # stopped as on Ctrl-C
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in services) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in services if alive(pid)], "services left running after serve was stopped"
    finally:
        if serve.poll() is None:
            serve.kill()
        for pid in services:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
