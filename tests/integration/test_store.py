"""Every table of the metadata store, written and read back through the real Cassandra."""

import time

import pytest

from infaas.catalog import ModelInfo, ProfilePoint, TaskInfo, Variant
from infaas.store import BufferedWriter, Store, now_ms
from tests.conftest import free_port


def make_variant(task="t-store", vid="m:ort-fp32:cpu-1t:b4", **changes) -> Variant:
    values = dict(task=task, variant_id=vid, model="m", model_version=1, app_id="demo", public=True,
                  optimizer="ort-fp32", hardware="cpu", threads=1, batch_size=4, artifact="file:///x",
                  artifact_bytes=10, accuracy=0.9, load_ms=50.0, latency_p50_ms=2.0, latency_p99_ms=3.0,
                  slope_ms=0.4, intercept_ms=0.4, throughput_qps=2000.0, peak_memory_mb=30.0, cost_per_1k=0.001,
                  source="measured", profiled_at=1_700_000_000_000)
    values.update(changes)
    return Variant(**values)


def test_apps_tasks_models(store):
    store.put_app("demo", "the demo app")
    assert store.get_app("demo")["description"] == "the demo app"
    assert store.get_app("nobody") is None
    store.put_task(TaskInfo("t-store", "x", "float32", (64,), 10))
    assert store.get_task("t-store") == TaskInfo("t-store", "x", "float32", (64,), 10,
                                                 store.get_task("t-store").created_at)
    for version in (1, 2):
        store.put_model(ModelInfo("t-store", "m", version, "demo", True, "mlp", f"file:///m{version}", "ab" * 32,
                                  100, "top1", 0.9 + version / 100, "x", ("label",)))
    latest = store.get_model("m")
    assert latest.version == 2 and abs(latest.accuracy - 0.92) < 1e-6 and latest.output_names == ("label",)
    assert store.get_model("m", 1).artifact == "file:///m1"
    assert [m.version for m in store.models_for_task("t-store")] == [2, 1]


def test_variants_and_profiles(store):
    variants = [make_variant(vid=f"m:ort-fp32:cpu-1t:b{b}", batch_size=b) for b in (1, 2, 4)]
    for v in variants:
        store.put_variant(v)
    back = {v.variant_id: v for v in store.variants_for_task("t-store")}
    assert set(back) >= {v.variant_id for v in variants}
    assert back["m:ort-fp32:cpu-1t:b2"] == variants[1]
    point = ProfilePoint("m:ort-fp32:cpu-1t", 8, 1.5, 2.5, 1.6, 5000.0, 200)
    store.put_profile(point)
    assert store.profiles("m:ort-fp32:cpu-1t") == [point]
    store.delete_variants("t-store", ["m:ort-fp32:cpu-1t:b1"])
    assert "m:ort-fp32:cpu-1t:b1" not in {v.variant_id for v in store.variants_for_task("t-store")}


def test_dynamic_state_rows(store):
    now = now_ms()
    store.put_variant_state({"variant_id": "v1", "task": "t", "state": "ACTIVE", "replicas": 2,
                             "workers": ["w1", "w2"], "qps": 10.0, "avg_latency_ms": 3.0, "queue_len": 1,
                             "updated_at": now}).result()
    assert [s for s in store.variant_states() if s["variant_id"] == "v1"][0]["workers"] == ["w1", "w2"]
    store.put_worker({"worker_id": "w1", "hardware": "cpu", "host": "h", "pid": 1, "started_at": now,
                      "last_heartbeat": now, "variants": {"v1": 2}, "cpu_util": 0.5, "gpu_util": None,
                      "memory_mb": 100.0, "memory_budget_mb": 1000.0, "status": "up"}).result()
    assert [w for w in store.workers() if w["worker_id"] == "w1"][0]["variants"] == {"v1": 2}


def test_load_windows_have_a_ttl(store, settings):
    start = now_ms() // 1000 * 1000
    store.put_load_window({"scope": "VARIANT", "key": "v1", "window_s": 1, "window_start": start, "served": 5,
                           "errors": 0, "deadline_missed": 1, "qps": 5.0, "avg_latency_ms": 2.0, "p99_ms": 4.0,
                           "max_queue_len": 2, "avg_util": 0.0}).result()
    rows = store.load_windows("VARIANT", "v1", 1)
    assert rows and rows[0]["served"] == 5 and rows[0]["window_start"] == start
    ttl = store.load_window_ttl("VARIANT", "v1", 1, start)
    assert 0 < ttl <= settings.load_window_ttl_s


