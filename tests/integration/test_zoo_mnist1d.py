"""The mnist1d zoo (the demo's): deterministic training and export, standard ONNX, registrable.

The full zoo's trade-offs (accuracy and latency spread) are measured by `infaas zoo build`; these
tests train the quick zoo on a small generated set, so they stay fast."""

import onnx
import onnxruntime as ort
import pytest

from infaas.registration import zoo_mnist1d
from infaas.registration.zoo import build_zoo, zoos

SMALL = 1000  # generated signals for the tests (the zoo uses 6,000)
STANDARD_OPS = {"Reshape", "Conv", "Relu", "MaxPool", "Flatten", "MatMul", "Add", "Softmax", "ArgMax", "Pad", "Slice",
                "Concat", "ReduceMean"}


def _accuracy(path, folder) -> float:
    import numpy as np
    with np.load(folder / "validation.npz") as data:
        inputs, labels = data["inputs"], data["labels"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(np.mean(session.run(["label"], {"signal": inputs})[0] == labels))


@pytest.mark.timeout(900)  # jax compiles each network's training step once per export
def test_same_seed_same_bytes_and_accuracies(tmp_path):
    models = ("logreg", "cnn-small")
    first = zoo_mnist1d.export_zoo(tmp_path / "a", quick=True, samples=SMALL, names=models[:2])
    second = zoo_mnist1d.export_zoo(tmp_path / "b", quick=True, samples=SMALL, names=models[:2])
    assert set(first) == set(models[:2])
    assert (tmp_path / "a" / "validation.npz").read_bytes() == (tmp_path / "b" / "validation.npz").read_bytes()
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
        assert _accuracy(first[name], tmp_path / "a") == _accuracy(second[name], tmp_path / "b")
    other = zoo_mnist1d.export_zoo(tmp_path / "c", quick=True, samples=SMALL, seed=1, names=("cnn-small",))
    assert other["cnn-small"].read_bytes() != first["cnn-small"].read_bytes()  # the seed is used


@pytest.mark.timeout(900)
def test_graphs_use_standard_operators_and_real_convolutions(tmp_path, monkeypatch):
    files = zoo_mnist1d.export_zoo(tmp_path, quick=True, samples=SMALL, names=("logreg", "cnn", "cnn-large-tta"))
    for name, path in files.items():
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        ops = {node.op_type for node in model.graph.node}
        assert ops <= STANDARD_OPS, ops - STANDARD_OPS
        assert ("Conv" in ops) == name.startswith("cnn")
    conv = next(i for i in onnx.load(str(files["cnn"])).graph.initializer if i.name == "k0")
    assert tuple(conv.dims) == (32, 1, 5)  # trained kernels: 32 filters over the 1-channel signal
    tta = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(files["cnn-large-tta"])).graph.initializer}
    assert tta["k0"].shape == (64, 1, 5) and tta["k2"].shape == (128, 128, 5)  # the larger network
    # test-time augmentation: the TTA model's logits are the mean of its network's over the shifted signals
    import numpy as np
    large = zoo_mnist1d.CNN_LARGE
    weights = [(tta[f"k{i}"], tta[f"kb{i}"]) for i in range(len(large.channels))] + [(tta["w0"], tta["b0"])]
    monkeypatch.setattr(zoo_mnist1d, "_train", lambda *args: weights)
    alone = zoo_mnist1d._convnet("large", large)(None, None, True, 0, lambda *a: None)
    with np.load(tmp_path / "validation.npz") as data:
        x = data["inputs"][:16]
    network = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"])
    shift = zoo_mnist1d.SHIFT
    padded = np.pad(x, ((0, 0), (shift, shift)))
    copies = [padded[:, shift - s: shift - s + zoo_mnist1d.LENGTH] for s in zoo_mnist1d.TTA_SHIFTS]
    logits = np.mean([np.log(network.run(["probabilities"], {"signal": c})[0]) for c in copies], axis=0)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = ort.InferenceSession(str(files["cnn-large-tta"]), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"signal": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_quick_zoo_registers_under_its_own_task(settings, store, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_mnist1d, "SAMPLES", SMALL)
    narrow = settings.replace(variant_batch_sizes=(1,), variant_optimizers=("ort-fp32",), variant_threads=(1,))
    reports = build_zoo(narrow, quick=True, names=("logreg", "cnn-small"), store=store, zoo="mnist1d")
    # model names are global: the mnist1d zoo's are prefixed, so both zoos register side by side
    assert [r.model.model for r in reports] == ["m1d-logreg", "m1d-cnn-small"]
    task = store.get_task(zoo_mnist1d.TASK)
    assert (task.input_name, task.input_shape, task.num_classes) == ("signal", (40,), 10)
    assert {v.model for v in store.variants_for_task(zoo_mnist1d.TASK)} == {"m1d-logreg", "m1d-cnn-small"}
    assert zoos()["mnist1d"].task != zoos()["digits"].task  # the test suite's digits zoo is untouched
    with pytest.raises(ValueError, match="unknown zoo 'nope'"):
        build_zoo(narrow, zoo="nope", store=store)


def test_one_progress_bar_for_the_whole_zoo():
    from infaas.registration.zoo import PROGRESS_UNITS, _ZooProgress
    seen = []
    progress = _ZooProgress(lambda what, done, total: seen.append((done, total)), training_share=0.5, models=2)
    for epoch in range(1, 5):
        progress.training("training cnn", epoch, 4)
    for index in range(2):
        step = progress.registering(index, f"m{index}")
        for done in range(4):
            step("profiling", done, 3)
    progress.finish()
    done = [d for d, _ in seen]
    assert {t for _, t in seen} == {PROGRESS_UNITS} and done == sorted(done)  # one scale, never backwards
    assert done[3] == PROGRESS_UNITS // 2 and done[-1] == PROGRESS_UNITS
