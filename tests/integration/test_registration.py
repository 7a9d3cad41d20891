"""Model registration against the real Cassandra, ONNX Runtime and TVM: the demo zoo end to end,
then every way a registration must be refused without leaving anything behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import infaas
from infaas.consumers.executors import open_executor
from infaas.hardware import cost_per_1k
from infaas.proteus_profiles import linear_fit
from infaas.registration import RegistrationError, register_model
from infaas.registration import profiler as profiler_module
from infaas.registration.variants import thread_counts
from infaas.registration.zoo import APP, TASK, ZOO, build_zoo
from infaas.repository import Repository
from tests.conftest import settings_env
from tests.unit.test_executors import tiny_model

OPTIMIZERS = ("ort-fp32", "ort-int8", "tvm")


@pytest.fixture(scope="module")
def settings(settings, tmp_path_factory):
    """This module's own keyspace and repository: other modules also register the zoo (same names)
    in the session keyspace, and this module checks first registrations, versions and rollbacks."""
    from infaas.store import Store
    own = settings.replace(keyspace=f"{settings.keyspace}_reg",
                           repository_url=f"file://{tmp_path_factory.mktemp('registration-repo')}")
    with Store(own) as store:
        store.apply_schema()
    yield own
    with Store(own) as store:
        store.session.execute(f"DROP KEYSPACE IF EXISTS {own.keyspace}", timeout=60)


@pytest.fixture
def store(settings):
    from infaas.store import Store
    with Store(settings) as s:
        yield s


@pytest.fixture(scope="module")
def zoo(settings, tmp_path_factory):
    """The quick demo zoo, registered once for this module (files kept for re-registration)."""
    folder = tmp_path_factory.mktemp("zoo")
    reports = build_zoo(settings, quick=True, directory=folder)
    return {r.model.model: r for r in reports}, folder


def repository_files(settings) -> set[Path]:
    root = Path(settings.model_repository_url[len("file://"):])
    return {p for p in root.rglob("*") if p.is_file()}


def snapshot(store, settings) -> dict:
    """Everything a registration could write: rows of every catalogue table and repository objects."""
    variants = store.all_variants()
    return {"apps": sorted(a["app_id"] for a in store.list_apps()),
            "tasks": sorted(t.task for t in store.list_tasks()),
            "models": sorted((m.model, m.version) for m in store.list_models()),
            "variants": sorted(v.variant_id for v in variants),
            "profiles": sorted((p.variant_id, p.batch_size) for b in {v.base_id for v in variants}
                               for p in store.profiles(b)),
            "objects": repository_files(settings)}


# --- the zoo ----------------------------------------------------------------------------------------
def test_zoo_registers_every_variant_with_measured_numbers(zoo, store, settings):
    reports, _ = zoo
    assert set(reports) == {z.name for z in ZOO}
    batches = settings.variant_batch_sizes
    threads = thread_counts(settings)
    variants = [v for v in store.variants_for_task(TASK) if v.app_id == APP]
    assert len(variants) == len(ZOO) * len(OPTIMIZERS) * len(threads) * len(batches)
    for v in variants:
        assert v.variant_id == f"{v.model}:{v.optimizer}:cpu-{v.threads}t:b{v.batch_size}"
        assert v.source == "measured" and v.public and v.hardware == "cpu" and v.optimizer in OPTIMIZERS
        assert v.latency_p50_ms > 0 and v.latency_p99_ms >= v.latency_p50_ms and v.load_ms > 0
        assert v.peak_memory_mb >= 0 and v.artifact_bytes > 0
        assert v.throughput_qps == pytest.approx(v.batch_size * 1000 / v.latency_p50_ms)
        assert v.cost_per_1k == pytest.approx(cost_per_1k("cpu", v.threads, v.batch_size, v.latency_p50_ms))
        assert Repository.from_settings(settings).exists(v.artifact)
    for base in {v.base_id for v in variants}:  # profile rows, and the fit over them
        points = sorted(store.profiles(base), key=lambda p: p.batch_size)
        assert [p.batch_size for p in points] == sorted(batches)
        slope, intercept = linear_fit([p.batch_size for p in points], [p.p50_ms for p in points])
        mine = [v for v in variants if v.base_id == base]
        assert all(v.slope_ms == pytest.approx(slope) and v.intercept_ms == pytest.approx(intercept) for v in mine)
        assert {v.batch_size: v.latency_p50_ms for v in mine} == {p.batch_size: p.p50_ms for p in points}
    task = store.get_task(TASK)
    assert (task.input_name, task.input_dtype, task.input_shape, task.num_classes) == ("pixels", "float32", (64,), 10)


def test_zoo_spans_a_real_accuracy_and_latency_range(zoo, store):
    reports, _ = zoo
    accuracy = {name: r.model.accuracy for name, r in reports.items()}
    assert all(0.9 <= a <= 1.0 for a in accuracy.values()), accuracy
    largest = max(v.batch_size for v in reports["logreg"].variants)
    at_largest = {v.model: v.latency_p50_ms for v in store.variants_for_task(TASK)
                  if v.optimizer == "ort-fp32" and v.threads == 1 and v.batch_size == largest}
    # two 1024-wide layers against one 64x10 layer: at the largest batch the gap is measurable
    assert at_largest["mlp-large"] > 5 * at_largest["logreg"], at_largest


def test_registered_accuracy_equals_an_independent_recomputation(zoo, store, settings):
    """Fetch the stored model and validation set, run plain onnxruntime, compare with the catalogue."""
    reports, _ = zoo
    repository = Repository.from_settings(settings)
    for name in reports:
        model = store.get_model(name)
        with np.load(repository.fetch(model.validation_artifact), allow_pickle=False) as data:
            inputs, labels = data["inputs"], data["labels"]
        session = ort.InferenceSession(str(repository.fetch(model.artifact)), providers=["CPUExecutionProvider"])
        probabilities = session.run(["probabilities"], {"pixels": inputs})[0]
        assert model.accuracy == pytest.approx(float(np.mean(probabilities.argmax(1) == labels)), abs=1e-12)
        assert model.sha256 == reports[name].model.sha256 and model.metric == "top1"


def test_every_variant_loads_and_agrees_with_fp32(zoo, store, settings):
    """Each stored variant, opened as a worker would, gives the fp32 model's top-1 on >= 95% of inputs."""
    reports, _ = zoo
    repository = Repository.from_settings(settings)
    agreement: dict[str, list[float]] = {}
    for name in reports:
        model = store.get_model(name)
        with np.load(repository.fetch(model.validation_artifact), allow_pickle=False) as data:
            inputs = data["inputs"]
        session = ort.InferenceSession(str(repository.fetch(model.artifact)), providers=["CPUExecutionProvider"])
        reference = session.run(["probabilities"], {"pixels": inputs})[0].argmax(1)
        for v in store.variants_for_model(TASK, name):
            with open_executor(v, repository.fetch(v.artifact)) as executor:
                assert executor.input_name == "pixels"
                top = np.concatenate([executor.run(inputs[i:i + v.batch_size])[0].argmax(1)
                                      for i in range(0, len(inputs), v.batch_size)])
            share = float(np.mean(top == reference))
            assert share >= 0.95, f"{v.variant_id}: top-1 agreement {share:.4f}"
            agreement.setdefault(v.optimizer, []).append(share)
            assert reports[name].agreement[f"{v.optimizer}:cpu"][v.batch_size] == pytest.approx(share)
    print({k: (min(v), max(v)) for k, v in agreement.items()})  # shown with -s: the measured agreement
    assert min(agreement["ort-fp32"]) == 1.0 and min(agreement["tvm"]) == 1.0


