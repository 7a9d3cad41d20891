"""Service processes: the dispatcher and the monitor yield to model runs (SCHED_BATCH), and so do
the threads they start afterwards."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import os, threading
from infaas.scaler.processes import yield_to_model_runs
assert os.sched_getscheduler(0) == os.SCHED_OTHER
assert yield_to_model_runs()
seen = []
thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
thread.start(); thread.join()
print(os.sched_getscheduler(0) == os.SCHED_BATCH, seen == [os.SCHED_BATCH])
"""


def test_a_service_and_its_later_threads_are_batch_scheduled():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_dispatcher_and_monitor_commands_yield_before_starting_threads():
    import inspect

    from infaas.cli import serving
    for command in (serving.cmd_dispatcher, serving.cmd_monitor):
        body = inspect.getsource(command)
        assert body.index("yield_to_model_runs()") < body.index("watch_supervisor()"), command.__name__
