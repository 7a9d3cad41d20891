"""Model and app deletion on the real stack: rows, repository objects, topics, and a worker that hosted
the model's variant unloads it (after draining) and lives on."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest

from infaas import bus
from infaas.lifecycle import LifecycleError, delete_app, delete_model
from infaas.registration import register_model
from infaas.registration.zoo import export_zoo
from infaas.repository import Repository
from infaas.scaler.processes import ServiceProcess
from tests.conftest import settings_env

TASK, MODEL, APP = "lifecycle-digits", "doomed-logreg", "lifecycle-app"


@pytest.fixture(scope="module")
def narrow(settings):
    return settings.replace(variant_optimizers=("ort-fp32",), variant_batch_sizes=(1,), variant_threads=(1,))


@pytest.fixture(scope="module")
def two_versions(narrow, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lifecycle")
    path = export_zoo(folder, quick=True, names=("logreg",))["logreg"]
    reports = []
    for version in (1, 2):
        model = onnx.load(str(path))
        model.doc_string = f"version {version}"  # new bytes: a new version
        onnx.save(model, str(folder / f"v{version}.onnx"))
        reports.append(register_model(narrow, APP, TASK, "logistic-regression", folder / f"v{version}.onnx",
                                      folder / "validation.npz", name=MODEL, quick=True))
    assert [r.model.version for r in reports] == [1, 2]
    return reports


def hosted_by(store, worker_id: str) -> dict:
    rows = [w for w in store.workers() if w["worker_id"] == worker_id]
    return (rows[0].get("variants") or {}) if rows else {}


def test_older_version_deleted_alone(narrow, two_versions, store):
    old, new = two_versions
    with pytest.raises(LifecycleError, match="newest"):
        delete_model(narrow, MODEL, 2)
    done = delete_model(narrow, MODEL, 1)
    assert done.versions == [1] and done.variants == []
    assert [v["version"] for v in store.model_versions(MODEL)] == [2]
    repository = Repository.from_settings(narrow)
    assert not repository.exists(old.model.artifact)
    assert repository.exists(new.model.validation_artifact)  # the same bytes: still referenced by version 2
    assert store.variants_for_model(TASK, MODEL)


def test_model_deleted_while_a_worker_hosts_it(narrow, two_versions, store):
    _, new = two_versions
    variant = new.variants[0]
    with pytest.raises(LifecycleError, match="owns model"):
        delete_app(narrow, APP)
    worker = ServiceProcess("lifecycle-worker", ["worker", "--worker-id", "lifecycle-w1", "--variants",
                                                 variant.variant_id], narrow.state_dir / "logs" / "test-lifecycle",
                            settings_env(narrow)).start()
    try:
        worker.wait_ready(120)
        assert variant.variant_id in hosted_by(store, "lifecycle-w1") or _wait_hosting(store, variant.variant_id)
        out = subprocess.run([sys.executable, "-m", "infaas", "models", "delete", MODEL], env=settings_env(narrow),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "unloaded from 1 replica set" in out.stdout and "its task" in out.stdout, out.stdout
        assert variant.variant_id not in hosted_by(store, "lifecycle-w1")
        assert worker.alive
    finally:
        worker.stop()
    assert store.model_versions(MODEL) == [] and store.variants_for_model(TASK, MODEL) == []
    assert store.get_task(TASK) is None and store.profiles(variant.base_id) == []
    repository = Repository.from_settings(narrow)
    assert not any(repository.exists(url) for url in (variant.artifact, new.model.artifact))
    assert narrow.variant_topic(variant.variant_id) not in bus.existing_topics(narrow)


def test_app_deleted_with_its_topics(narrow, two_versions, store):
    bus.ensure_topics(narrow, {narrow.results_topic(APP): bus.TopicSpec(1)})
    if store.model_versions(MODEL):
        delete_model(narrow, MODEL)
    assert narrow.results_topic(APP) in delete_app(narrow, APP)
    assert store.get_app(APP) is None
    with pytest.raises(LifecycleError, match="no app"):
        delete_app(narrow, APP)


def _wait_hosting(store, variant_id: str, timeout_s: float = 30.0) -> bool:
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if variant_id in hosted_by(store, "lifecycle-w1"):
            return True
        time.sleep(0.5)
    return False
