"""Checks on everything a registration brings in, before anything is stored.

The model must be a self-contained ONNX file (no external data, no custom-op domains unless
`allow_custom_ops`), pass `onnx.checker`'s full check, take one input with a dynamic batch
dimension and produce class scores first. The validation set is an `.npz` of plain arrays
(`inputs`, `labels`; loaded with `allow_pickle=False`, so it cannot run code) matching the model.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalog import TaskInfo
from ..settings import Settings

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
METRICS = ("top1", "top5")
MB = 1 << 20


class RegistrationError(ValueError):
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
    _refuse_external_data(model, path)
    _refuse_custom_domains(model, path, settings.allow_custom_ops)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # the checker raises several types; each means "not a valid model"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RegistrationError(f"model {path.name} fails the ONNX checker: {first}") from None
    name, dtype, sample = _input_signature(model)
    outputs, classes = _output_signature(model)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ModelCheck(data, hashlib.sha256(data).hexdigest(), name, dtype, sample, outputs, classes, opset)


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
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"inputs", "labels"} - set(archive.files)
            if missing:
                raise RegistrationError(f"validation set {path.name} lacks array(s) {', '.join(sorted(missing))} "
                                        f"(it has: {', '.join(archive.files) or 'none'})")
            inputs, labels = archive["inputs"], archive["labels"]
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise RegistrationError(f"validation set {path.name} is not an .npz archive: {err}") from None
    except ValueError as err:  # object arrays refuse to load without pickle
        raise RegistrationError(f"validation set {path.name} holds non-numeric arrays: {err}") from None
    if inputs.dtype.name != check.input_dtype:
        raise RegistrationError(f"validation inputs are {inputs.dtype.name}, the model input "
                                f"{check.input_name!r} takes {check.input_dtype}")
    if inputs.ndim < 1 or tuple(inputs.shape[1:]) != check.sample_shape:
        raise RegistrationError(f"validation inputs have per-sample shape {tuple(inputs.shape[1:])}, the model "
                                f"input {check.input_name!r} takes {check.sample_shape}")
    if len(inputs) == 0:
        raise RegistrationError("the validation set is empty")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise RegistrationError(f"validation labels must be a 1-D integer array, got {labels.dtype.name} "
                                f"{labels.shape}")
    if len(labels) != len(inputs):
        raise RegistrationError(f"validation set has {len(inputs)} inputs but {len(labels)} labels")
    if np.issubdtype(inputs.dtype, np.floating) and not np.isfinite(inputs).all():
        raise RegistrationError("validation inputs contain NaN or infinite values")
    if labels.min() < 0 or (check.num_classes and labels.max() >= check.num_classes):
        raise RegistrationError(f"validation labels range {labels.min()}..{labels.max()}, outside the model's "
                                f"{check.num_classes} classes")
    return np.ascontiguousarray(inputs), labels.astype(np.int64)


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
