"""Shared fixtures: the real local stack (started once per session if it is not up) and
settings isolated per test session (own keyspace, own topic prefix), so tests never touch a
developer's data."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from infaas import launcher
from infaas.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ("tests.synthetic_proteus",)  # Proteus data: a synthetic stand-in, and the real one if present


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def base_settings():
    return load_settings()


@pytest.fixture(scope="session")
def stack(base_settings):
    """The local Kafka + Cassandra; started here only if not already up, and then stopped."""
    started_here = not launcher.is_up(base_settings)
    if started_here:
        launcher.up(base_settings, say=lambda msg: print(f"[stack] {msg}"))
    yield base_settings
    if started_here:
        launcher.down(base_settings)


@pytest.fixture(scope="session")
def settings(stack, tmp_path_factory):
    """Settings for this test session: a keyspace and a topic prefix of its own."""
    tag = uuid.uuid4().hex[:8]
    test_settings = stack.replace(keyspace=f"test_{tag}", topic_prefix=f"test-{tag}",
                                  repository_url=f"file://{tmp_path_factory.mktemp('repository')}",
                                  query_partitions=2, variant_partitions=2, result_partitions=1)
    from infaas import bus
    from infaas.store import Store
    with Store(test_settings) as store:
        store.apply_schema()
    bus.ensure_core_topics(test_settings)
    yield test_settings
    with Store(test_settings) as store:
        store.session.execute(f"DROP KEYSPACE IF EXISTS {test_settings.keyspace}", timeout=60)
    client = bus.admin(test_settings)
    # `<prefix>.*` and the Faust apps' own topics (`<prefix>-monitor-load-1s-changelog`...)
    ours = [t for t in bus.existing_topics(test_settings, client)
            if t.startswith((test_settings.topic_prefix + ".", test_settings.topic_prefix + "-"))]
    if ours:
        for future in client.delete_topics(ours, operation_timeout=30).values():
            future.result()


@pytest.fixture
def store(settings):
    from infaas.store import Store
    with Store(settings) as s:
        yield s


def settings_env(settings) -> dict[str, str]:
    """Environment that makes a child process (a service under test) use these settings."""
    return {**os.environ, **settings.as_env()}


ZOO_TASK = "digits-classification"


@pytest.fixture(scope="session")
def zoo(settings):
    """The demo zoo (quick profiling), registered once per test session: (reports, variants by id)."""
    from infaas.registration.zoo import build_zoo
    from infaas.store import Store
    reports = build_zoo(settings, quick=True)
    with Store(settings) as store:
        variants = {v.variant_id: v for v in store.variants_for_task(ZOO_TASK)}
    assert variants, "the zoo registered no variants"
    return reports, variants
