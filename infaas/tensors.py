"""Tensors on the wire (`infaas.Tensor`: dtype, shape, raw little-endian C-order bytes) and their
validation. Every check happens before any allocation, so a message that claims a huge shape
costs nothing."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .errors import InfaasError

# Numeric types a model input or output may have. Names are numpy's.
DTYPES = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"})
MAX_DIMS = 8


class TensorError(InfaasError, ValueError):
    """A tensor that is malformed or does not fit what the model expects."""


def to_tensor(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    if array.dtype.name not in DTYPES:
        raise TensorError(f"dtype {array.dtype.name} is not supported (use one of {', '.join(sorted(DTYPES))})")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": np.ascontiguousarray(little).tobytes()}


def check_header(tensor: dict[str, Any], max_bytes: int) -> tuple[np.dtype, tuple[int, ...]]:
    """Validate dtype, shape and data length; return them. No array is built."""
    name = tensor.get("dtype")
    if name not in DTYPES:  # the message echoes at most 40 characters of what was sent: errors stay small
        raise TensorError(f"unsupported dtype {name!r:.40}")
    shape = tuple(tensor.get("shape") or ())
    if not shape or len(shape) > MAX_DIMS:
        raise TensorError(f"shape has {len(shape)} dimensions, it must have 1 to {MAX_DIMS}")
    if any(dim < 0 for dim in shape):
        raise TensorError(f"shape {list(shape)} has a negative dimension")
    dtype = _little_endian(name)
    # Compare in Python ints: no overflow, no allocation, whatever the claimed size. Zero dims count
    # as one here: numpy cannot even describe an empty array whose other dims are huge (ValueError).
    claimed = math.prod(shape) * dtype.itemsize
    bound = math.prod(max(dim, 1) for dim in shape) * dtype.itemsize
    if bound > max_bytes:
        raise TensorError(f"shape {list(shape)} of {name} claims {bound} bytes, over the limit of {max_bytes} bytes "
                          f"({max_bytes / (1 << 20):g} MiB)")
    if claimed != len(tensor.get("data") or b""):
        raise TensorError(f"shape {list(shape)} of {name} needs {claimed} bytes of data, the message has "
                          f"{len(tensor.get('data') or b'')}")
    return dtype, shape


def from_tensor(tensor: dict[str, Any], max_bytes: int = 64 << 20) -> np.ndarray:
    dtype, shape = check_header(tensor, max_bytes)
    return np.frombuffer(tensor["data"], dtype=dtype).reshape(shape)


@functools.lru_cache(maxsize=64)
def _little_endian(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


@functools.lru_cache(maxsize=64)
def _dtype(name: str) -> np.dtype:
    return np.dtype(name)


def check_input(array: np.ndarray, dtype: str, sample_shape: tuple[int, ...], max_batch: int) -> None:
    """The input must be a batch of samples of the task's signature, with finite values."""
    expected = _dtype(dtype)  # dtype objects compare fast; `.name` is built on every read
    if array.dtype != expected and array.dtype.newbyteorder("=") != expected:  # either byte order
        raise TensorError(f"input dtype is {array.dtype.name}, the task expects {dtype}")
    if array.shape[1:] != tuple(sample_shape) or array.ndim != len(sample_shape) + 1:
        expected = ["N", *sample_shape]
        raise TensorError(f"input shape {list(array.shape)} does not match the task's {expected}")
    if not 1 <= array.shape[0] <= max_batch:
        raise TensorError(f"batch of {array.shape[0]} rows: must be 1 to {max_batch}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise TensorError("input contains NaN or infinite values")
