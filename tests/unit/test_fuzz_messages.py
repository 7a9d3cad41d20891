"""Bad input, fuzzed (issue #7 §3): properties of the decoder, the tensor checks, the dispatcher and
the worker's admission over random and mutated messages. Whatever the bytes, the answer is a record
or a DecodeError, a TensorError, a routed query, an error result with a clear status, or a dead
letter; never another exception, and never an allocation the size of what a message claims.

Hypothesis runs derandomized (the same examples on every run) and without its example database, so
the suite is reproducible; tests/fuzz/fuzz_decoder.py is the open-ended fuzzer for longer runs."""

from __future__ import annotations

import io
import json
import math
import shutil
import tracemalloc

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infaas.consumers.admission import admit
from infaas.schemas.codec import (
    AVRO_DIR,
    HEADER_LEN,
    MAGIC,
    PRIMITIVES,
    Codec,
    DecodeError,
)
from infaas.settings import load_settings
from infaas.streams.dispatcher import MAX_ECHO, MAX_TIMESTAMP_MS
from infaas.tensors import DTYPES, MAX_DIMS, TensorError, check_header, check_input, from_tensor, to_tensor
from tests.fuzz import fuzz_decoder
from tests.fuzz.harness import (
    CODEC,
    KAFKA_MAX_MESSAGE,
    STATUSES,
    TASK,
    VARIANTS,
    check_admitted,
    check_outgoing,
    good_query,
    make_dispatcher,
    make_hosted,
    named_types,
    one_input,
)

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMES = sorted(CODEC.current)
SETTINGS = load_settings()  # what conftest's base_settings is; hypothesis tests take no fixtures
MB = 1 << 20


