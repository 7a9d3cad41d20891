"""Offline (batch) queries on real workers: correct output, pause under online load, and a worker
killed mid-job (another takes its chunk over when the lease passes)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from infaas import offline
from infaas.client import InfaasClient
from infaas.consumers.executors import open_executor
from infaas.repository import Repository
from infaas.serve import Pipeline, ServeOptions
from infaas.store import Store
from tests.conftest import ZOO_TASK, settings_env


@pytest.fixture(scope="module")
def rows(tmp_path_factory, zoo):
    inputs = np.random.default_rng(3).uniform(0, 16, size=(300, 64)).astype(np.float32)
    path = tmp_path_factory.mktemp("batch") / "inputs.npy"
    np.save(path, inputs)
    return inputs, f"file://{path}"


@pytest.fixture(scope="module")
def workers(settings):
    """Two workers that take batch chunks; leases short so a dead worker's chunk moves quickly."""
    options = ServeOptions(workers=2, scaler=False, worker_extra=["--offline-cpu-threshold", "0.9"])
    env = {**settings_env(settings), "INFAAS_OFFLINE_LEASE_S": "3"}
    running = Pipeline(settings, options, env=env)
    running.start()
    yield running
    running.stop()


def test_batch_output_equals_online_answers(settings, workers, rows, tmp_path):
    inputs, url = rows
    out = tmp_path / "out.npz"
    job = offline.submit(settings, "demo", url, f"file://{out}", task=ZOO_TASK, min_accuracy=0.96, chunk_size=64)
    assert job["chunks"] == 5
    status = offline.wait_for(settings, job["job_id"], timeout_s=120)
    assert status["status"] == "DONE", status
    with Store(settings) as store:
        variant = next(v for v in store.variants_for_task(ZOO_TASK) if v.variant_id == job["variant_id"])
    assert variant.accuracy >= 0.96
    produced = np.load(out)
    executor = open_executor(variant, Repository.from_settings(settings).fetch(variant.artifact))
    direct = executor.run(inputs[:variant.batch_size])
    np.testing.assert_allclose(produced[executor.output_names[0]][:variant.batch_size], direct[0], rtol=1e-5,
                               atol=1e-6)
    # and what an online query returns for the same rows (the same batch: int8 variants quantize
    # their activations per batch, so only the same batch gives the same numbers)
    with InfaasClient(settings, app_id="demo", timeout_s=60) as client:
        online = client.query(inputs[:variant.batch_size], variant=variant.variant_id)
    assert online.ok
    np.testing.assert_allclose(produced[executor.output_names[0]][:variant.batch_size], online.outputs[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["ort-fp32", "ort-int8", "tvm"])
def test_offline_output_equals_online_answers_on_every_variant_kind(settings, workers, zoo, rows, tmp_path, optimizer):
    """The job runs on the variant asked for; every output of the model is written, under the model's
    output names, and equals what online queries on the same variant return (batch by batch: int8
    variants quantize activations per batch)."""
    _, variants = zoo
    kind = [v for v in variants.values() if v.optimizer == optimizer and v.threads == 1]
    assert kind, f"the zoo registered no {optimizer} variant"
    variant = min(kind, key=lambda v: (v.batch_size != 8, v.batch_size, v.variant_id))
    with Store(settings) as store:
        model = store.get_model(variant.model, variant.model_version)
    inputs, url = rows
    out = tmp_path / f"{optimizer}.npz"
    job = offline.submit(settings, "demo", url, f"file://{out}", variant=variant.variant_id, chunk_size=64)
    assert job["variant_id"] == variant.variant_id
    status = offline.wait_for(settings, job["job_id"], timeout_s=180)
    assert status["status"] == "DONE", status
    produced = np.load(out)
    assert list(produced.keys()) == list(model.output_names)
    batch = variant.batch_size
    with InfaasClient(settings, app_id="demo", timeout_s=120) as client:
        for start in (0, 64, 64 + batch):  # batches inside the first chunk and at the start of the second
            online = client.query(inputs[start:start + batch], variant=variant.variant_id)
            assert online.ok, online.error
            assert len(online.outputs) == len(model.output_names)
            for name, answer in zip(model.output_names, online.outputs, strict=True):
                np.testing.assert_allclose(produced[name][start:start + batch], answer, rtol=1e-5, atol=1e-5)
        assert all(len(produced[name]) == len(inputs) for name in model.output_names)


def test_bad_jobs_are_refused(settings, rows, tmp_path):
    _, url = rows
    with pytest.raises(offline.OfflineError, match="NO_FEASIBLE_VARIANT"):
        offline.submit(settings, "demo", url, f"file://{tmp_path}/o.npy", task=ZOO_TASK, min_accuracy=0.9999)
    with pytest.raises(offline.OfflineError, match="cannot read"):
        offline.submit(settings, "demo", f"file://{tmp_path}/missing.npy", f"file://{tmp_path}/o.npy", task=ZOO_TASK)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3), np.float32))
    with pytest.raises(offline.OfflineError, match="does not match the task"):
        offline.submit(settings, "demo", f"file://{wrong}", f"file://{tmp_path}/o.npy", task=ZOO_TASK)
    with pytest.raises(offline.OfflineError, match="file:///PATH or s3://"):
        offline.submit(settings, "demo", url, "ftp://x/o.npy", task=ZOO_TASK)


def test_worker_killed_mid_job_resumes_elsewhere(settings, workers, rows, tmp_path):
    inputs, _ = rows
    big = tmp_path / "big.npy"
    np.save(big, np.tile(inputs, (20, 1)))  # 6,000 rows in 94 chunks
    job = offline.submit(settings, "demo", f"file://{big}", f"file://{tmp_path}/big-out.npy", task=ZOO_TASK,
                         chunk_size=64)
    victim = None
    deadline = time.monotonic() + 60
    with Store(settings) as store:  # one session: a chunk is RUNNING for milliseconds, so poll fast
        while victim is None and time.monotonic() < deadline:
            status = offline.job_status(store, job["job_id"])
            assert status["status"] != "DONE", "the job ended before a chunk was seen running (make it bigger)"
            victim = next((name for name in status["running_on"] if name in workers.services), None)
            time.sleep(0.01)
    assert victim, "no worker took a chunk"
    workers.services[victim].kill()
    status = offline.wait_for(settings, job["job_id"], timeout_s=180)
    assert status["status"] == "DONE", status
    assert np.load(tmp_path / "big-out.npy").shape[0] == 6000
