"""Registration inputs, fuzzed (issue #7 §3): malformed ONNX bytes, models whose graph is huge, and
validation sets of the wrong shape, dtype or label count, or holding pickles or zip bombs. Each is a
clear RegistrationError before anything is loaded or allocated at the claimed size, and nothing is
written (checked against the real Cassandra and repository, as tests/test_registration.py does).

The model and validation checks are driven directly (they need no store); the end-to-end refusals go
through `register_model` with the session's store. Hypothesis runs derandomized, without a database."""

from __future__ import annotations

import functools
import io
import os
import pickle
import shutil
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from infaas.registration import RegistrationError, register_model
from infaas.registration.validate import ModelCheck, check_model, load_validation
from infaas.settings import load_settings
from tests.integration.test_registration import snapshot
from tests.unit.test_executors import tiny_model

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=200,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MB = 1 << 20
SETTINGS = load_settings()  # conftest's base_settings; the checks read only the registration limits
WORK = Path(tempfile.mkdtemp(prefix="infaas-fuzz-registration-"))
GOOD_MODEL = tiny_model(WORK / "tiny.onnx", inputs=16, classes=4)
GOOD_BYTES = GOOD_MODEL.read_bytes()
GOOD_CHECK = check_model(SETTINGS, GOOD_MODEL)


@pytest.fixture(scope="module", autouse=True)
def _remove_work_directory():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


def write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def model_outcome(data: bytes, limits=SETTINGS) -> ModelCheck | RegistrationError:
    """check_model's contract: a ModelCheck that registration can rely on, or a RegistrationError."""
    try:
        check = check_model(limits, write("fuzzed.onnx", data))
    except RegistrationError as err:
        assert str(err)
        return err
    assert check.data == data and check.input_name and check.output_names
    assert check.sample_shape and all(isinstance(d, int) and d > 0 for d in check.sample_shape)
    assert np.dtype(check.input_dtype).name == check.input_dtype and check.num_classes >= 0
    return check


# --- malformed ONNX -----------------------------------------------------------------------------------
def not_models() -> list[bytes]:
    """Valid protobufs of other ONNX types: they parse as a ModelProto of unknown fields, or not at all."""
    model = onnx.load_model_from_string(GOOD_BYTES)
    return [model.graph.SerializeToString(), model.graph.node[0].SerializeToString(),
            model.graph.initializer[0].SerializeToString(), model.graph.input[0].SerializeToString(),
            onnx.helper.make_opsetid("", 17).SerializeToString(), b"\x08\x08", b""]


@st.composite
def mutated_model_bytes(draw) -> bytes:
    data = bytearray(GOOD_BYTES)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 32))]
        if not data:
            break
    return bytes(data)


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated_model_bytes(), st.sampled_from(not_models()),
                 st.integers(1, len(GOOD_BYTES) - 1).map(lambda cut: GOOD_BYTES[:cut])))
def test_malformed_onnx_bytes_are_refused_or_fully_valid(data):
    """Random bytes, valid models cut short or with flipped bits, protobufs that are not models."""
    model_outcome(data)


def test_a_truncated_model_or_a_protobuf_that_is_no_model_is_refused():
    for cut in range(1, len(GOOD_BYTES), 7):
        assert isinstance(model_outcome(GOOD_BYTES[:cut]), RegistrationError), cut
    for data in not_models():
        assert isinstance(model_outcome(data), RegistrationError), data[:20]


ELEM_TYPES = st.one_of(st.sampled_from([0, 1, 2, 7, 8, 9, 10, 11, 16, 17, 21, 23, 24, 25, 999]), st.integers(-5, 40))
DIM = st.one_of(st.integers(-3, 20), st.sampled_from([2**31, 2**62, 2**63 - 1]), st.text(max_size=5))