# --- strategies -------------------------------------------------------------------------------------
def avro_values(schema, named: dict | None = None) -> st.SearchStrategy:
    """Any valid value of a resolved Avro schema, extremes included (NaN floats, 2**63-1 longs)."""
    named = named_types(schema) if named is None else named
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return _PRIMITIVES[schema]
        return st.deferred(lambda: avro_values(named[schema], named))
    if isinstance(schema, list):
        return st.one_of([avro_values(branch, named) for branch in schema])
    kind = schema["type"]
    if kind in ("record", "error"):
        return st.fixed_dictionaries({f["name"]: avro_values(f["type"], named) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(avro_values(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), avro_values(schema["values"], named), max_size=3)
    return avro_values(kind, named)


_PRIMITIVES = {"null": st.none(), "boolean": st.booleans(), "int": st.integers(-2**31, 2**31 - 1),
               "long": st.integers(-2**63, 2**63 - 1), "float": st.floats(width=32), "double": st.floats(),
               "bytes": st.binary(max_size=40), "string": st.text(max_size=20)}


def messages(names=NAMES) -> st.SearchStrategy[bytes]:
    """Valid single-object messages of any of `names`."""
    return st.sampled_from(names).flatmap(
        lambda name: avro_values(CODEC.current[name].resolved).map(lambda record: CODEC.encode(name, record)))


@st.composite
def mutated(draw) -> bytes:
    """A valid message after 1-4 random edits: bit flips, truncation, extension, overwrites, splices."""
    data = bytearray(draw(messages()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "overwrite", "insert", "delete", "varint"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:  # an extreme varint where a length, count or index may be: huge or negative
            data[at:at] = zigzag(draw(st.sampled_from([-1, -2, -2**31, 2**31, 2**62, -2**63, 2**63 - 1])))
    return bytes(data)


def zigzag(value: int) -> bytes:
    """An Avro int/long: zigzag, then base-128 varint."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(text: str) -> bytes:
    raw = text.encode()
    return zigzag(len(raw)) + raw


def decode_or_error(data) -> tuple[str, dict] | DecodeError:
    """The decoder's contract: a (name, record) or a DecodeError with a reason, nothing else."""
    try:
        name, record = CODEC.decode(data)
    except DecodeError as err:
        assert err.reason
        return err
    assert name in CODEC.current and isinstance(record, dict)
    return name, record


# --- the decoder ------------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.sampled_from(NAMES), st.binary(max_size=200))
                 .map(lambda pair: CODEC.schema(pair[0]).header + pair[1])))
def test_any_bytes_are_a_record_or_a_decode_error(data):
    """Random bytes, and random bodies behind a valid header (else the body is never reached)."""
    decode_or_error(data)


def test_non_bytes_and_short_input_are_decode_errors():
    for value in (None, "c301", 42, [0xC3, 0x01], b"", MAGIC, MAGIC + b"\0" * 7):
        with pytest.raises(DecodeError):
            CODEC.decode(value)


@FUZZ
@given(st.sampled_from(NAMES).flatmap(lambda name: st.tuples(st.just(name), avro_values(CODEC.current[name].resolved))))
def test_every_valid_record_round_trips(case):
    """The generator is real: every record it makes encodes, decodes and re-encodes to the same bytes."""
    name, record = case
    data = CODEC.encode(name, record)
    decoded_name, decoded = CODEC.decode(data)
    assert decoded_name == name and CODEC.encode(name, decoded) == data


@FUZZ
@given(messages(), st.data())
def test_a_strict_prefix_or_an_extension_is_always_refused(data, draw):
    """Avro's binary form is self-delimiting for a given schema: a valid message cut short or with
    bytes appended can never be another valid message."""
    cut = draw.draw(st.integers(0, len(data) - 1))
    assert isinstance(decode_or_error(data[:cut]), DecodeError)
    assert isinstance(decode_or_error(data + draw.draw(st.binary(min_size=1, max_size=64))), DecodeError)


@FUZZ
@given(mutated())
def test_mutated_messages_meet_every_oracle(data):
    """Bit flips, truncations, extensions, splices and extreme varints in valid messages of every
    schema: the decoder, the tensor checks, the worker's admission and the dispatcher all answer."""
    one_input(data, make_dispatcher(SETTINGS))


@FUZZ
@given(messages(), st.binary(min_size=8, max_size=8))
def test_an_unknown_fingerprint_is_refused(data, fingerprint):
    known = {v.fingerprint for v in CODEC.by_fingerprint.values()}
    if int.from_bytes(fingerprint, "little") in known:
        fingerprint = bytes(8)  # 0 is no schema's fingerprint
    error = decode_or_error(data[:2] + fingerprint + data[HEADER_LEN:])
    assert isinstance(error, DecodeError) and "unknown schema fingerprint" in error.reason


@FUZZ
@given(messages(), st.sampled_from(NAMES))
def test_another_schemas_fingerprint_never_crashes_and_expected_is_enforced(data, other):
    """A body relabelled as another schema: that schema's record or a DecodeError, never a crash."""
    relabelled = CODEC.schema(other).header + data[HEADER_LEN:]
    outcome = decode_or_error(relabelled)
    assert isinstance(outcome, DecodeError) or outcome[0] == other
    name = CODEC.decode(data)[0]
    wrong = next(n for n in NAMES if n != name)
    with pytest.raises(DecodeError, match=f"expected a {wrong} message, got {name}"):
        CODEC.decode(data, expected=wrong)


def result_bytes(status_index: int, error_branch: int = 0) -> bytes:
    """A Result written by hand, so that the enum index and the union branch can be anything."""
    body = (avro_string("q1") + avro_string("demo") + zigzag(status_index) + zigzag(error_branch)
            + (avro_string("boom") if error_branch == 1 else b"")
            + zigzag(0)  # outputs: an empty array
            + zigzag(0) * 3  # model, variant, hardware: null
            + zigzag(0)  # accuracy: null
            + bytes(12)  # latency_ms, queue_ms, compute_ms: 0.0f
            + zigzag(0) * 2  # best_accuracy_within_slo, fastest_latency_ms: null
            + zigzag(0))  # completed_at
    return CODEC.schema("Result").header + body


@FUZZ
@given(st.one_of(st.integers(-8, 8), st.integers(-2**63, 2**63 - 1)))
def test_enum_and_union_indices_out_of_range_are_refused(index):
    """Only 0..n-1 are indices; a negative one must not wrap around like a Python list index."""
    status = decode_or_error(result_bytes(status_index=index))
    if 0 <= index < len(STATUSES):
        assert status[1]["status"] == STATUSES[index]
    else:
        assert isinstance(status, DecodeError) and "out of range" in status.reason, (index, status)
    branch = decode_or_error(result_bytes(0, error_branch=index))
    if index in (0, 1):
        assert branch[1]["error"] == (None, "boom")[index]
    else:
        assert isinstance(branch, DecodeError), (index, branch)


def test_the_hand_written_result_is_what_the_codec_writes():
    record = CODEC.decode_as("Result", result_bytes(1, 1))
    assert CODEC.encode("Result", record) == result_bytes(1, 1)


def test_a_negative_enum_index_never_becomes_another_symbol():
    """WorkerCommand's action -1 must not become STOP (the last symbol)."""
    command = CODEC.encode("WorkerCommand", {"command_id": "c", "at": 0, "action": "LOAD", "worker_id": "w1",
                                             "hardware": None, "variant_id": "v", "replicas": 1, "reason": ""})
    at = HEADER_LEN + len(avro_string("c")) + len(zigzag(0))
    assert command[at] == 0  # LOAD
    for index in (-1, -4, -5, 4):
        forged = command[:at] + zigzag(index) + command[at + 1:]
        assert isinstance(decode_or_error(forged), DecodeError), index


@pytest.fixture(scope="module")
def codec_with_a_newer_writer(tmp_path_factory):
    """A codec that also knows a (hypothetical) later writer version of Result and WorkerCommand,
    each with one more enum symbol, as a newer client would send them."""
    directory = tmp_path_factory.mktemp("avro")
    shutil.copytree(AVRO_DIR, directory, dirs_exist_ok=True)
    writers = {}
    for name, field, symbol in (("Result", "status", "PREEMPTED"), ("WorkerCommand", "action", "DRAIN")):
        schema = json.loads(json.dumps(CODEC.schema(name).resolved))
        enum = next(f for f in schema["fields"] if f["name"] == field)["type"]
        enum["symbols"].append(symbol)
        (directory / "history" / name / "newer.avsc").write_text(json.dumps(schema))
        writers[name] = schema
    codec = Codec(directory)
    return codec, {name: next(v for v in codec.by_fingerprint.values() if v.resolved == schema)
                   for name, schema in writers.items()}


def write_with(version, record) -> bytes:
    buf = io.BytesIO()
    buf.write(version.header)
    fastavro.schemaless_writer(buf, version.parsed, record)
    return buf.getvalue()


@FUZZ
@given(st.sampled_from([*STATUSES, "PREEMPTED"]), st.sampled_from(["LOAD", "UNLOAD", "SET_REPLICAS", "STOP", "DRAIN"]))
def test_an_unknown_enum_symbol_becomes_the_default_or_a_decode_error(codec_with_a_newer_writer, status, action):
    codec, writers = codec_with_a_newer_writer
    result = {**CODEC.decode_as("Result", result_bytes(0)), "status": status}
    decoded = codec.decode_as("Result", write_with(writers["Result"], result))
    assert decoded["status"] == (status if status in STATUSES else "INTERNAL_ERROR")  # the enum's default
    command = {"command_id": "c", "at": 0, "action": action, "worker_id": None, "hardware": None,
               "variant_id": None, "replicas": 1, "reason": ""}
    data = write_with(writers["WorkerCommand"], command)
    if action == "DRAIN":  # WorkerAction has no default: refused, never guessed
        with pytest.raises(DecodeError, match="DRAIN"):
            codec.decode(data)
    else:
        assert codec.decode_as("WorkerCommand", data)["action"] == action


# --- tensors ----------------------------------------------------------------------------------------
DIMS = st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -2**63]))
DTYPE_NAMES = st.one_of(st.sampled_from(sorted(DTYPES)),
                        st.sampled_from(["complex64", "object", "O", "U8", "float32 ", "FLOAT32", "", "V16",
                                         "datetime64", "<f4", "float128", "x" * 100_000]))


