"""A compute-heavy reference model: a deep stack of wide layers with random weights (milliseconds a
row on one core), and a validation set labelled by the model itself (so its measured accuracy is
1.0 by construction). The load one small machine can generate then needs several replicas: the
scaling and overload tests, and the pipeline benchmark's compute-bound case, use it."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

INPUT = 64


def build(directory: Path, layers: int = 12, width: int = 1024, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    nodes, weights, last = [], [], "x"
    sizes = [INPUT] + [width] * layers + [10]
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w = (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"h{i}"]))
        last = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    nodes.append(helper.make_node("Softmax", [last], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", INPUT])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    model_path = directory / "slow.onnx"
    onnx.save(model, model_path)
    # Validation labels are the model's own predictions on random inputs: a real, measurable set.
    inputs = rng.normal(size=(64, INPUT)).astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"x": inputs})[0].argmax(axis=1)
    validation_path = directory / "slow-validation.npz"
    np.savez(validation_path, inputs=inputs, labels=labels)
    return model_path, validation_path
