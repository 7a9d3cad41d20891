"""What the fuzz tests and the standalone fuzzer share: a dispatcher and a hosted variant over a
hand-set catalogue (no Kafka, no Cassandra), seed messages of every schema, and the oracles that
say what any output must look like, whatever the input was."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from infaas.catalog import TaskInfo, Variant
from infaas.consumers.admission import admit
from infaas.consumers.replica import HostedVariant
from infaas.policies.snapshot import Snapshot, WorkerLive
from infaas.schemas.codec import PRIMITIVES, DecodeError, default_codec
from infaas.settings import Settings
from infaas.streams.dispatcher import Dispatcher, Outgoing
from infaas.tensors import TensorError, from_tensor, to_tensor
from infaas.views import Catalog, SystemView

CODEC = default_codec()
STATUSES = tuple(CODEC.schema("Result").resolved["fields"][2]["type"]["symbols"])
# librdkafka's default message.max.bytes: the producer refuses a larger message outright, so an
# error result or dead letter bigger than this would stall the service that has to send it.
KAFKA_MAX_MESSAGE = 1_000_000
TASK = TaskInfo("digits", "pixels", "float32", (64,), 10)


def _variant(model: str, accuracy: float, slope: float, public: bool = True, app: str = "demo") -> Variant:
    return Variant(task="digits", variant_id=f"{model}:ort-fp32:cpu-1t:b8", model=model, model_version=1,
                   app_id=app, public=public, optimizer="ort-fp32", hardware="cpu", threads=1, batch_size=8,
                   artifact="", artifact_bytes=0, accuracy=accuracy, load_ms=100.0, latency_p50_ms=slope * 8,
                   latency_p99_ms=0.0, slope_ms=slope, intercept_ms=0.5, throughput_qps=0.0, peak_memory_mb=10.0,
                   cost_per_1k=0.01)


VARIANTS = {v.variant_id: v for v in (_variant("small", 0.90, 0.05), _variant("large", 0.98, 1.0),
                                      _variant("secret", 0.95, 0.3, public=False, app="other"))}
APPS = ("demo", "other")


def make_dispatcher(settings: Settings) -> Dispatcher:
    view = SystemView(settings)
    view.catalog = Catalog(apps=frozenset(APPS), tasks={TASK.task: TASK}, variants=VARIANTS,
                           models={v.model: (v.task, v.app_id, v.public) for v in VARIANTS.values()})
    view.snapshot = Snapshot(variants=VARIANTS, workers={"w1": WorkerLive("w1", "cpu", cpu_util=0.2)}, at_ms=1)
    return Dispatcher(settings, view)


def make_hosted() -> HostedVariant:
    """What a worker hosting the `small` variant holds; `admit` needs no executor."""
    return HostedVariant(VARIANTS["small:ort-fp32:cpu-1t:b8"], TASK, executor=None, load_ms=0.0, memory_mb=0.0)


# --- oracles ----------------------------------------------------------------------------------------
def check_outgoing(outgoing: Any, settings: Settings, payload: bytes) -> str:
    """What `Dispatcher.handle(payload)` returned must be one of three shapes; returns which.

    - routed: LOAD commands (if any), then the query on its variant's topic, unchanged;
    - an error Result on a reply topic, with a status that is not OK and an error text;
    - a DeadLetter with a reason.
    """
    assert isinstance(outgoing, list) and outgoing, outgoing
    assert all(isinstance(o, Outgoing) and isinstance(o.value, bytes) for o in outgoing), outgoing
    last = outgoing[-1]
    if last.topic.startswith(settings.topic("variant.")):
        for command in outgoing[:-1]:
            assert command.topic == settings.topic("control")
            assert CODEC.decode_as("WorkerCommand", command.value)["action"] == "LOAD"
        routed = CODEC.decode_as("RoutedQuery", last.value)
        assert last.topic == settings.variant_topic(routed["variant_id"]) and routed["variant_id"] in VARIANTS
        assert routed["query"] == CODEC.decode_as("Query", payload)
        assert routed["estimated_ms"] >= 0 and routed["reason"]
        return "routed"
    assert len(outgoing) == 1, [o.topic for o in outgoing]
    assert len(last.value) < KAFKA_MAX_MESSAGE, f"{len(last.value)}-byte message to {last.topic}"
    if last.topic == settings.topic("deadletter"):
        dead = CODEC.decode_as("DeadLetter", last.value)
        assert dead["reason"] and dead["service"] == "dispatcher"
        return "dead"
    assert last.topic.startswith(settings.topic("results.")), last.topic
    result = CODEC.decode_as("Result", last.value)
    # INTERNAL_ERROR is the dispatcher's catch-all for its own bugs: no input may reach it.
    assert result["status"] in STATUSES and result["status"] not in ("OK", "INTERNAL_ERROR"), result
    assert result["error"], result
    return result["status"]


def check_admitted(outcome: Any, routed: dict, settings: Settings) -> str:
    """What `admit(routed)` returned: a query to run that fits the task, or a BAD_INPUT answer."""
    query = routed["query"]
    topic = query["reply_topic"] or settings.results_topic(query["app_id"])
    if isinstance(outcome, dict):
        inputs = outcome["inputs"]
        assert outcome["topic"] == topic and outcome["rows"] == inputs.shape[0] >= 1
        assert inputs.dtype.name == TASK.input_dtype and inputs.shape[1:] == TASK.input_shape
        assert np.isfinite(inputs).all()
        return "run"
    answer_topic, result = outcome
    assert answer_topic == topic
    assert result.status == "BAD_INPUT" and result.error.startswith("inputs: "), result
    assert len(result.encode(CODEC)) < KAFKA_MAX_MESSAGE
    return "BAD_INPUT"


def tensors_in(name: str, record: dict) -> list[dict]:
    if name == "Tensor":
        return [record]
    if name == "Query":
        return [record["inputs"]]
    if name == "RoutedQuery":
        return [record["query"]["inputs"]]
    if name == "Result":
        return list(record["outputs"])
    return []


def one_input(data: bytes, dispatcher: Dispatcher) -> str:
    """Everything the services do with untrusted bytes, checked by the oracles; the outcome's name.

    Raises AssertionError (an oracle failed) or any unexpected exception: both are findings."""
    try:
        name, record = CODEC.decode(data)
    except DecodeError as err:
        assert err.reason
        name = "undecodable"
    else:
        for tensor in tensors_in(name, record):
            try:
                array = from_tensor(tensor)
            except TensorError as err:
                assert str(err)
            else:
                assert array.nbytes == len(tensor["data"])
        if name == "RoutedQuery":
            check_admitted(admit(record, make_hosted(), dispatcher.settings), record, dispatcher.settings)
    kind = check_outgoing(dispatcher.handle(data, ("fuzz", 0, 0)), dispatcher.settings, data)
    return f"{name}:{kind}"


# --- seeds ------------------------------------------------------------------------------------------
def named_types(schema: Any, named: dict | None = None) -> dict[str, Any]:
    """Every named type a resolved schema defines, by full name (later uses are only references)."""
    named = {} if named is None else named
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, named)
    elif isinstance(schema, dict):
        if schema["type"] in ("record", "error", "enum", "fixed"):
            named[schema["name"]] = schema
        for inner in [f["type"] for f in schema.get("fields", ())] + [schema.get("items"), schema.get("values")]:
            named_types(inner, named)
        if isinstance(schema["type"], (dict, list)):
            named_types(schema["type"], named)
    return named


def sample_record(schema: Any, rng: random.Random, named: dict | None = None) -> Any:
    """A random valid value of a resolved Avro schema (timestamps as plain longs, like the codec)."""
    named = named_types(schema) if named is None else named
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return _PRIMITIVE[schema](rng)
        return sample_record(named[schema], rng, named)
    if isinstance(schema, list):
        return sample_record(rng.choice(schema), rng, named)
    kind = schema["type"]
    if kind in ("record", "error"):
        return {f["name"]: sample_record(f["type"], rng, named) for f in schema["fields"]}
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "fixed":
        return rng.randbytes(schema["size"])
    if kind == "array":
        return [sample_record(schema["items"], rng, named) for _ in range(rng.randrange(3))]
    if kind == "map":
        return {_text(rng): sample_record(schema["values"], rng, named) for _ in range(rng.randrange(3))}
    return sample_record(kind, rng, named)  # {"type": "long", "logicalType": ...}


def _text(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-.:é€") for _ in range(rng.randrange(12)))


_PRIMITIVE = {
    "null": lambda rng: None, "boolean": lambda rng: rng.random() < 0.5,
    "int": lambda rng: rng.choice([0, 1, -1, 2**31 - 1, -2**31, rng.randrange(-1000, 1000)]),
    "long": lambda rng: rng.choice([0, 1, -1, 2**63 - 1, -2**63, rng.randrange(-10**6, 10**6)]),
    "float": lambda rng: rng.choice([0.0, 0.5, -1.0, 1e30, rng.uniform(-1e3, 1e3)]),
    "double": lambda rng: rng.choice([0.0, 0.5, -1.0, 1e300, rng.uniform(-1e3, 1e3)]),
    "bytes": lambda rng: rng.randbytes(rng.randrange(16)), "string": _text,
}


def good_query(**changes: Any) -> dict:
    record = {"query_id": "q1", "app_id": "demo", "task": "digits", "model": None, "variant": None,
              "inputs": to_tensor(np.zeros((2, 64), np.float32)), "min_accuracy": None, "latency_ms": 50.0,
              "max_cost": None, "reply_topic": None, "sent_at": 1_000}
    record.update(changes)
    return record


def seed_messages(seed: int = 0) -> list[bytes]:
    """Valid messages: realistic queries and answers, and a few random records of every schema."""
    rng = random.Random(seed)
    query = good_query()
    routed = {"query": query, "variant_id": "small:ort-fp32:cpu-1t:b8", "deadline_at": 1_050,
              "dispatched_at": 1_001, "estimated_ms": 0.9, "reason": "active, cheapest"}
    seeds = [CODEC.encode("Query", query),
             CODEC.encode("Query", good_query(task=None, model="large", min_accuracy=0.97, max_cost=1.0)),
             CODEC.encode("Query", good_query(task=None, variant="small:ort-fp32:cpu-1t:b8", latency_ms=None,
                                              inputs=to_tensor(np.ones((1, 64), np.float32)))),
             CODEC.encode("RoutedQuery", routed)]
    for name, version in sorted(CODEC.current.items()):
        seeds += [CODEC.encode(name, sample_record(version.resolved, rng)) for _ in range(3)]
    return seeds