@st.composite
def tensors(draw) -> dict:
    """Wire tensors: some valid, most not (huge or negative dims, wrong data length, odd dtypes)."""
    if draw(st.booleans()):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
        data = bytes(math.prod(shape) * np.dtype(dtype).itemsize)
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data)))] + draw(st.binary(max_size=4))
        return {"dtype": dtype, "shape": shape, "data": data}
    return {"dtype": draw(DTYPE_NAMES), "shape": draw(st.lists(DIMS, max_size=12)),
            "data": draw(st.binary(max_size=64))}


@FUZZ
@given(tensors())
def test_a_wire_tensor_is_exactly_what_it_claims_or_a_tensor_error(tensor):
    try:
        array = from_tensor(tensor, max_bytes=MB)
    except TensorError as err:
        assert 0 < len(str(err)) < 1000  # clear, and never an echo of an enormous input
        return
    assert array.dtype.name == tensor["dtype"] and list(array.shape) == tensor["shape"]
    assert 1 <= array.ndim <= MAX_DIMS and array.tobytes() == tensor["data"]


HUGE_CLAIMS = [[2**40, 64], [1 << 20, 1 << 20, 64], [2**31] * 8, [0, 2**62], [2**62, 0], [0, 2**63 - 1],
               [0, 2**24, 2**24, 2**24], [64] * 8, [2**63 - 1]]