def test_reregistering_the_same_file_changes_nothing(zoo, store, settings):
    reports, folder = zoo
    before = snapshot(store, settings)
    again = register_model(settings, APP, TASK, "logistic-regression", folder / "logreg.onnx",
                           folder / "validation.npz", public=True, quick=True, name="logreg", store=store)
    assert again.unchanged and again.model.version == 1 and "already registered" in again.summary()
    assert len(again.variants) == len(reports["logreg"].variants)
    assert snapshot(store, settings) == before


def test_new_bytes_under_the_same_name_are_a_new_version(store, settings, tmp_path):
    model_path = tiny_model(tmp_path / "v1.onnx", inputs=16, classes=4)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "val.npz", inputs=rng.standard_normal((40, 16)).astype(np.float32),
             labels=rng.integers(0, 4, 40))
    small = settings.replace(variant_batch_sizes=(1, 4), variant_optimizers=("ort-fp32", "ort-int8"))
    first = register_model(small, "app-v", "versions-task", "tiny-mlp", model_path, tmp_path / "val.npz",
                           quick=True, store=store)
    second_path = tiny_model(tmp_path / "v2.onnx", inputs=16, classes=4, seed=9)
    second = register_model(small.replace(variant_batch_sizes=(2,)), "app-v", "versions-task", "tiny-mlp",
                            second_path, tmp_path / "val.npz", quick=True, store=store)
    assert (first.model.version, second.model.version) == (1, 2) and not second.unchanged
    assert first.new_app and first.new_task and not second.new_task
    current = store.variants_for_model("versions-task", "tiny-mlp")
    assert {v.model_version for v in current} == {2} and {v.batch_size for v in current} == {2}
    assert {p.batch_size for p in store.profiles("tiny-mlp:ort-fp32:cpu-1t")} == {2}  # no stale points
    assert [m["version"] for m in store.model_versions("tiny-mlp")] == [2, 1]
    assert not first.model.public and not second.variants[0].visible_to("other-app")