@st.composite
def structurally_mutated_models(draw) -> bytes:
    """A parsed valid model with one to three fields set to odd values, serialized again."""
    model = onnx.load_model_from_string(GOOD_BYTES)
    graph = model.graph
    for _ in range(draw(st.integers(1, 3))):
        choice = draw(st.integers(0, 9))
        if choice in (1, 3) and not graph.output:
            continue
        if choice == 0:
            graph.input[0].type.tensor_type.elem_type = draw(ELEM_TYPES)
        elif choice == 1:
            graph.output[0].type.tensor_type.elem_type = draw(ELEM_TYPES)
        elif choice in (2, 3):
            value = graph.input[0] if choice == 2 else graph.output[0]
            dim = value.type.tensor_type.shape.dim[draw(st.integers(0, 1))]
            new = draw(DIM)
            if isinstance(new, str):
                dim.dim_param = new
            elif new < 2**63:
                dim.dim_value = new
        elif choice == 4:
            graph.node[draw(st.integers(0, len(graph.node) - 1))].op_type = draw(
                st.sampled_from(["", "Conv", "NoSuchOp", "If", "Loop", "Identity", "ConstantOfShape"]))
        elif choice == 5:
            model.opset_import[0].version = draw(st.sampled_from([0, 1, 7, 17, 99, 2**40]))
        elif choice == 6:
            model.ir_version = draw(st.sampled_from([0, 1, 3, 8, 10, 99]))
        elif choice == 7:
            initializer = graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
            initializer.dims[0] = draw(st.sampled_from([0, 1, 2**31, 2**40]))
        elif choice == 8:
            del graph.output[:]
        else:
            graph.input.append(graph.input[0])  # a duplicated input
    return model.SerializeToString()


@FUZZ
@given(structurally_mutated_models())
def test_odd_model_fields_are_refused_or_fully_valid(data):
    """Odd element types (undefined, string), dims (negative, huge, symbolic), ops, opsets, IR versions."""
    model_outcome(data)


# --- huge graphs: refused by the limits before the checker or ONNX Runtime ---------------------------
def classifier(extra_nodes=(), extra_initializers=(), sparse=()) -> bytes:
    """The tiny classifier, with extra nodes (not on the path to the output) and constants."""
    model = onnx.load_model_from_string(GOOD_BYTES)
    model.graph.node.extend(extra_nodes)
    model.graph.initializer.extend(extra_initializers)
    model.graph.sparse_initializer.extend(sparse)
    return model.SerializeToString()


def huge_sparse_initializer() -> bytes:
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("i", TensorProto.INT64, [1], [0])
    return classifier(sparse=[helper.make_sparse_tensor(values, indices, [100_000, 100_000])])  # 37 GiB dense


def huge_dense_initializer() -> bytes:
    declared = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[3_000_000_000])  # 11 GiB, no data
    return classifier(extra_initializers=[declared])


def constant_of_shape_bomb() -> bytes:
    shape = numpy_helper.from_array(np.array([50_000, 50_000], np.int64), "shape")
    return classifier([helper.make_node("ConstantOfShape", ["shape"], ["zeros"])], [shape])


def many_nodes(count: int) -> bytes:
    chain = [helper.make_node("Identity", ["logits" if i == 0 else f"n{i - 1}"], [f"n{i}"]) for i in range(count)]
    return classifier(chain)


def nested_nodes(count: int) -> bytes:
    """`count` nodes hidden in the branches of an If: the limit counts subgraphs too."""
    branch = helper.make_graph([helper.make_node("Identity", ["logits" if i == 0 else f"b{i - 1}"], [f"b{i}"])
                               for i in range(count)], "branch", [],
                              [helper.make_tensor_value_info(f"b{count - 1}", TensorProto.FLOAT, ["N", 4])])
    condition = numpy_helper.from_array(np.array(True), "condition")
    node = helper.make_node("If", ["condition"], ["chosen"], then_branch=branch, else_branch=branch)
    return classifier([node], [condition])


@pytest.mark.parametrize("make, message", [
    (huge_sparse_initializer, "declares 38147 MiB of constant tensors, over the limit of 512 MiB"),
    (huge_dense_initializer, "declares 11444 MiB of constant tensors"),
    (constant_of_shape_bomb, "computes tensor 'zeros' of fixed shape \\[50000, 50000\\] \\(9537 MiB\\)"),
    (lambda: many_nodes(30_000), "has 30005 nodes, over the limit of 10000 \\(setting max_model_nodes\\)"),
    (lambda: nested_nodes(6_000), "has 12006 nodes, over the limit of 10000"),
], ids=["sparse-initializer", "dense-initializer", "constant-of-shape", "30k-nodes", "nodes-in-subgraphs"])
def test_a_huge_graph_is_refused_by_the_limits(make, message):
    data = make()
    assert len(data) < SETTINGS.max_model_mb * MB  # the file itself is within the size limit
    with pytest.raises(RegistrationError, match=message):
        check_model(SETTINGS, write("huge.onnx", data))


def test_the_node_limit_is_a_setting():
    assert isinstance(model_outcome(many_nodes(100), SETTINGS.replace(max_model_nodes=104)), RegistrationError)
    assert isinstance(model_outcome(many_nodes(100), SETTINGS.replace(max_model_nodes=105)), ModelCheck)


