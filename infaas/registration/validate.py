"""Checks on everything a registration brings in, before anything is stored.

The model must be a self-contained ONNX file (no external data, no custom-op domains unless
`allow_custom_ops`), pass `onnx.checker`'s full check, take one input with a dynamic batch
dimension and produce class scores first. The validation set is an `.npz` of plain arrays
(`inputs`, `labels`; loaded with `allow_pickle=False`, so it cannot run code) matching the model.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalog import TaskInfo
from ..errors import InfaasError
from ..settings import Settings

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
METRICS = ("top1", "top5")
MB = 1 << 20


class RegistrationError(InfaasError, ValueError):
    """A registration was refused or failed; the message names what is wrong. Nothing was stored."""


@dataclass(frozen=True)
class ModelCheck:
    """What registration learned from a valid ONNX file."""
    data: bytes
    sha256: str
    input_name: str
    input_dtype: str  # numpy name, e.g. float32
    sample_shape: tuple[int, ...]  # the input shape without the batch dimension
    output_names: tuple[str, ...]
    num_classes: int  # width of the first (score) output; 0 when it outputs labels only
    opset: int


def _read_limited(path: Path, limit_mb: int, what: str) -> bytes:
    if not path.is_file():
        raise RegistrationError(f"{what} {path}: no such file")
    size = path.stat().st_size
    if size > limit_mb * MB:
        raise RegistrationError(f"{what} {path} is {size / MB:.1f} MiB, over the limit of {limit_mb} MiB "
                                f"(setting {'max_model_mb' if what == 'model' else 'max_validation_mb'})")
    if size == 0:
        raise RegistrationError(f"{what} {path} is empty")
    return path.read_bytes()


def _dims(value_info) -> list[int | str | None]:
    shape = value_info.type.tensor_type.shape
    if not value_info.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _dtype(value_info) -> str:
    import onnx
    elem = value_info.type.tensor_type.elem_type
    if not value_info.type.HasField("tensor_type") or elem == 0:
        raise RegistrationError(f"model input/output {value_info.name!r} is not a typed tensor")
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name


def check_model(settings: Settings, path: str | Path) -> ModelCheck:
    """Parse and check an ONNX file; never executes anything from it."""
    import hashlib

    import onnx
    from google.protobuf.message import DecodeError
    path = Path(path)
    data = _read_limited(path, settings.max_model_mb, "model")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise RegistrationError(f"model {path.name} is not an ONNX model (cannot parse: {err})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise RegistrationError(f"model {path.name} is not an ONNX model (no graph)")
    _refuse_huge_graphs(model, path, settings)
    _refuse_external_data(model, path)
    _refuse_custom_domains(model, path, settings.allow_custom_ops)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # the checker raises several types; each means "not a valid model"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RegistrationError(f"model {path.name} fails the ONNX checker: {first}") from None
    _refuse_huge_static_tensors(model, path, settings)
    name, dtype, sample = _input_signature(model)
    outputs, classes = _output_signature(model)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ModelCheck(data, hashlib.sha256(data).hexdigest(), name, dtype, sample, outputs, classes, opset)


def _graphs(graph):
    """A graph and, depth first, every subgraph in its nodes' attributes (If, Loop, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graphs(sub)


def _tensor_bytes(dims, data_type: int) -> int:
    import onnx
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):  # not a data type; the checker will say so
        itemsize = 1
    return math.prod(max(int(d), 0) for d in dims) * itemsize


def _refuse_huge_graphs(model, path: Path, settings: Settings) -> None:
    """Limits checked on the parsed protobuf, before the checker or ONNX Runtime spend time and memory
    in proportion to what the model declares: a few bytes can declare a sparse initializer of billions
    of elements (ONNX Runtime makes it dense when it loads the model), a file under max_model_mb can
    hold a huge graph (the checker, ONNX Runtime and TVM take time in proportion)."""
    graphs = list(_graphs(model.graph))
    functions = list(model.functions)
    nodes = sum(len(g.node) for g in graphs) + sum(len(f.node) for f in functions)
    if nodes > settings.max_model_nodes:
        raise RegistrationError(f"model {path.name} has {nodes} nodes, over the limit of {settings.max_model_nodes} "
                                "(setting max_model_nodes)")
    declared = 0
    for graph in graphs:
        declared += sum(_tensor_bytes(t.dims, t.data_type) for t in graph.initializer)
        declared += sum(_tensor_bytes(t.dims, t.values.data_type) for t in graph.sparse_initializer)
    for node in [n for g in graphs for n in g.node] + [n for f in functions for n in f.node]:
        for a in node.attribute:
            declared += sum(_tensor_bytes(t.dims, t.data_type) for t in [a.t, *a.tensors])
            declared += sum(_tensor_bytes(t.dims, t.values.data_type) for t in [a.sparse_tensor, *a.sparse_tensors])
    if declared > settings.max_model_mb * MB:
        raise RegistrationError(f"model {path.name} declares {declared / MB:.0f} MiB of constant tensors, over the "
                                f"limit of {settings.max_model_mb} MiB (setting max_model_mb)")