def test_package_exports_register_model_lazily():
    code = "import sys, infaas; assert 'infaas.registration' not in sys.modules; infaas.register_model; " \
           "assert 'infaas.registration' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert infaas.register_model is register_model


# --- refusals: a clear message, nothing written ------------------------------------------------------
@pytest.fixture
def good_files(tmp_path):
    rng = np.random.default_rng(0)
    model = tiny_model(tmp_path / "m.onnx", inputs=16, classes=4)
    np.savez(tmp_path / "val.npz", inputs=rng.standard_normal((20, 16)).astype(np.float32),
             labels=rng.integers(0, 4, 20))
    return model, tmp_path / "val.npz"


def _refused(store, settings, message, model, validation, **kwargs):
    before = snapshot(store, settings)
    options = {"task": "refusals-task", "store": store, "quick": True, **kwargs}
    task = options.pop("task")
    with pytest.raises(RegistrationError, match=message):
        register_model(settings, "refused-app", task, "tiny", model, validation, **options)
    assert snapshot(store, settings) == before


def test_bad_onnx_bytes_are_refused(store, settings, good_files, tmp_path):
    _, validation = good_files
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    _refused(store, settings, "not an ONNX model", garbage, validation)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _refused(store, settings, "is empty", empty, validation)


def test_checker_failures_and_unsupported_models_are_refused(store, settings, good_files, tmp_path):
    model_path, validation = good_files
    model = onnx.load(str(model_path))
    model.graph.node[0].input[1] = "nowhere"  # an undefined tensor: the checker must refuse it
    onnx.save(model, str(tmp_path / "broken.onnx"))
    _refused(store, settings, "fails the ONNX checker", tmp_path / "broken.onnx", validation)

    custom = onnx.load(str(model_path))
    custom.graph.node[2].domain = "com.example"
    custom.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(custom, str(tmp_path / "custom.onnx"))
    _refused(store, settings, "custom domain.*com.example", tmp_path / "custom.onnx", validation)

    fixed = onnx.load(str(model_path))
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    _refused(store, settings, "fixed batch dimension", tmp_path / "fixed.onnx", validation)
    tiny_limit = settings.replace(max_model_mb=1)
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\x00" * ((1 << 20) + 1))
    _refused(store, tiny_limit, "over the limit of 1 MiB", big, validation)


