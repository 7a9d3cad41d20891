"""What the scaler keeps about workers must not grow with every worker a long run ever had."""

from types import SimpleNamespace

from infaas.policies.snapshot import PolicyConfig, Snapshot, WorkerLive
from infaas.scaler import service
from infaas.scaler.service import Scaler


def test_gone_and_retired_workers_are_forgotten_after_a_minute(base_settings):
    scaler = Scaler(base_settings, PolicyConfig(), "infaas", backend=SimpleNamespace())
    try:
        now = service.now_ms()
        old, recent = now - service.FORGET_AFTER_MS - 1_000, now - 1_000
        scaler.view.snapshot = Snapshot(variants={}, workers={"draining": WorkerLive("draining", "cpu")}, at_ms=now)
        scaler.gone = {"crashed-long-ago": old, "crashed-just-now": recent}
        scaler.stopping = {"retired": old, "draining": old, "retiring-now": recent}
        scaler._recover()
        assert scaler.gone == {"crashed-just-now": recent}
        # A worker still reporting is still stopping (draining its queue): kept out of the snapshot.
        assert scaler.stopping == {"draining": old, "retiring-now": recent}
        assert "draining" not in scaler.snapshot().workers
    finally:
        scaler.producer.flush(0)
        scaler.writer.close()
