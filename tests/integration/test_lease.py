"""The scaler lease on real Cassandra: one holder at a time; a holder that stops renewing loses it."""

from __future__ import annotations

import time

from infaas.scaler.service import Lease


def test_one_holder_at_a_time_and_release(store):
    assert store.take_lease("t-one", "a", 30)
    assert not store.take_lease("t-one", "b", 30)
    assert store.renew_lease("t-one", "a", 30)
    assert not store.renew_lease("t-one", "b", 30)  # only the holder renews
    store.release_lease("t-one", "b")  # not b's to release
    assert not store.take_lease("t-one", "b", 30)
    store.release_lease("t-one", "a")
    assert store.take_lease("t-one", "b", 30)


def test_a_lease_not_renewed_expires_and_a_standby_takes_it(settings):
    from infaas.store import Store
    leader, standby = Lease(Store(settings), "t-expiry", ttl_s=2), Lease(Store(settings), "t-expiry", ttl_s=2)
    try:
        assert leader.hold() and not standby.hold()
        assert leader.hold() and not standby.hold()  # renewed
        started = time.monotonic()
        while not standby.hold():  # the leader is silent from now on
            assert time.monotonic() - started < 30, "the lease never expired"
            time.sleep(0.2)
        assert not leader.hold(), "the old leader knows it lost the lease"
    finally:
        leader.release()
        standby.release()