def test_mismatched_validation_sets_are_refused(store, settings, good_files, tmp_path):
    model, _ = good_files
    rng = np.random.default_rng(0)
    cases = {
        "per-sample shape \\(8,\\)": dict(inputs=rng.standard_normal((10, 8)).astype(np.float32),
                                        labels=rng.integers(0, 4, 10)),
        "inputs are float64": dict(inputs=rng.standard_normal((10, 16)), labels=rng.integers(0, 4, 10)),
        "10 inputs but 7 labels": dict(inputs=rng.standard_normal((10, 16)).astype(np.float32),
                                       labels=rng.integers(0, 4, 7)),
        "outside the model's 4 classes \\(0..3\\): 10 of 10 labels, the first at row 0 \\(9\\)":
            dict(inputs=rng.standard_normal((10, 16)).astype(np.float32), labels=np.full(10, 9)),
        "range -1..3.*1 of 10 labels, the first at row 4 \\(-1\\)":
            dict(inputs=rng.standard_normal((10, 16)).astype(np.float32), labels=np.array([0, 1, 2, 3, -1, 0, 1, 2, 3, 0])),
        "shape \\(10, 4, 4\\).*takes \\[batch, 16\\]": dict(inputs=rng.standard_normal((10, 4, 4)).astype(np.float32),
                                                       labels=rng.integers(0, 4, 10)),
        "labels must be a 1-D integer array, got float64": dict(inputs=rng.standard_normal((10, 16)).astype(np.float32),
                                                                labels=np.zeros(10)),
        "lacks array\\(s\\) labels": dict(inputs=rng.standard_normal((10, 16)).astype(np.float32)),
        "non-numeric": dict(inputs=np.array([{"pickled": "object"}] * 10, dtype=object),
                            labels=rng.integers(0, 4, 10)),
    }
    for index, (message, arrays) in enumerate(cases.items()):
        path = tmp_path / f"bad{index}.npz"
        np.savez(path, **arrays)
        _refused(store, settings, message, model, path)
    not_npz = tmp_path / "val.npz.txt"
    not_npz.write_text("inputs,labels\n")
    _refused(store, settings, "not an .npz archive", model, not_npz)


def test_unknown_hardware_and_bad_names_are_refused(store, settings, good_files):
    model, validation = good_files
    _refused(store, settings, "unknown hardware 'gpu-imaginary'.*catalogue has: cpu", model, validation,
             hardware=["cpu", "gpu-imaginary"])
    _refused(store, settings, "task name 'Bad Task' is invalid", model, validation, task="Bad Task")
    _refused(store, settings, "metric 'top3' is not supported", model, validation, metric="top3")


def test_another_signature_for_an_existing_task_is_refused(zoo, store, settings, good_files):
    model, validation = good_files  # 16 inputs, 4 classes: not the digits task's pixels[64] -> 10
    _refused(store, settings, "task 'digits-classification' fixes the input signature.*input_name 'x'.*"
             "input_shape \\(16,\\)", model, validation, task=TASK)


def test_a_model_name_of_another_app_or_task_is_refused(zoo, store, settings):
    _, folder = zoo
    _refused(store, settings, "model name 'logreg' belongs to app 'demo'", folder / "logreg.onnx",
             folder / "validation.npz", task=TASK, name="logreg")
    _refused(store, settings, "model name 'logreg' is already registered for task 'digits-classification'",
             folder / "logreg.onnx", folder / "validation.npz", task="another-digits-task", name="logreg")


