"""`infaas bench pipeline`'s CPU accounting: per-process CPU time from /proc, per query."""

import os
import subprocess
import sys
import time

from infaas.benchmarks import CpuMeter, cpu_seconds
from infaas.settings import load_settings


def test_cpu_seconds_counts_a_busy_child_and_not_an_idle_one(tmp_path):
    meter = CpuMeter(load_settings(environ={}, home=str(tmp_path)), {})
    assert meter.pids == {}  # no local stack in this home: no broker to measure
    busy = subprocess.Popen([sys.executable, "-c", "import time\ninput()\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.5: pass\nprint('done', flush=True)\ninput()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    idle = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE, text=True)
    try:
        meter.pids = {"busy": busy.pid, "idle": idle.pid}
        meter.start()
        busy.stdin.write("go\n")
        busy.stdin.flush()
        assert busy.stdout.readline().strip() == "done"  # it spent 0.5 s of CPU in between
        meter.stop()
        per_query = meter.us_per_query(10, subtract={"busy": 0.1})
    finally:
        busy.communicate("\n", timeout=30)
        idle.communicate("\n", timeout=30)
    assert 0.45 <= meter.spent["busy"] < 5 and meter.spent["idle"] < 0.1
    assert per_query["busy"] == 1e6 * (meter.spent["busy"] - 0.1) / 10
    assert per_query["total"] == per_query["busy"] + per_query["idle"]


def test_cpu_seconds_of_an_unknown_process_is_zero():
    assert cpu_seconds(None) == 0.0
    assert cpu_seconds(2 ** 22 + 12345) == 0.0  # above the kernel's pid limit: never a live process
    assert cpu_seconds(os.getpid()) > 0.0


def test_the_overload_benchmark_measures_the_cpu_time_the_hypervisor_stole():
    from infaas.benchmarks import cpu_times, steal_share
    before = cpu_times()
    busy = time.process_time()
    while time.process_time() - busy < 0.2:  # some CPU time passes
        pass
    after = cpu_times()
    assert after[1] > before[1] and 0 <= after[0] - before[0] <= after[1] - before[1]
    share = steal_share(before, after)
    assert share is not None and 0.0 <= share <= 1.0
    assert steal_share((10, 100), (40, 200)) == 0.3  # 30 of 100 ticks went to other guests
    assert steal_share((10, 100), (10, 100)) is None  # no time passed: no share
