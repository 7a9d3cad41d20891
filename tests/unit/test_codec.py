"""The wire format: round trips, single-object framing, errors, schema history, and the Python Avro
reference implementation (the Java one is checked in test_codec_java.py)."""

from __future__ import annotations

import io
import json
import os
import shutil

import avro.io
import avro.schema
import numpy as np
import pytest

from infaas.schemas.codec import AVRO_DIR, HISTORY_DIR, Codec, DecodeError, EncodeError

CODEC = Codec()


def tensor(array: np.ndarray) -> dict:
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.tobytes()}


def sample_query(**changes) -> dict:
    query = {"query_id": "q-1", "app_id": "demo", "task": "digits-classification", "model": None, "variant": None,
             "inputs": tensor(np.arange(128, dtype=np.float32).reshape(2, 64)), "min_accuracy": 0.75,
             "latency_ms": 25.0, "max_cost": 0.5, "reply_topic": None, "sent_at": 1_795_000_000_123}
    query.update(changes)
    return query


def sample_result() -> dict:
    return {"query_id": "q-1", "app_id": "demo", "status": "OK", "error": None,
            "outputs": [tensor(np.array([3, 7], dtype=np.int64))], "model": "mlp", "variant": "mlp:ort:cpu-1t:b1",
            "hardware": "cpu", "accuracy": 0.96875, "latency_ms": 4.5, "queue_ms": 1.0, "compute_ms": 0.5,
            "best_accuracy_within_slo": None, "fastest_latency_ms": None, "completed_at": 1_795_000_000_200}


def test_round_trip_every_message_type():
    query = sample_query()
    assert CODEC.decode_as("Query", CODEC.encode("Query", query)) == query
    result = sample_result()
    assert CODEC.decode_as("Result", CODEC.encode("Result", result)) == result
    routed = {"query": query, "variant_id": "v", "deadline_at": 5, "dispatched_at": 4, "estimated_ms": 1.5,
              "reason": "active, cheapest meeting the SLO"}
    assert CODEC.decode_as("RoutedQuery", CODEC.encode("RoutedQuery", routed)) == routed


def test_header_is_single_object_encoding():
    data = CODEC.encode("Query", sample_query())
    assert data[:2] == b"\xc3\x01"
    assert int.from_bytes(data[2:10], "little") == CODEC.schema("Query").fingerprint


def test_reference_python_avro_decodes_the_body():
    for name, record in (("Query", sample_query()), ("Result", sample_result())):
        data = CODEC.encode(name, record)
        schema = avro.schema.parse(json.dumps(CODEC.schema(name).resolved))
        decoded = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
        assert decoded["query_id"] == record["query_id"]
        if name == "Query":
            assert decoded["inputs"]["data"] == record["inputs"]["data"]
        else:
            assert decoded["status"] == "OK" and decoded["outputs"][0]["shape"] == [2]


@pytest.mark.parametrize("data, reason", [
    (b"", "shorter than the 10-byte Avro header"),
    (b"hello world, not avro", "not Avro single-object encoding"),
    (b"\xc3\x01" + b"\x00" * 8 + b"body", "unknown schema fingerprint"),
])
def test_garbage_gives_one_clear_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        CODEC.decode(data)


def test_truncated_and_padded_messages_are_rejected():
    data = CODEC.encode("Query", sample_query())
    for cut in (1, 5, 20, len(data) - 11):
        with pytest.raises(DecodeError, match="malformed Query body"):
            CODEC.decode(data[:-cut])
    with pytest.raises(DecodeError, match="trailing bytes"):
        CODEC.decode(data + b"\x00\x00")


def test_random_bodies_never_escape_as_other_errors():
    header = CODEC.schema("Result").header
    rng = np.random.default_rng(7)
    rejected = 0
    for _ in range(2000):
        body = rng.integers(0, 256, size=int(rng.integers(0, 80)), dtype=np.uint8).tobytes()
        try:
            CODEC.decode(header + body)
        except DecodeError:
            rejected += 1
    assert rejected > 1900  # the rest happened to be valid Results


def test_wrong_type_is_reported():
    data = CODEC.encode("Result", sample_result())
    with pytest.raises(DecodeError, match="expected a Query message, got Result"):
        CODEC.decode(data, expected="Query")


def test_encode_rejects_records_that_do_not_fit():
    with pytest.raises(EncodeError):
        CODEC.encode("Query", {"query_id": "x"})


def test_every_current_schema_is_in_the_history():
    # A schema change must be recorded (`infaas schemas --freeze`) so old messages stay decodable.
    for name, version in CODEC.current.items():
        assert (HISTORY_DIR / name / f"{version.fingerprint:016x}.avsc").is_file(), name


def test_messages_of_an_older_schema_version_still_decode(tmp_path):
    """Schema evolution: a newer Query with an added field reads messages written with today's."""
    new_dir = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, new_dir)
    query_schema = json.loads((new_dir / "Query.avsc").read_text())
    query_schema["fields"].append({"name": "priority", "type": "int", "default": 3})
    (new_dir / "Query.avsc").write_text(json.dumps(query_schema))
    old_fp = CODEC.schema("Query").fingerprint
    os.makedirs(new_dir / "history" / "Query", exist_ok=True)
    newer = Codec(new_dir)
    assert newer.schema("Query").fingerprint != old_fp
    name, record = newer.decode(CODEC.encode("Query", sample_query()))
    assert name == "Query" and record["priority"] == 3 and record["query_id"] == "q-1"


def test_wrapping_an_encoded_query_gives_the_same_bytes_as_encoding_the_record():
    query = sample_query()
    stamp = {"variant_id": "v:ort-fp32:cpu-1t:b1", "deadline_at": 7, "dispatched_at": 6, "estimated_ms": 1.5,
             "reason": "active variant"}
    wrapped = CODEC.encode_wrapping("RoutedQuery", CODEC.encode("Query", query), stamp)
    assert wrapped == CODEC.encode("RoutedQuery", {"query": query, **stamp})
    assert CODEC.decode_as("RoutedQuery", wrapped)["query"] == query
    with pytest.raises(EncodeError, match="not a current Query"):
        CODEC.encode_wrapping("RoutedQuery", CODEC.encode("Result", sample_result()), stamp)
