"""The launcher's life cycle, on a second stack of its own (own state directory and ports),
so the session's stack keeps serving the other tests."""

import socket
import subprocess
import sys

import pytest

from infaas import launcher
from infaas.launcher import LaunchError
from tests.conftest import free_port


@pytest.fixture(scope="module")
def own_settings(base_settings, tmp_path_factory):
    ports = set()
    while len(ports) < 4:
        ports.add(free_port())
    kafka, controller, cql, storage = sorted(ports)
    return base_settings.replace(home=str(tmp_path_factory.mktemp("stack")), kafka_port=kafka,
                                 kafka_controller_port=controller, cassandra_port=cql,
                                 cassandra_storage_port=storage, kafka_bootstrap=f"127.0.0.1:{kafka}",
                                 kafka_heap_mb=256, cassandra_heap_mb=512)


def _states(settings):
    return {s.service: s.up for s in launcher.status(settings)}


def test_up_status_up_again_down(own_settings):
    messages = []
    try:
        report = launcher.up(own_settings, say=messages.append)
        assert sorted(report.started) == ["cassandra", "kafka"]
        assert _states(own_settings) == {"kafka": True, "cassandra": True}
        versions = {s.service: s.version for s in launcher.status(own_settings)}
        assert versions["kafka"].startswith("4.") and versions["cassandra"].startswith("5.0")
        pids = {name: launcher.running_pid(own_settings, name) for name in launcher.SERVICES}

        again = launcher.up(own_settings, say=messages.append)
        assert again.started == [] and sorted(again.already_running) == ["cassandra", "kafka"]
        assert {name: launcher.running_pid(own_settings, name) for name in launcher.SERVICES} == pids
    finally:
        stopped = launcher.down(own_settings)
    assert stopped == {"kafka": "stopped", "cassandra": "stopped"}
    assert _states(own_settings) == {"kafka": False, "cassandra": False}
    assert not launcher.port_in_use(own_settings.kafka_port)


def test_taken_port_is_a_clear_error_and_nothing_starts(own_settings):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", own_settings.cassandra_port))
        blocker.listen()
        with pytest.raises(LaunchError, match=f"port {own_settings.cassandra_port} \\(cassandra cql\\) is already in use"):
            launcher.up(own_settings, say=lambda m: None)
    assert _states(own_settings) == {"kafka": False, "cassandra": False}
    assert launcher.running_pid(own_settings, "kafka") is None


def test_missing_java_is_a_clear_error(own_settings, tmp_path):
    broken = own_settings.replace(java_home=str(tmp_path))
    with pytest.raises(LaunchError, match="no java at"):
        launcher.up(broken, say=lambda m: None)


def test_cli_status_check_exit_codes(own_settings):
    env_home = {"INFAAS_HOME": own_settings.home, "INFAAS_KAFKA_PORT": str(own_settings.kafka_port),
                "INFAAS_KAFKA_CONTROLLER_PORT": str(own_settings.kafka_controller_port),
                "INFAAS_CASSANDRA_PORT": str(own_settings.cassandra_port),
                "INFAAS_CASSANDRA_STORAGE_PORT": str(own_settings.cassandra_storage_port), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "infaas", "infra", "status", "--check"], env=env_home)
    assert proc.returncode == 1  # this test's stack is down