def test_scaling_events_newest_first(store):
    base = now_ms()
    for i in range(3):
        store.put_scaling_event({"at": base + i, "event_id": f"e{i}", "kind": "ADD_REPLICA", "policy": "infaas",
                                 "variant_id": "v1", "from_count": i, "to_count": i + 1,
                                 "reason": f"demand {i}"}).result()
    events = [e for e in store.scaling_events(since_ms=base) if e["event_id"].startswith("e")]
    assert [e["event_id"] for e in events][:3] == ["e2", "e1", "e0"]


def test_offline_jobs_and_chunks(store):
    store.put_job({"job_id": "j1", "app_id": "demo", "task": "t", "input_url": "file:///in.npy",
                   "output_url": "file:///out.npy", "status": "QUEUED", "chunks": 2, "chunk_size": 64, "rows": 100,
                   "submitted_at": now_ms()})
    store.put_chunk({"job_id": "j1", "chunk": 0, "status": "DONE", "worker_id": "w1"})
    assert store.get_job("j1")["status"] == "QUEUED"
    assert [c["chunk"] for c in store.chunks("j1")] == [0]


def _window(key: str, start: int | None) -> dict:
    return {"scope": "VARIANT", "key": key, "window_s": 1, "window_start": start, "served": 3, "errors": 0,
            "deadline_missed": 0, "qps": 3.0, "avg_latency_ms": 2.0, "p99_ms": 4.0, "max_queue_len": 0,
            "avg_util": 0.0}


def _wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_buffered_writer_drops_a_row_cassandra_refuses_and_writes_the_rows_behind_it(settings):
    """A permanent error (a null clustering key: InvalidRequest) is dropped and counted; it must not be
    retried forever ahead of the good rows."""
    start = now_ms() // 1000 * 1000
    writer = BufferedWriter(Store(settings), retry_s=0.2)
    try:
        writer.submit("put_load_window", _window("refused-then-good", None))
        for i in range(3):
            writer.submit("put_load_window", _window("refused-then-good", start + i * 1000))
        _wait_until(lambda: writer.pending == 0)
        assert (writer.rejected, writer.written, writer.retries) == (1, 3, 0)
    finally:
        writer.close()
    with Store(settings) as store:
        rows = store.load_windows("VARIANT", "refused-then-good", 1)
    assert sorted(r["window_start"] for r in rows) == [start, start + 1000, start + 2000]


def test_buffered_writer_keeps_rows_while_cassandra_is_away(settings):
    """A transient error (nothing listens on the port) keeps the row queued and retries it."""
    away = settings.replace(cassandra_port=free_port())
    writer = BufferedWriter(Store(away, connect_timeout=1.0), retry_s=0.1)
    try:
        writer.submit("put_load_window", _window("away", now_ms()))
        _wait_until(lambda: writer.retries >= 2)
        assert (writer.pending, writer.rejected, writer.written) == (1, 0, 0)
    finally:
        writer.close(timeout=0)


def test_a_missing_keyspace_is_a_clear_error(settings):
    from infaas.store import StoreError
    with Store(settings.replace(keyspace="no_such_keyspace_here")) as store:
        with pytest.raises(StoreError, match="keyspace no_such_keyspace_here does not exist .*run `infaas init`"):
            store.list_apps()


def test_select_reads_every_page(store):
    variants = [make_variant(task="t-pages", vid=f"m:ort-fp32:cpu-1t:b{b}", batch_size=b) for b in range(1, 31)]
    for v in variants:
        store.put_variant(v)
    store.session.default_fetch_size = 7  # five pages
    try:
        rows = store.select("SELECT * FROM {ks}.variants WHERE task = ?", "t-pages")
    finally:
        store.session.default_fetch_size = 5000
    assert sorted(r["variant_id"] for r in rows) == sorted(v.variant_id for v in variants)


def test_a_read_leaves_no_rows_to_the_garbage_collector(store):
    """The driver's response future and its timeout timer form a reference cycle: the page it held
    stayed in memory until a full collection, and the catalogue, read every few seconds, piled up.
    With the collector off, the memory reads leave behind must be far below what one read's rows take."""
    import gc
    import tracemalloc
    wide = "x" * 20_000  # rows that take clearly measurable memory
    for b in range(1, 31):
        store.put_variant(make_variant(task="t-wide", vid=f"m:ort-fp32:cpu-1t:b{b}", artifact=wide + str(b)))
    assert len(store.select("SELECT * FROM {ks}.variants WHERE task = ?", "t-wide")) == 30
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            rows = store.select("SELECT * FROM {ks}.variants WHERE task = ?", "t-wide")
        del rows
        left = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    one_read = 30 * len(wide)
    assert left < one_read, f"20 reads left {left / 1e3:.0f} kB behind (one read's rows: {one_read / 1e3:.0f} kB)"