# --- validation sets --------------------------------------------------------------------------------
def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def validation_outcome(data: bytes) -> tuple[np.ndarray, np.ndarray] | RegistrationError:
    """load_validation's contract: arrays that fit the model exactly, or a RegistrationError."""
    try:
        inputs, labels = load_validation(SETTINGS, write("fuzzed.npz", data), GOOD_CHECK)
    except RegistrationError as err:
        assert str(err)
        return err
    assert inputs.dtype == np.dtype(GOOD_CHECK.input_dtype) and inputs.dtype.isnative
    assert inputs.shape[1:] == GOOD_CHECK.sample_shape and len(inputs) == len(labels) >= 1
    assert labels.dtype == np.int64 and labels.ndim == 1 and 0 <= labels.min() <= labels.max() < 4
    assert np.isfinite(inputs).all() and inputs.flags.c_contiguous
    return inputs, labels


DTYPES = st.sampled_from(["<f4", ">f4", "f8", "f2", "i8", "u8", "i4", ">i8", "u1", "bool", "c8", "U3", "V4"])


@st.composite
def validation_arrays(draw) -> dict:
    """Inputs and labels of every sort: right or wrong dtype, per-sample shape, count, label range."""
    rows = draw(st.integers(0, 6))
    arrays = {}
    if draw(st.integers(0, 9)):
        shape = draw(st.sampled_from([(rows, 16), (rows, 15), (rows,), (rows, 16, 1), (rows, 4, 4), ()]))
        inputs = np.zeros(shape, draw(DTYPES))
        if inputs.size and inputs.dtype.kind == "f" and draw(st.booleans()):
            inputs.flat[draw(st.integers(0, inputs.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 0.5]))
        arrays["inputs"] = inputs
    if draw(st.integers(0, 9)):
        count = draw(st.sampled_from([rows, rows + 1, max(rows - 1, 0)]))
        labels = np.array(draw(st.lists(st.sampled_from([0, 1, 3, 4, -1, 2**31, 2**63 - 1]), min_size=count,
                                        max_size=count)), np.int64)
        arrays["labels"] = labels.astype(draw(st.sampled_from(["i8", ">i8", "i2", "u8", "f4", "bool"])))
        if draw(st.integers(0, 5)) == 0:
            arrays["labels"] = arrays["labels"].reshape(-1, 1)
    return arrays


@FUZZ
@given(validation_arrays())
def test_a_validation_set_is_refused_or_fits_the_model(arrays):
    validation_outcome(npz_bytes(**arrays))


@st.composite
def mutated_npz(draw) -> bytes:
    data = bytearray(npz_bytes(inputs=np.ones((4, 16), np.float32), labels=np.arange(4) % 4))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "truncate", "overwrite"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
            break
        else:
            data[at:at + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutated_npz()))
def test_malformed_npz_bytes_are_refused_or_fit_the_model(data):
    """Random bytes and valid archives with flipped bits or cut short (zip headers, CRCs, .npy headers)."""
    validation_outcome(data)


