"""Supervision faults on real processes under a steady load, every query accounted for: the only
worker of `serve` killed (the scaler's backend replaces it), an exception in one replica thread
(the worker replaces the thread), the leader scaler killed with a standby running (the standby
takes over), one of two dispatchers killed. Numbers go to `bench-results/faults.json`."""

from __future__ import annotations

import os
import signal
import time

import pytest

from infaas.consumers.replica import FAULT_DIR_ENV
from infaas.scaler.processes import ServiceProcess
from infaas.scaler.service import LEASE_TTL_S
from infaas.serve import Pipeline, ServeOptions
from tests.conftest import settings_env
from tests.faults.steady import run_fault, save_report

SCALER_ARGS = ["--min-workers", "1", "--max-workers", "2", "--unload-idle-s", "600"]
TAKEOVER_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def variant(zoo):
    candidates = [v for v in zoo[1].values() if v.optimizer == "ort-fp32" and v.threads == 1 and v.batch_size == 8]
    return min(candidates, key=lambda v: v.cost_per_1k)


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def pipeline(settings, variant, fault_dir, tmp_path_factory):
    options = ServeOptions(workers=1, dispatchers=2, preload=[variant.variant_id], scaler=True,
                           scaler_args=SCALER_ARGS)
    running = Pipeline(settings, options, env={**settings_env(settings), FAULT_DIR_ENV: str(fault_dir)})
    running.log_dir = tmp_path_factory.mktemp("serve-logs")  # the scalers' logs are read below
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def standby(pipeline):
    """A second scaler with the same options, started after serve's (which holds the lease)."""
    process = ServiceProcess("scaler-standby", pipeline.scaler_args(), pipeline.log_dir, pipeline.env)
    process.start().wait_ready(120)
    assert "standby" in process.ready_line, process.ready_line
    yield process
    process.stop()


@pytest.fixture(scope="module")
def report():
    results: dict[str, dict] = {}
    yield results
    save_report(results)


def wait_for(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def log_size(process: ServiceProcess) -> int:
    try:
        return process.log_path.stat().st_size
    except OSError:
        return 0


def log_count(process: ServiceProcess, text: str, since: int = 0) -> int:
    """How often `text` is in the service's log after byte `since`."""
    try:
        with process.log_path.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace").count(text)
    except OSError:
        return 0


def test_replica_thread_exception(settings, pipeline, variant, fault_dir, report):
    trigger = fault_dir / f"crash-replica-{variant.variant_id.replace('/', '_')}"
    [worker_pid] = pipeline.worker_pids()

    def inject() -> float:
        trigger.touch()
        return wait_for(lambda: not trigger.exists(), 30, "a replica took the injected fault")
    accounting = run_fault(settings, variant.variant_id, "replica thread exception", inject, report)
    assert list(pipeline.worker_pids()) == [worker_pid], "the worker itself kept running"
    assert accounting["statuses"].get("OK", 0) == accounting["sent"]


def test_only_worker_killed(settings, pipeline, variant, report):
    [victim] = pipeline.worker_pids()

    def inject() -> float:
        os.kill(victim, signal.SIGKILL)
        return wait_for(lambda: pipeline.worker_pids() and victim not in pipeline.worker_pids(), 120,
                        "a replacement worker")
    accounting = run_fault(settings, variant.variant_id, "only worker SIGKILL under serve", inject, report)
    assert len(pipeline.worker_pids()) == 1, "one crash, one replacement"
    assert accounting["statuses"].get("OK", 0) == accounting["sent"]
    assert all(s.restarts == 0 for s in pipeline.supervision.values()), "serve restarted nothing: not its worker"


def test_silent_worker_is_replaced(settings, pipeline, variant, report):
    """A worker that stops reporting (frozen: SIGSTOP) is gone for the scaler, which replaces it."""
    [victim] = pipeline.worker_pids()
    scaler = pipeline.services["scaler"]
    replacing = f"ADD_WORKER cpu: replacing {pipeline.worker_pids()[victim]}, gone"  # the action's record

    def inject() -> float:
        os.kill(victim, signal.SIGSTOP)
        return wait_for(lambda: log_count(scaler, f"{replacing} (it stopped reporting)") > 0, 60,
                        "the scaler found the worker gone")
    try:
        accounting = run_fault(settings, variant.variant_id, "worker stops reporting (SIGSTOP)", inject, report)
    finally:
        os.kill(victim, signal.SIGKILL)
    assert accounting["process_back_s"] <= 10.0, "replicas placed again within 10 s"
    wait_for(lambda: victim not in pipeline.worker_pids(), 30, "the frozen worker ended")
    assert len(pipeline.worker_pids()) == 1 and log_count(scaler, replacing) == 1, "one failure, one replacement"


def test_one_of_two_dispatchers_killed(settings, pipeline, variant, report):
    run_fault(settings, variant.variant_id, "one of two dispatchers SIGKILL",
              lambda: pipeline.restart("dispatcher-2"), report)


def test_leader_scaler_killed_with_standby(settings, pipeline, variant, standby, report):
    leader = pipeline.services["scaler"]
    assert log_count(standby, "scaler active") == 0, "two scalers acted at once"
    workers = pipeline.worker_pids()
    offset = log_size(leader)  # serve restarts its scaler into the same log
    took_over: dict[str, float] = {}

    def active_after_kill() -> int:
        return log_count(standby, "scaler active") + log_count(pipeline.services["scaler"], "scaler active", offset)

    def inject() -> float:
        leader.kill()
        took_over["s"] = wait_for(lambda: active_after_kill() > 0, 60, "a standby took over")
        return took_over["s"]
    accounting = run_fault(settings, variant.variant_id, "leader scaler SIGKILL with a standby", inject, report)
    accounting["takeover_s"] = took_over["s"]
    assert took_over["s"] <= TAKEOVER_LIMIT_S, f"took {took_over['s']:.1f} s (lease TTL {LEASE_TTL_S} s)"
    assert active_after_kill() == 1, "exactly one scaler took over"
    assert pipeline.worker_pids() == workers, "the workers outlived the scaler that started them"
