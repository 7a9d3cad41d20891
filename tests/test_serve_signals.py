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

from .conftest import settings_env


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
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=settings_env(settings))
    services: list[int] = []
    try:
        for line in serve.stdout:
            if line.startswith("infaas serving:"):
                break
        else:
            raise AssertionError(f"serve exited with {serve.wait()} before it was ready")
        services = children_of(serve.pid)
        assert len(services) == 3, services  # dispatcher, monitor, one worker
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
