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


# --- a new version under load ----------------------------------------------------------------------
SWITCH_TASK, SWITCH_MODEL = "lifecycle-switch", "switching-tiny"


def test_new_version_takes_over_under_load_without_a_failed_query(narrow, tmp_path):
    """Queries flow to a model while version 2 is registered: every one is answered OK; answers come
    from version 1 until version 2 is registered (rows written after its profiling), then from
    version 2, which the worker loaded beside version 1 before retiring it."""
    import threading

    import numpy as np
    import onnxruntime as ort

    from infaas.client import InfaasClient
    from infaas.serve import Pipeline, ServeOptions
    from tests.unit.test_executors import tiny_model

    rng = np.random.default_rng(5)
    np.savez(tmp_path / "val.npz", inputs=rng.standard_normal((40, 8)).astype(np.float32),
             labels=rng.integers(0, 3, 40))
    paths = [tiny_model(tmp_path / f"v{v}.onnx", inputs=8, classes=3, seed=v) for v in (1, 2)]
    probes = rng.standard_normal((200, 8)).astype(np.float32)
    tops = [ort.InferenceSession(str(p)).run(None, {"x": probes})[0].argmax(axis=1) for p in paths]
    row = int(np.flatnonzero(tops[0] != tops[1])[0])  # an input the two versions answer differently
    x, answer_of = probes[row:row + 1], {int(tops[0][row]): 1, int(tops[1][row]): 2}

    first = register_model(narrow, APP, SWITCH_TASK, "tiny", paths[0], tmp_path / "val.npz", name=SWITCH_MODEL,
                           quick=True)
    variant_id = first.variants[0].variant_id
    running = Pipeline(narrow, ServeOptions(workers=1, preload=[variant_id], scaler=False, ready_timeout_s=150),
                       env=settings_env(narrow))
    logs_before = {p: p.stat().st_size for p in running.log_dir.glob("*.log")}  # earlier runs' lines
    running.start()
    answers: list = []  # (version that answered, result), in the order the results arrived
    stop = threading.Event()

    def load(client: InfaasClient) -> None:
        while not stop.is_set():
            futures = [client.submit(x, model=SWITCH_MODEL) for _ in range(5)]
            for future in futures:
                result = client.wait(future)
                answers.append((answer_of.get(int(result.prediction[0])) if result.ok else None, result))

    try:
        with InfaasClient(narrow, app_id=APP, timeout_s=60) as client:
            sender = threading.Thread(target=load, args=(client,), daemon=True)
            sender.start()
            _wait_for(lambda: sum(v == 1 for v, _ in answers) >= 20, 120, "version 1 answering")
            registered_at = len(answers)  # no version-2 row exists yet: every answer so far is version 1's
            second = register_model(narrow, APP, SWITCH_TASK, "tiny", paths[1], tmp_path / "val.npz",
                                    name=SWITCH_MODEL, quick=True)
            assert second.model.version == 2 and {v.variant_id for v in second.variants} >= {variant_id}
            _wait_for(lambda: sum(v == 2 for v, _ in answers[registered_at:]) >= 30, 120, "version 2 answering")
            stop.set()
            sender.join(90)
    finally:
        stop.set()
        running.stop()
    failed = [r for v, r in answers if v is None]
    assert not failed, f"{len(failed)} of {len(answers)} queries failed, e.g. {failed[0].status}: {failed[0].error}"
    versions = [v for v, _ in answers]
    assert set(versions[:registered_at]) == {1}  # nothing switched before version 2 was registered
    switched = versions.index(2)
    assert set(versions[switched + 20:]) == {2}, "version 1 still answered well after version 2 took over"
    new_lines = "".join(p.read_bytes()[logs_before.get(p, 0):].decode(errors="replace")
                        for p in running.log_dir.glob("*worker*.log"))
    assert f"reloaded {variant_id}: version 1 -> 2" in new_lines


def _wait_for(condition, seconds: float, what: str) -> None:
    import time
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