def _refuse_huge_static_tensors(model, path: Path, settings: Settings) -> None:
    """A tensor whose shape shape inference fixes without the batch dimension (e.g. ConstantOfShape of a
    constant [50000, 50000]) is allocated at that size by ONNX Runtime, whatever the input: refuse it
    when it is larger than the model may be."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = _dims(value)
        if not dims or not all(isinstance(d, int) for d in dims):
            continue  # unknown or symbolic (batch) dimensions: its size depends on the input
        size = _tensor_bytes(dims, value.type.tensor_type.elem_type)
        if size > settings.max_model_mb * MB:
            raise RegistrationError(f"model {path.name} computes tensor {value.name!r:.100} of fixed shape {dims} "
                                    f"({size / MB:.0f} MiB), over the limit of {settings.max_model_mb} MiB "
                                    "(setting max_model_mb)")


def _refuse_external_data(model, path: Path) -> None:
    from onnx.external_data_helper import uses_external_data
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    if any(uses_external_data(t) for t in tensors):
        raise RegistrationError(f"model {path.name} keeps tensors in external files; register a self-contained "
                                "ONNX file (onnx.save(model, path, save_as_external_data=False))")


def _refuse_custom_domains(model, path: Path, allowed: bool) -> None:
    local = {f.domain for f in model.functions}
    used = {node.domain for node in model.graph.node} | {o.domain for o in model.opset_import}
    custom = sorted(used - STANDARD_DOMAINS - local)
    if custom and not allowed:
        raise RegistrationError(f"model {path.name} uses operators from custom domain(s) {', '.join(custom)}; "
                                "only standard ONNX operators are accepted (setting allow_custom_ops)")


def _input_signature(model) -> tuple[str, str, tuple[int, ...]]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise RegistrationError(f"the model must take exactly one input tensor, it takes {len(inputs)}: "
                                f"{', '.join(i.name for i in inputs)}")
    dims = _dims(inputs[0])
    name = inputs[0].name
    if len(dims) < 2:
        raise RegistrationError(f"input {name!r} must be batch-first with at least one per-sample dimension, "
                                f"shape is {dims}")
    if isinstance(dims[0], int):
        raise RegistrationError(f"input {name!r} has a fixed batch dimension {dims[0]}; export it with a dynamic "
                                "(symbolic) first dimension so variants can batch")
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise RegistrationError(f"input {name!r}: per-sample dimensions must be fixed, got {dims[1:]}")
    return name, _dtype(inputs[0]), tuple(int(d) for d in dims[1:])


def _output_signature(model) -> tuple[tuple[str, ...], int]:
    outputs = list(model.graph.output)
    if not outputs:
        raise RegistrationError("the model has no outputs")
    first = outputs[0]
    dims, dtype = _dims(first), _dtype(first)
    if np.issubdtype(np.dtype(dtype), np.floating) and len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 1:
        return tuple(o.name for o in outputs), int(dims[1])
    if np.issubdtype(np.dtype(dtype), np.integer) and len(dims) == 1:
        return tuple(o.name for o in outputs), 0
    raise RegistrationError(f"the first output {first.name!r} must hold class scores [batch, classes] (float) or "
                            f"labels [batch] (integer); it is {dtype} {dims}")


def load_validation(settings: Settings, path: str | Path, check: ModelCheck) -> tuple[np.ndarray, np.ndarray]:
    """The validation arrays, checked against the model's input signature."""
    path = Path(path)
    _read_limited(path, settings.max_validation_mb, "validation set")
    if not zipfile.is_zipfile(path):  # np.load would otherwise try other formats, pickle among them
        raise RegistrationError(f"validation set {path.name} is not an .npz archive (np.savez(path, inputs=..., "
                                "labels=...))")
    _check_array_headers(path, settings.max_validation_mb)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"inputs", "labels"} - set(archive.files)
            if missing:
                raise RegistrationError(f"validation set {path.name} lacks array(s) {', '.join(sorted(missing))} "
                                        f"(it has: {', '.join(archive.files) or 'none'})")
            inputs, labels = archive["inputs"], archive["labels"]
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise RegistrationError(f"validation set {path.name} is not an .npz archive: {err}") from None
    except ValueError as err:  # object arrays refuse to load without pickle
        raise RegistrationError(f"validation set {path.name} holds non-numeric arrays: {err}") from None
    if inputs.dtype.name != check.input_dtype:
        raise RegistrationError(f"validation inputs are {inputs.dtype.name}, the model input "
                                f"{check.input_name!r} takes {check.input_dtype}")
    if inputs.ndim < 1 or tuple(inputs.shape[1:]) != check.sample_shape:
        raise RegistrationError(f"validation inputs have shape {inputs.shape} (per-sample shape "
                                f"{tuple(inputs.shape[1:])}), the model input {check.input_name!r} takes "
                                f"[batch, {', '.join(map(str, check.sample_shape))}] (per-sample shape "
                                f"{check.sample_shape})")
    if len(inputs) == 0:
        raise RegistrationError("the validation set is empty")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise RegistrationError(f"validation labels must be a 1-D integer array, got {labels.dtype.name} "
                                f"{labels.shape}")
    if len(labels) != len(inputs):
        raise RegistrationError(f"validation set has {len(inputs)} inputs but {len(labels)} labels")
    if np.issubdtype(inputs.dtype, np.floating) and not np.isfinite(inputs).all():
        raise RegistrationError("validation inputs contain NaN or infinite values")
    _check_label_range(labels, check.num_classes)
    # Native byte order: ONNX Runtime reads a big-endian array's bytes as if they were little-endian.
    return np.ascontiguousarray(inputs, dtype=inputs.dtype.newbyteorder("=")), labels.astype(np.int64)


