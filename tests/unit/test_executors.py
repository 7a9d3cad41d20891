"""Executors: the same artifact, loaded the way workers and the profiler load it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from infaas.catalog import Variant
from infaas.consumers.executors import (
    ExecutorError,
    OrtExecutor,
    available_backends,
    gpu_names,
    open_executor,
)
from infaas.registration.variants import build_artifacts
from infaas.settings import load_settings


def tiny_model(path, inputs: int = 16, classes: int = 4, seed: int = 0):
    """x[N, inputs] -> MatMul -> Add -> Relu -> MatMul -> Softmax: a small real graph."""
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.standard_normal((inputs, 32)).astype(np.float32), "w0"),
               numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b0"),
               numpy_helper.from_array(rng.standard_normal((32, classes)).astype(np.float32), "w1")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("Add", ["h", "b0"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w1"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def variant(optimizer: str, hardware: str = "cpu", threads: int = 1, batch: int = 8) -> Variant:
    return Variant(task="t", variant_id=f"tiny:{optimizer}:{hardware}:b{batch}", model="tiny", model_version=1,
                   app_id="a", public=True, optimizer=optimizer, hardware=hardware, threads=threads,
                   batch_size=batch, artifact="", artifact_bytes=0, accuracy=0, load_ms=0, latency_p50_ms=0,
                   latency_p99_ms=0, slope_ms=0, intercept_ms=0, throughput_qps=0, peak_memory_mb=0, cost_per_1k=0)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("executors")
    model = tiny_model(folder / "tiny.onnx")
    settings = load_settings(environ={}, home=str(folder))
    built = {"onnx": model}
    for optimizer in ("ort-fp32", "ort-int8", "tvm"):
        built[optimizer] = build_artifacts(optimizer, model, folder / optimizer, settings, (1, 8))[None]
    return built


def reference(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("optimizer, threads", [("ort-fp32", 1), ("ort-fp32", 2), ("ort-int8", 1), ("tvm", 1),
                                                ("tvm", 2)])
def test_every_cpu_executor_matches_onnxruntime(artifacts, optimizer, threads):
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    expected = reference(artifacts["onnx"], x)
    with open_executor(variant(optimizer, threads=threads), artifacts[optimizer]) as executor:
        assert executor.input_name == "x"
        for rows in (1, 3, 8):  # any batch up to the variant's size
            out = executor.run(x[:rows])
            assert out[0].shape == (rows, 4)
            if optimizer == "ort-int8":  # quantized: the same decision, not the same digits
                assert (out[0].argmax(1) == expected[:rows].argmax(1)).mean() >= 0.75
            else:
                np.testing.assert_allclose(out[0], expected[:rows], rtol=1e-4, atol=1e-5)


def test_executor_refuses_bad_batches(artifacts):
    with OrtExecutor(artifacts["ort-fp32"]) as executor:
        with pytest.raises(ValueError, match="batch-first"):
            executor.run(np.zeros((0, 16), np.float32))


def test_unknown_optimizer_and_missing_artifact(artifacts, tmp_path):
    with pytest.raises(ExecutorError, match="no executor for optimizer 'magic'"):
        open_executor(variant("magic"), artifacts["onnx"])
    with pytest.raises(ExecutorError, match="does not exist"):
        open_executor(variant("ort-fp32"), tmp_path / "missing.onnx")


def test_available_backends_say_why_not():
    backends = available_backends()
    assert backends["ort-fp32:cpu"] is None and backends["ort-int8:cpu"] is None and backends["tvm:cpu"] is None
    gpu_keys = ("ort-cuda-fp32:gpu", "ort-cuda-fp16:gpu", "ort-trt-fp16:gpu", "trt:gpu")
    assert set(gpu_keys) <= set(backends)
    if not gpu_names():  # this host: never faked, each GPU backend says why it is missing
        assert all(backends[k] == "not available on this host: no CUDA device" for k in gpu_keys)
    for key in gpu_keys:
        assert backends[key] is None or backends[key].startswith("not available on this host")


@pytest.mark.skipif(bool(gpu_names()), reason="checks the refusal on a host without a GPU")
def test_gpu_variant_is_refused_without_a_gpu(artifacts):
    with pytest.raises(ExecutorError, match="lacks CUDAExecutionProvider"):
        open_executor(variant("ort-cuda-fp32", hardware="gpu-t4"), artifacts["onnx"])


@pytest.mark.parametrize("optimizer", ["ort-fp32", "ort-int8", "tvm"])
def test_every_cpu_executor_names_its_outputs(artifacts, optimizer):
    """Offline jobs write each output under its name: an executor with no names wrote nothing. TVM
    modules keep no output names: they are given (the model's), else numbered."""
    x = np.zeros((2, 16), np.float32)
    with open_executor(variant(optimizer), artifacts[optimizer], output_names=("probabilities",)) as executor:
        assert executor.output_names == ("probabilities",)
        assert len(executor.run(x)) == 1
    if optimizer == "tvm":
        with open_executor(variant(optimizer), artifacts[optimizer]) as executor:
            assert len(executor.run(x)) == len(executor.output_names) == 1
            assert executor.output_names == ("output_0",)
