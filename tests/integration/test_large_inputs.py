"""Image-sized queries: a 4 MiB input goes through the real pipeline (client, dispatcher, worker,
result), and a too-large one is answered BAD_INPUT naming the limit, by the dispatcher (over the
input limit) or by the client (over the Kafka message limit, so it is never sent)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from infaas.client import InfaasClient
from infaas.registration import register_model
from infaas.serve import Pipeline, ServeOptions
from tests.conftest import settings_env

TASK = "large-input-channels"
SAMPLE = (1, 1024, 1024)  # one float32 row is 4 MiB


def channel_model(path):
    """x[N, 1, 1024, 1024] -> the mean of each half of the image -> scores [N, 2]: which half is brighter."""
    nodes = [helper.make_node("Reshape", ["x", "halves"], ["h"]),
             helper.make_node("ReduceMean", ["h", "axes"], ["scores"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "halves", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SAMPLE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor("halves", TensorProto.INT64, [3], [0, 2, -1]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def bright_half(label: int, rng) -> np.ndarray:
    image = rng.random(SAMPLE, dtype=np.float32)
    half = SAMPLE[1] // 2
    rows = slice(0, half) if label == 0 else slice(half, None)
    image[0, rows] += 1.0
    return image


@pytest.fixture(scope="module")
def large_settings(settings):
    # Small limits keep the test light; the defaults (16 / 20 MiB) work the same way.
    return settings.replace(max_input_mb=5, max_message_mb=6, variant_batch_sizes=(1, 2),
                            variant_optimizers=("ort-fp32",), variant_threads=(1,))


@pytest.fixture(scope="module")
def served(large_settings, tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 4)
    np.savez(folder / "val.npz", inputs=np.stack([bright_half(int(y), rng) for y in labels]), labels=labels)
    report = register_model(large_settings, "demo", TASK, "halves", channel_model(folder / "halves.onnx"),
                            folder / "val.npz", public=True, quick=True)
    assert [acc for per_batch in report.accuracy.values() for acc in per_batch.values()] == [1.0, 1.0]
    b1 = next(v.variant_id for v in report.variants if v.batch_size == 1)
    with Pipeline(large_settings, ServeOptions(workers=1, preload=[b1], scaler=False),
                  env=settings_env(large_settings)):
        with InfaasClient(large_settings, app_id="demo", timeout_s=120) as client:
            yield client, rng


def test_a_4_mib_input_is_served_end_to_end(served):
    client, rng = served
    for label in (0, 1):
        result = client.query(bright_half(label, rng)[None], task=TASK)
        assert result.ok, result.error
        assert result.prediction.tolist() == [label]


def test_an_input_over_the_input_limit_is_bad_input_from_the_dispatcher(served):
    client, _ = served
    too_big = np.zeros((1, 1, 1024, 1300), dtype=np.float32)  # 5.1 MiB: fits a message, not the input limit
    result = client.query(too_big, task=TASK)
    assert result.status == "BAD_INPUT"
    assert "over the limit of 5242880 bytes (5 MiB)" in result.error


def test_a_query_over_the_message_limit_is_bad_input_without_being_sent(served):
    client, rng = served
    result = client.query(np.stack([bright_half(0, rng), bright_half(1, rng)]), task=TASK)  # 8 MiB
    assert result.status == "BAD_INPUT"
    assert "over the Kafka message limit of 6 MiB (setting max_message_mb)" in result.error
    assert result.query_id not in client._pending