def npy_member(shape: tuple, descr: str = "<f4", data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def archive(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return buffer.getvalue()


@functools.cache
def zip_bomb() -> bytes:
    """320 MiB of float32 zeros in a file of 1.6 MiB: np.load would build the whole array."""
    rows = 5 << 20
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as handle:
        with handle.open("inputs.npy", "w", force_zip64=True) as member:
            member.write(npy_member((rows, 16)))
            zeros = bytes(16 * MB)
            for _ in range(20):
                member.write(zeros)
        handle.writestr("labels.npy", npy_member((rows,), "<i8", bytes(8 * rows)))
    return buffer.getvalue()


@pytest.mark.parametrize("make, message", [
    (zip_bomb, "'inputs' is 320 MiB unpacked \\(float32 \\(5242880, 16\\)\\), over the limit of 256 MiB"),
    (lambda: archive({"inputs.npy": npy_member((10**12, 16)), "labels.npy": npy_member((4,), "<i8", bytes(32))}),
     "'inputs' is 61035156 MiB unpacked"),
    (lambda: archive({"inputs": b"not an npy file", "labels.npy": npy_member((1,), "<i8", bytes(8))}),
     "not an .npz of numpy arrays: the magic string is not correct"),
    (lambda: archive({"inputs.npy": npy_member((4, 16), "<f4", bytes(10)), "labels.npy": npy_member((4,), "<i8")}),
     "validation set fuzzed.npz"),
], ids=["zip-bomb", "header-claims-terabytes", "member-not-npy", "truncated-array"])
def test_an_archive_claiming_more_than_it_holds_is_refused_without_allocating(make, message):
    data = make()
    assert len(data) < SETTINGS.max_validation_mb * MB
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: an array built at the claim would show
    try:
        with pytest.raises(RegistrationError, match=message):
            load_validation(SETTINGS, write("fuzzed.npz", data), GOOD_CHECK)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MB, peak


class Trap:
    """Unpickling this creates a directory: proof that a pickle in the archive was (not) executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickled_object_arrays_are_refused_without_unpickling(tmp_path):
    pickle.loads(pickle.dumps(Trap(tmp_path / "probe")))
    assert (tmp_path / "probe").is_dir()  # the trap goes off when unpickled
    marker = tmp_path / "unpickled"
    trap = np.empty(4, dtype=object)
    trap[:] = [Trap(marker)] * 4
    for arrays in ({"inputs": trap, "labels": np.arange(4)}, {"inputs": np.zeros((4, 16), np.float32), "labels": trap}):
        data = npz_bytes(**arrays)
        with pytest.raises(RegistrationError, match="non-numeric arrays \\(Python objects; they are never unpickled"):
            load_validation(SETTINGS, write("pickled.npz", data), GOOD_CHECK)
        assert not marker.exists()


def test_a_big_endian_validation_set_is_read_by_value():
    """ONNX Runtime reads raw bytes as little-endian: a '>f4' array must reach it converted."""
    values = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    inputs, _ = validation_outcome(npz_bytes(inputs=values.astype(">f4"), labels=np.arange(5) % 4))
    assert inputs.dtype.isnative and np.array_equal(inputs, values)


# --- end to end: a clear RegistrationError and nothing written ---------------------------------------
GOOD_VALIDATION = npz_bytes(inputs=np.zeros((8, 16), np.float32), labels=np.arange(8) % 4)


@pytest.mark.parametrize("model, validation, message", [
    (b"\x00\x01 not a protobuf \xff" * 9, GOOD_VALIDATION, "not an ONNX model"),
    (GOOD_BYTES[:len(GOOD_BYTES) // 2], GOOD_VALIDATION, "model fuzzed.onnx"),
    (not_models()[0], GOOD_VALIDATION, "not an ONNX model \\(no graph\\)"),
    (huge_sparse_initializer(), GOOD_VALIDATION, "of constant tensors, over the limit"),
    (constant_of_shape_bomb(), GOOD_VALIDATION, "computes tensor 'zeros'"),
    (many_nodes(20_000), GOOD_VALIDATION, "over the limit of 10000 \\(setting max_model_nodes\\)"),
    (GOOD_BYTES, npz_bytes(inputs=np.zeros((8, 15), np.float32), labels=np.arange(8) % 4), "per-sample shape"),
    (GOOD_BYTES, npz_bytes(inputs=np.zeros((8, 16)), labels=np.arange(8) % 4), "inputs are float64"),
    (GOOD_BYTES, npz_bytes(inputs=np.zeros((8, 16), np.float32), labels=np.arange(7) % 4), "8 inputs but 7 labels"),
    (GOOD_BYTES, npz_bytes(inputs=np.zeros((8, 16), np.float32), labels=np.arange(8)), "outside the model's 4"),
    (GOOD_BYTES, npz_bytes(inputs=np.full((8, 16), np.nan, np.float32), labels=np.arange(8) % 4), "NaN"),
    (GOOD_BYTES, npz_bytes(inputs=np.array([None] * 8, dtype=object), labels=np.arange(8) % 4), "non-numeric"),
    (GOOD_BYTES, zip_bomb(), "MiB unpacked"),
    (GOOD_BYTES, GOOD_VALIDATION[:len(GOOD_VALIDATION) // 2], "not an .npz"),
], ids=["random-bytes", "truncated-model", "graph-not-model", "sparse-initializer", "constant-of-shape",
        "20k-nodes", "sample-shape", "dtype", "label-count", "label-range", "nan", "objects", "zip-bomb",
        "truncated-npz"])
def test_refused_registrations_write_nothing(store, settings, model, validation, message):
    before = snapshot(store, settings)
    with pytest.raises(RegistrationError, match=message):
        register_model(settings, "fuzz-app", "fuzz-task", "fuzzed", write("fuzzed.onnx", model),
                       write("fuzzed.npz", validation), store=store, quick=True)
    assert snapshot(store, settings) == before
    assert store.get_task("fuzz-task") is None and store.get_app("fuzz-app") is None