def _check_label_range(labels: np.ndarray, num_classes: int) -> None:
    """Labels are class indices into the model's score output (any non-negative index for a model
    that outputs labels only); name how many are not, and the first."""
    limit = num_classes or 2**31  # the class count is a 32-bit int
    outside = np.flatnonzero((labels < 0) | (labels >= limit))
    if len(outside):
        first = int(outside[0])
        raise RegistrationError(f"validation labels range {labels.min()}..{labels.max()}, outside the model's "
                                f"{limit} classes (0..{limit - 1}): {len(outside)} of {len(labels)} labels, the "
                                f"first at row {first} ({labels[first]})")


def _check_array_headers(path: Path, limit_mb: int) -> None:
    """Read the .npy headers of `inputs` and `labels` before np.load builds the arrays: np.load
    allocates whatever a header claims, and a few compressed megabytes can claim gigabytes; arrays of
    Python objects are refused here, never unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for key in ("inputs", "labels"):
                member = key if key in names else f"{key}.npy"  # how np.load finds it
                if member not in names:
                    continue  # reported as missing below
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f".npy format version {version} is not supported")
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(handle)
                if dtype.hasobject:
                    raise RegistrationError(f"validation set {path.name}: {key!r} holds non-numeric arrays (Python "
                                            "objects; they are never unpickled)")
                claimed = math.prod(shape) * dtype.itemsize
                if claimed > limit_mb * MB:
                    raise RegistrationError(f"validation set {path.name}: {key!r} is {claimed / MB:.0f} MiB unpacked "
                                            f"({dtype} {shape}), over the limit of {limit_mb} MiB (setting "
                                            "max_validation_mb)")
    except RegistrationError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError, NotImplementedError, RuntimeError) as err:
        raise RegistrationError(f"validation set {path.name} is not an .npz of numpy arrays: {err}") from None


def check_task(existing: TaskInfo | None, task: str, check: ModelCheck, num_classes: int) -> TaskInfo:
    """The task row this model implies; refused when it differs from the task's fixed signature."""
    wanted = TaskInfo(task, check.input_name, check.input_dtype, check.sample_shape, num_classes)
    if existing is None:
        return wanted
    differences = [f"{field} {getattr(wanted, field)!r} (task has {getattr(existing, field)!r})"
                   for field in ("input_name", "input_dtype", "input_shape", "num_classes")
                   if tuple_or(getattr(wanted, field)) != tuple_or(getattr(existing, field))]
    if differences:
        raise RegistrationError(f"task {task!r} fixes the input signature of all its models; this model differs: "
                                + "; ".join(differences))
    return existing


def tuple_or(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def check_metric(metric: str, check: ModelCheck) -> str:
    if metric not in METRICS:
        raise RegistrationError(f"metric {metric!r} is not supported; use one of {', '.join(METRICS)}")
    if metric == "top5" and check.num_classes < 5:
        raise RegistrationError("metric top5 needs a score output with at least 5 classes")
    return metric
