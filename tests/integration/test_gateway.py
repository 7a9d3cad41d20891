"""The KServe V2 gateway, driven by the real `tritonclient[http]` client, in front of the real pipeline
(dispatcher and a worker on Kafka, Cassandra and ONNX Runtime)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from infaas.registration import RegistrationError, register_model
from infaas.registration.zoo import APP, export_zoo
from infaas.scaler.processes import ServiceProcess
from infaas.serve import Pipeline, ServeOptions
from tests.conftest import ZOO_TASK, settings_env


@pytest.fixture(scope="module")
def served(settings, zoo):
    _, variants = zoo
    cheapest = min(variants.values(), key=lambda v: (v.cost_per_1k, v.variant_id))
    pipeline = Pipeline(settings, ServeOptions(workers=1, preload=[cheapest.variant_id], scaler=False),
                        env=settings_env(settings))
    pipeline.start()
    gateway = ServiceProcess("gateway", ["gateway", "--port", "0", "--app", APP, "--timeout", "60"],
                             settings.state_dir / "logs" / "test-gateway", settings_env(settings)).start()
    try:
        gateway.wait_ready(120)
        url = gateway.ready_line.split("http://")[1].split("/v2")[0]
        yield url, variants, cheapest
    finally:
        gateway.stop()
        pipeline.stop()


@pytest.fixture(scope="module")
def client(served):
    url, _, _ = served
    with triton.InferenceServerClient(url, network_timeout=90, connection_timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def digits():
    from infaas.registration.zoo import digits_split
    _, _, x_valid, y_valid = digits_split()
    return x_valid, y_valid


def infer(client, name, x, binary=True, **parameters):
    tensor = triton.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    return client.infer(name, [tensor], outputs=outputs, parameters=parameters or None)


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value.status(), raised.value.message()


def test_health_and_metadata(client, served):
    _, variants, cheapest = served
    assert client.is_server_live()
    assert client.is_server_ready(), urllib.request.urlopen(f"http://{served[0]}/v2/health/ready").read()
    for name in (ZOO_TASK, "mlp-large", cheapest.variant_id):
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
        assert {o["name"]: (o["datatype"], o["shape"][1:]) for o in meta["outputs"]}["probabilities"] == ("FP32", [10])
    assert client.get_model_metadata("mlp-large")["versions"] == ["1"]
    assert not client.is_model_ready("no-such-model")


def test_model_less_with_requirements(client, served, digits):
    _, variants, _ = served
    x, y = digits
    best = max(v.accuracy for v in variants.values())
    answer = infer(client, ZOO_TASK, x[:4], min_accuracy=best, latency_ms=5000)
    parameters = answer.get_response()["parameters"]
    assert variants[parameters["variant"]].accuracy >= best - 1e-6
    assert set(parameters) >= {"variant", "accuracy", "latency_ms", "queue_ms", "compute_ms"}
    scores = answer.as_numpy("probabilities")
    assert scores.shape == (4, 10) and scores.dtype == np.float32
    assert (scores.argmax(axis=1) == y[:4]).mean() >= 0.5
    loose = infer(client, ZOO_TASK, x[:1], binary=False)  # the JSON form of tensors
    assert loose.as_numpy("probabilities").shape == (1, 10)


def test_model_and_variant_specific(client, served, digits):
    _, variants, cheapest = served
    x, _ = digits
    by_model = infer(client, "mlp-small", x[:2]).get_response()
    assert variants[by_model["parameters"]["variant"]].model == "mlp-small"
    assert by_model["model_name"] == "mlp-small" and by_model["model_version"] == "1"
    by_variant = infer(client, cheapest.variant_id, x[:1]).get_response()
    assert by_variant["parameters"]["variant"] == cheapest.variant_id


def test_errors_map_to_http_statuses_and_the_gateway_goes_on(client, served, digits):
    url, _, _ = served
    x, _ = digits
    assert status_of(lambda: infer(client, "no-such-model", x[:1]))[0] == "404"
    status, message = status_of(lambda: infer(client, ZOO_TASK, x[:1, :10]))
    assert status == "400" and "shape" in message
    status, message = status_of(lambda: infer(client, ZOO_TASK, x[:1], min_accuracy=1.0, latency_ms=5000))
    assert status == "422" and "best accuracy possible within the latency: 0." in message, message
    status, message = status_of(lambda: infer(client, ZOO_TASK, x[:1], min_accuracy=0.5, latency_ms=0.001))
    assert status == "422" and "fastest latency at the accuracy (ms): " in message, message
    status, _ = status_of(lambda: infer(client, ZOO_TASK, x[:1], min_accuracy="high"))
    assert status == "400"
    for body in (b"{not json", b"[1, 2]", json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64],
                                                                  "datatype": "FP32", "data": [1.0] * 63}]}).encode()):
        request = urllib.request.Request(f"http://{url}/v2/models/{ZOO_TASK}/infer", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=30)
        assert raised.value.code == 400 and "error" in json.loads(raised.value.read())
    head = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 256}}]}).encode()
    request = urllib.request.Request(f"http://{url}/v2/models/{ZOO_TASK}/infer", data=head + bytes(100), method="POST",
                                     headers={"Inference-Header-Content-Length": str(len(head))})
    with pytest.raises(urllib.error.HTTPError) as raised:  # fewer binary bytes than the shape needs
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 400 and "binary" in json.loads(raised.value.read())["error"]
    assert infer(client, ZOO_TASK, x[:1]).as_numpy("probabilities").shape == (1, 10)


def test_registration_refuses_a_model_named_like_a_task(settings, zoo, tmp_path):
    files = export_zoo(tmp_path, quick=True, names=("logreg",))
    with pytest.raises(RegistrationError, match="name of a task"):
        register_model(settings, APP, ZOO_TASK, "logistic-regression", files["logreg"], tmp_path / "validation.npz",
                       name=ZOO_TASK, quick=True)
    with pytest.raises(RegistrationError, match="name of a model"):
        register_model(settings, APP, "mlp-large", "logistic-regression", files["logreg"],
                       tmp_path / "validation.npz", name="other-logreg", quick=True)


def test_bench_gateway_reports_overhead_and_throughput(settings, served, digits):
    from infaas.benchmarks import bench_gateway
    from infaas.client import InfaasClient
    _, _, cheapest = served
    x, _ = digits
    lines = []
    with InfaasClient(settings, app_id=APP, timeout_s=60) as kafka_client:
        report = bench_gateway(settings, kafka_client, cheapest, x, quick=True, say=lines.append)
    assert report["gateway"]["n"] == report["client"]["n"] == 100
    assert report["queries_per_s"] > 0 and report["queries"] == 1000
    assert report["gateway"]["p50_ms"] > 0 and "queries/s" in lines[-1]
    print("\n".join(lines))


def test_gateway_metrics_and_status(settings, served):
    from prometheus_client.parser import text_string_to_metric_families

    from infaas.status import services
    rows = [row for row in services(settings) if row["service"] == "gateway"]
    assert rows and rows[0]["health"] == rows[0]["ready"] == "ok", rows
    text = urllib.request.urlopen(rows[0]["metrics_url"], timeout=10).read().decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    codes = {s.labels["code"] for s in samples if s.name == "infaas_gateway_requests_total"}
    assert {"200", "400", "404", "422"} <= codes
    assert any(s.name == "infaas_gateway_latency_ms_count" and s.value > 0 for s in samples)