@pytest.mark.parametrize("shape", HUGE_CLAIMS, ids=str)
@pytest.mark.parametrize("data", [b"", bytes(4096)], ids=["no-data", "4KiB"])
def test_a_claimed_huge_shape_is_refused_before_any_allocation(shape, data):
    """tracemalloc sees numpy's buffers, so an allocation sized by the claim would show in the peak."""
    tensor = {"dtype": "float32", "shape": shape, "data": data}
    tracemalloc.start()
    try:
        with pytest.raises(TensorError):
            from_tensor(tensor, max_bytes=16 * MB)
        with pytest.raises(TensorError):
            check_header(tensor, 64 * MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MB, peak


def test_a_query_claiming_gigabytes_costs_the_dispatcher_nothing():
    dispatcher = make_dispatcher(SETTINGS)
    payload = CODEC.encode("Query", good_query(inputs={"dtype": "float32", "shape": [2**28, 64], "data": b""}))
    tracemalloc.start()
    try:
        out = dispatcher.handle(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert check_outgoing(out, SETTINGS, payload) == "BAD_INPUT" and peak < 2 * MB, peak


@st.composite
def arrays(draw) -> np.ndarray:
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int64", "uint8", "bool"]))
    rows = draw(st.integers(0, 3))
    width = draw(st.sampled_from([64, 63, 1]))
    shape = draw(st.sampled_from([(rows, width), (rows,), (rows, 8, 8), (rows, width, 1)]))
    array = np.zeros(shape, dtype)
    if array.size and array.dtype.kind == "f":
        array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([0.5, np.nan, np.inf, -np.inf]))
    return array


@FUZZ
@given(arrays())
def test_check_input_accepts_only_finite_batches_of_the_task_signature(array):
    try:
        check_input(array, TASK.input_dtype, TASK.input_shape, max_batch=2)
    except TensorError as err:
        assert str(err)
        return
    assert array.dtype.name == "float32" and array.shape[1:] == (64,) and 1 <= array.shape[0] <= 2
    assert np.isfinite(array).all()


# --- the dispatcher ---------------------------------------------------------------------------------
def big(n: int) -> str:
    return "x" * n


def mostly(valid: st.SearchStrategy, junk: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` five times in six: a query with one or two bad fields reaches deeper checks than all junk."""
    return st.integers(0, 5).flatmap(lambda roll: junk if roll == 0 else valid)


SENT_AT = st.one_of(st.integers(-2**63, 2**63 - 1), st.sampled_from([-1, 2**63 - 1, -2**63, 2**63 - 5_000]))
TEXT_JUNK = st.one_of(st.text(max_size=30), st.sampled_from([129, 100_000, 900_000]).map(big))
NAMES_OR_JUNK = st.one_of(st.none(), st.sampled_from(["digits", "small", "large", "secret", "nope", "", "DIGITS"]),
                          st.sampled_from(sorted(VARIANTS)), TEXT_JUNK)
TARGETS = st.one_of(st.fixed_dictionaries({"task": st.just("digits")}),
                    st.fixed_dictionaries({"task": st.none(), "model": st.sampled_from(["small", "large", "secret"])}),
                    st.fixed_dictionaries({"task": st.none(), "variant": st.sampled_from(sorted(VARIANTS))}))
TARGET_JUNK = st.fixed_dictionaries({"task": NAMES_OR_JUNK, "model": NAMES_OR_JUNK, "variant": NAMES_OR_JUNK})


def requirement(low: float, high: float) -> st.SearchStrategy:
    return mostly(st.one_of(st.none(), st.floats(low, high, width=32)),
                  st.one_of(st.floats(width=32), st.sampled_from([-1.0, 0.0, 1e7, 3e38])))


@st.composite
def good_inputs(draw) -> dict:
    return to_tensor(np.full((draw(st.integers(1, 9)), 64), draw(st.floats(-1e3, 1e3, width=32)), np.float32))


@st.composite
def bad_inputs(draw) -> dict:
    inputs = draw(good_inputs())
    if draw(st.booleans()):
        return draw(tensors())
    values = np.frombuffer(inputs["data"], np.float32).copy()
    values[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return {**inputs, "data": values.tobytes()}


@st.composite
def queries(draw) -> dict:
    """Queries with each field valid five times in six, else junk: empty and enormous strings,
    NaN/inf/negative requirements, unknown or disagreeing names, wrong reply topics, bad tensors."""
    app = draw(mostly(st.sampled_from(["demo", "other"]),
                      st.one_of(st.sampled_from(["stranger", "", "Demo", "a" * 63, "a" * 64]), TEXT_JUNK)))
    own = SETTINGS.results_topic(app)
    reply = draw(mostly(st.sampled_from([None, own, own + ".client-7"]),
                        st.one_of(st.sampled_from([own + ".", own + "/x", SETTINGS.results_topic("demo"), "",
                                                   own + "." + big(300), SETTINGS.topic("control")]), TEXT_JUNK)))
    query_id = draw(mostly(st.one_of(st.just("a" * 128), st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True)),
                           st.one_of(st.sampled_from(["", "a" * 129, "q 1", "q/1"]), TEXT_JUNK)))
    return good_query(query_id=query_id, app_id=app, **draw(mostly(TARGETS, TARGET_JUNK)),
                      inputs=draw(mostly(good_inputs(), bad_inputs())), min_accuracy=draw(requirement(0, 1)),
                      latency_ms=draw(requirement(0.5, 1e4)), max_cost=draw(requirement(0, 10)),
                      reply_topic=reply, sent_at=draw(mostly(st.integers(0, 2**42), SENT_AT)))


@FUZZ
@given(queries())
def test_every_query_is_routed_answered_or_dead_lettered(query):
    dispatcher = make_dispatcher(SETTINGS)
    payload = CODEC.encode("Query", query)
    kind = check_outgoing(dispatcher.handle(payload, ("queries", 0, 1)), SETTINGS, payload)
    if kind == "dead":  # only when there is nowhere the app may be answered
        assert dispatcher.reply_topic(query) is None
    elif kind != "routed":
        answer = dispatcher.handle(payload)[0]
        assert answer.topic == dispatcher.reply_topic(query)
        assert CODEC.decode_as("Result", answer.value)["query_id"] == query["query_id"][:MAX_ECHO]


@pytest.mark.parametrize("sent_at", [-1, -2**63, MAX_TIMESTAMP_MS + 1, 2**63 - 1])
def test_a_sent_at_that_is_no_time_is_bad_input(sent_at):
    """Found by the fuzzer: sent_at near 2**63 made the deadline overflow an Avro long (INTERNAL_ERROR)."""
    payload = CODEC.encode("Query", good_query(sent_at=sent_at))
    out = make_dispatcher(SETTINGS).handle(payload)
    assert check_outgoing(out, SETTINGS, payload) == "BAD_INPUT"
    assert "sent_at" in CODEC.decode_as("Result", out[0].value)["error"]
    payload = CODEC.encode("Query", good_query(sent_at=MAX_TIMESTAMP_MS, latency_ms=1e4))
    assert check_outgoing(make_dispatcher(SETTINGS).handle(payload), SETTINGS, payload) == "routed"


# --- the worker -------------------------------------------------------------------------------------
@st.composite
def routed_queries(draw) -> dict:
    """What reaches a worker: a query the dispatcher let through (its ids, app and reply topic were
    checked there), but with any tensor, as another producer or an older dispatcher could send it."""
    query = draw(queries())
    query.update(query_id="q1", app_id="demo", reply_topic=draw(st.sampled_from([None, "infaas.results.demo.c"])))
    routed = {"query": query, "variant_id": "small:ort-fp32:cpu-1t:b8", "deadline_at": None,
              "dispatched_at": 0, "estimated_ms": 1.0, "reason": "fuzz"}
    return CODEC.decode_as("RoutedQuery", CODEC.encode("RoutedQuery", routed))


@FUZZ
@given(routed_queries())
def test_the_worker_admits_a_routed_query_or_answers_bad_input(routed):
    check_admitted(admit(routed, make_hosted(), SETTINGS), routed, SETTINGS)


def test_a_routed_query_with_a_bad_tensor_is_answered_bad_input():
    hosted = make_hosted()
    cases = [("over the limit", {"dtype": "float32", "shape": [2**40, 64], "data": b""}),
             # found by fuzzing: numpy raised ValueError on it, which would have ended the replica's thread
             ("over the limit", {"dtype": "float32", "shape": [0, 2**62], "data": b""}),
             ("negative dimension", {"dtype": "float32", "shape": [-1, 64], "data": b""}),
             ("needs 512 bytes", {"dtype": "float32", "shape": [2, 64], "data": bytes(10)}),
             ("unsupported dtype", {"dtype": "object", "shape": [1], "data": bytes(8)}),
             ("NaN", to_tensor(np.full((1, 64), np.nan, np.float32))),
             ("does not match the task's", to_tensor(np.zeros((1, 63), np.float32))),
             ("must be 1 to", to_tensor(np.zeros((0, 64), np.float32)))]
    for fragment, tensor in cases:
        routed = {"query": good_query(inputs=tensor), "variant_id": "small:ort-fp32:cpu-1t:b8",
                  "deadline_at": None, "dispatched_at": 0, "estimated_ms": 1.0, "reason": "test"}
        topic, result = admit(routed, hosted, SETTINGS)
        assert topic == SETTINGS.results_topic("demo") and result.status == "BAD_INPUT"
        assert fragment in result.error, result.error
        assert result.variant == "small:ort-fp32:cpu-1t:b8" and result.query_id == "q1"
    ok = admit({"query": good_query(), "variant_id": "small:ort-fp32:cpu-1t:b8", "deadline_at": None,
                "dispatched_at": 0, "estimated_ms": 1.0, "reason": "test"}, hosted, SETTINGS)
    assert ok["rows"] == 2 and ok["inputs"].shape == (2, 64)


def test_the_error_answers_fit_in_a_kafka_message():
    """Found by fuzzing: an enormous name or id (echoed in the error, and in the result's fields) or an
    undecodable message of ~1 MB (kept in the dead letter) made an answer the producer refuses."""
    dispatcher = make_dispatcher(SETTINGS)
    for changes in ({"query_id": big(900_000)}, {"task": big(900_000)}, {"model": big(450_000), "task": None},
                    {"app_id": big(900_000)}, {"reply_topic": big(900_000)},
                    {"inputs": {"dtype": big(900_000), "shape": [1], "data": b""}},
                    {"inputs": {"dtype": "float32", "shape": [1] * 200_000, "data": b""}}):
        payload = CODEC.encode("Query", good_query(**changes))
        assert check_outgoing(dispatcher.handle(payload), SETTINGS, payload) in ("BAD_INPUT", "UNKNOWN_MODEL", "dead")
    garbage = MAGIC + b"\xff" * 999_990  # an undecodable message as large as Kafka lets in
    assert check_outgoing(dispatcher.handle(garbage), SETTINGS, garbage) == "dead"
    assert len(dispatcher.handle(garbage)[0].value) < KAFKA_MAX_MESSAGE


# --- the fuzzer, briefly ----------------------------------------------------------------------------
def test_a_bounded_fuzz_run_finds_nothing():
    """tests/fuzz/fuzz_decoder.py's engine for a fixed seed and number of inputs (at most 15 s); run
    the script itself for longer. It must reach every kind of answer, not only the dead-letter topic."""
    stats = fuzz_decoder.run(seconds=15, max_execs=50_000, seed=7)
    assert not stats.findings, list(stats.findings)
    assert stats.execs >= 5_000, stats.execs
    kinds = {outcome.split(":")[1] for outcome in stats.outcomes}
    assert {"routed", "dead", "BAD_INPUT", "UNKNOWN_MODEL"} <= kinds, stats.outcomes
    assert sum(count for outcome, count in stats.outcomes.items() if not outcome.startswith("undecodable")) > 1_000


def test_an_input_of_the_right_dtype_in_the_other_byte_order_passes_the_check():
    """A user's .npy may be big-endian (offline jobs, the gateway): float32 is float32 in either order."""
    from infaas.tensors import TensorError, check_input
    check_input(np.zeros((2, 3), dtype=">f4"), "float32", (3,), 10)
    check_input(np.zeros((2, 3), dtype="<f4"), "float32", (3,), 10)
    with pytest.raises(TensorError, match="input dtype is float64"):
        check_input(np.zeros((2, 3), dtype=">f8"), "float32", (3,), 10)