def test_a_failure_after_writing_started_is_rolled_back(store, settings, good_files, monkeypatch):
    """Profiling crashes after artifacts were stored: the objects and rows this run made are removed."""
    model, validation = good_files
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("profiler fell over")
    monkeypatch.setattr(profiler_module, "profile_base", crash)
    _refused(store, settings, "failed and was rolled back: RuntimeError: profiler fell over", model, validation,
             task="rollback-task")
    assert calls, "the failure must come from inside the registration, after validation"
    assert store.get_task("rollback-task") is None and store.get_app("refused-app") is None


# --- command line -----------------------------------------------------------------------------------
def infaas_cli(settings, *args, check=True, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "infaas", *args], env={**settings_env(settings), **(env or {})},
                            capture_output=True, text=True, timeout=240)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_cli_lists_the_zoo_as_json_and_tables(zoo, settings):
    records = json.loads(infaas_cli(settings, "variants", "--task", TASK, "--json").stdout)
    zoo_rows = [r for r in records if r["app_id"] == APP]
    assert len(zoo_rows) == len(ZOO) * len(OPTIMIZERS) * len(thread_counts(settings)) * \
        len(settings.variant_batch_sizes)
    required = {"variant", "model", "task", "optimizer", "hardware", "batch", "accuracy", "latency_ms", "load_ms",
                "cost_per_1k", "artifact", "source", "state"}
    assert all(required <= set(r) for r in records)
    assert {r["source"] for r in zoo_rows} == {"measured"} and {r["state"] for r in zoo_rows} == {"INACTIVE"}
    assert all(r["artifact"].startswith("file://") for r in zoo_rows)
    table = infaas_cli(settings, "variants", "--task", TASK).stdout
    assert "mlp-large" in table and "ort-int8" in table and "not available on this host" in table
    models = json.loads(infaas_cli(settings, "models", "--json").stdout)
    assert {m["model"] for m in models if m["task"] == TASK} >= {z.name for z in ZOO}
    assert "registered models" in infaas_cli(settings, "models").stdout


def test_cli_register_reports_clear_errors(settings, tmp_path):
    garbage = tmp_path / "x.onnx"
    garbage.write_bytes(b"nope")
    result = infaas_cli(settings, "register", "--app", "cli-app", "--task", "cli-task", "--arch", "x", "--model",
                        str(garbage), "--validation", str(tmp_path / "none.npz"), check=False)
    assert result.returncode == 1 and "not an ONNX model" in result.stderr and "Traceback" not in result.stderr


def test_cli_register_a_model(settings, good_files):
    model, validation = good_files
    small = {"INFAAS_VARIANT_BATCH_SIZES": "1,4", "INFAAS_VARIANT_OPTIMIZERS": "ort-fp32"}
    out = json.loads(infaas_cli(settings, "register", "--app", "cli-app", "--task", "cli-task", "--arch",
                                "tiny-mlp", "--name", "cli-tiny", "--model", str(model), "--validation", str(validation), "--public",
                                "--quick", "--json", env=small).stdout)
    assert out["model"]["model"] == "cli-tiny" and out["model"]["architecture"] == "tiny-mlp"
    assert out["model"]["public"] is True
    assert {v["batch"] for v in out["variants"]} == {1, 4} and {v["optimizer"] for v in out["variants"]} == {
        "ort-fp32"}
    assert "cli-tiny:ort-fp32:cpu-1t:b1" in {v["variant"] for v in out["variants"]}


def test_cli_imports_public_profiles(settings, proteus_data_set):
    csv = proteus_data_set.profiles
    summary = json.loads(infaas_cli(settings, "profiles", "import", str(csv), "--json").stdout)
    rows_in_file = len(csv.read_text().splitlines()) - 1
    least = 500 if proteus_data_set.kind == "real" else rows_in_file  # the real file has rows of other accelerators
    assert least <= summary["imported"] <= rows_in_file and summary["source"] == "imported"
    rows = json.loads(infaas_cli(settings, "variants", "--task", "resnet", "--json").stdout)
    assert rows and {r["source"] for r in rows} == {"imported"} and all(r["artifact"] == "" for r in rows)
