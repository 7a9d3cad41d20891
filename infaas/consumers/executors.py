"""Executors: a loaded variant artifact that runs batches. Shared by the profiler and the workers.

`open_executor(variant, path)` picks the implementation from `variant.optimizer` and
`variant.hardware`:
  - `ort-fp32`, `ort-int8` on `cpu`: ONNX Runtime, CPU execution provider, `variant.threads`
    intra-op threads (one inter-op thread: the graphs are sequential);
  - `ort-cuda-fp32`, `ort-cuda-fp16` on a GPU: ONNX Runtime, CUDA execution provider;
  - `ort-trt-fp16` on a GPU: ONNX Runtime, TensorRT execution provider (fp16, engine cache);
  - `tvm` on `cpu`: a Relax module compiled by TVM (`tvm.runtime.load_module` + `relax.VirtualMachine`);
  - `trt` on a GPU: a serialized native TensorRT engine.
`available_backends()` says which of these this host can build and run, and why not otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from ..catalog import Variant
from ..errors import InfaasError

CPU_OPTIMIZERS = ("ort-fp32", "ort-int8", "tvm")
GPU_OPTIMIZERS = ("ort-cuda-fp32", "ort-cuda-fp16", "ort-trt-fp16", "trt")
OPTIMIZERS = CPU_OPTIMIZERS + GPU_OPTIMIZERS
# nvidia-smi product names -> hardware catalogue names
GPU_NAMES = {"T4": "gpu-t4", "A10G": "gpu-a10g", "P100": "gpu-p100", "V100": "gpu-v100", "A100": "gpu-a100",
             "H100": "gpu-h100"}
# A TVM artifact compiled for one fixed batch size (MetaSchedule-tuned) is named `<hex>.tvm-b<N>.so`.
STATIC_BATCH_RE = re.compile(r"-b(\d+)\.so$")


class ExecutorError(InfaasError, RuntimeError):
    """A variant cannot be loaded or run here; the message says why."""


class Executor:
    """A loaded variant. `run` takes a batch-first array and returns the outputs, batch-first."""

    input_name: str = ""
    output_names: tuple[str, ...] = ()
    thread_safe: bool = True  # may `run` be called from several threads at once?
    max_batch: int | None = None  # a fixed upper bound, for artifacts built for one batch size

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_batch(self, batch: np.ndarray) -> None:
        if batch.ndim < 1 or batch.shape[0] < 1:
            raise ValueError(f"expected a batch-first array with at least one row, got shape {batch.shape}")
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            raise ValueError(f"batch of {batch.shape[0]} exceeds this variant's batch size {self.max_batch}")


# --- host capabilities ----------------------------------------------------------------------------
def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    """Product names of the NVIDIA GPUs `nvidia-smi` reports; empty when there are none."""
    if not shutil.which("nvidia-smi"):
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def local_gpu_hardware(override: str = "") -> str | None:
    """The hardware catalogue name of this host's GPU (`override` when given), or None."""
    names = gpu_names()
    if not names:
        return None
    if override:
        return override
    for key, hardware in GPU_NAMES.items():
        if re.search(rf"\b{key}\b", names[0]):
            return hardware
    return None


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _ort_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def available_backends(gpu_override: str = "") -> dict[str, str | None]:
    """For each `optimizer:hardware-kind`: None when this host can build and run it, else the reason."""
    reasons: dict[str, str | None] = {"ort-fp32:cpu": None, "ort-int8:cpu": None}
    reasons["tvm:cpu"] = None if _has("tvm") else "not available on this host: TVM is not installed (extra `tvm`)"
    gpu = gpu_names()
    hardware = local_gpu_hardware(gpu_override)
    if not gpu:
        no_gpu = "not available on this host: no CUDA device"
    elif hardware is None:
        no_gpu = (f"not available on this host: GPU {gpu[0]!r} is not in the hardware catalogue "
                  "(set `gpu_hardware`)")
    else:
        no_gpu = None
    providers = _ort_providers()
    for optimizer, provider in (("ort-cuda-fp32", "CUDAExecutionProvider"), ("ort-cuda-fp16", "CUDAExecutionProvider"),
                                ("ort-trt-fp16", "TensorrtExecutionProvider")):
        if no_gpu:
            reasons[f"{optimizer}:gpu"] = no_gpu
        elif provider not in providers:
            reasons[f"{optimizer}:gpu"] = (f"not available on this host: onnxruntime has no {provider} "
                                           "(install onnxruntime-gpu, extra `gpu`)")
        else:
            reasons[f"{optimizer}:gpu"] = None
    if no_gpu:
        reasons["trt:gpu"] = no_gpu
    elif not _has("tensorrt"):
        reasons["trt:gpu"] = "not available on this host: the tensorrt package is not installed (extra `tensorrt`)"
    elif not _has("cuda"):
        reasons["trt:gpu"] = "not available on this host: cuda-python (module `cuda`) is not installed"
    else:
        reasons["trt:gpu"] = None
    return reasons


def backend_key(optimizer: str, hardware: str) -> str:
    return f"{optimizer}:{'cpu' if hardware == 'cpu' else 'gpu'}"


# --- dispatch -------------------------------------------------------------------------------------
def open_executor(variant: Variant, artifact_path: Path | str, output_names: tuple[str, ...] = ()) -> Executor:
    """`output_names`: the model's (its catalogue entry), for artifacts that do not carry them (TVM)."""
    path = Path(artifact_path)
    if not path.is_file():
        raise ExecutorError(f"{variant.variant_id}: artifact {path} does not exist")
    on_gpu = variant.hardware != "cpu"
    optimizer = variant.optimizer
    if optimizer in ("ort-fp32", "ort-int8", "ort") and not on_gpu:
        return OrtExecutor(path, threads=variant.threads)
    if optimizer in ("ort-cuda-fp32", "ort-cuda-fp16", "ort") and on_gpu:
        return OrtExecutor(path, threads=variant.threads, providers=["CUDAExecutionProvider"])
    if optimizer == "ort-trt-fp16" and on_gpu:
        # engines are built on first load and reused (ORT keys them by model and GPU); never next to
        # the artifact, which may be a read-only repository directory
        from ..settings import load_settings
        cache = Path(load_settings().cache_dir).expanduser() / "trt-engines"  # setting cache_dir
        trt_options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                       "trt_engine_cache_path": str(cache)}
        cache.mkdir(parents=True, exist_ok=True)
        return OrtExecutor(path, threads=variant.threads,
                           providers=[("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider"])
    if optimizer == "tvm" and not on_gpu:
        return TvmExecutor(path, threads=variant.threads, output_names=output_names)
    if optimizer == "trt" and on_gpu:
        return TrtExecutor(path)
    raise ExecutorError(f"{variant.variant_id}: no executor for optimizer {optimizer!r} on {variant.hardware!r}")


# --- ONNX Runtime ---------------------------------------------------------------------------------
class OrtExecutor(Executor):
    """ONNX Runtime releases the GIL in `run`, so one session serves several threads at once."""

    def __init__(self, path: Path, threads: int = 1, providers: list | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(int(threads), 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        providers = providers or ["CPUExecutionProvider"]
        wanted = [p if isinstance(p, str) else p[0] for p in providers]
        missing = [p for p in wanted if p not in ort.get_available_providers()]
        if missing:
            raise ExecutorError(f"onnxruntime on this host lacks {', '.join(missing)}")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:
            raise ExecutorError(f"onnxruntime cannot load {path.name}: {err}") from None
        if wanted[0] != "CPUExecutionProvider" and self.session.get_providers()[0] != wanted[0]:
            raise ExecutorError(f"onnxruntime fell back to {self.session.get_providers()[0]} instead of {wanted[0]}")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self._check_batch(batch)
        return self.session.run(None, {self.input_name: batch})

    def close(self) -> None:
        self.session = None


# --- TVM ------------------------------------------------------------------------------------------
_tvm_state = threading.local()


def import_tvm():
    """Import TVM with a thread pool as large as the cores we may use, and no thread pinning
    (TVM otherwise halves the core count for hyper-threading and pins workers to fixed cores,
    which is wrong on a machine shared with other processes)."""
    os.environ.setdefault("TVM_NUM_THREADS", str(cpu_count()))
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    try:
        import tvm
        from tvm import relax
    except ImportError as err:
        raise ExecutorError(f"TVM is not installed on this host (extra `tvm`): {err}") from None
    return tvm, relax


def _tvm_threads(tvm, threads: int) -> None:
    """TVM's thread pool is per calling thread: size it for this variant before each run."""
    if getattr(_tvm_state, "threads", None) != threads:
        tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
        _tvm_state.threads = threads


class TvmExecutor(Executor):
    """A compiled Relax module. The VM keeps per-call state, so runs are serialised (thread_safe False).

    The module keeps the ONNX input's name but not the outputs': they are given (the model's, from
    the catalogue), else numbered `output_0`, `output_1`... once the number of outputs is known."""

    thread_safe = False

    def __init__(self, path: Path, threads: int = 1, output_names: tuple[str, ...] = ()):
        self.tvm, relax = import_tvm()
        self.threads = max(int(threads), 1)
        try:
            self.lib = self.tvm.runtime.load_module(str(path))
            self.vm = relax.VirtualMachine(self.lib, self.tvm.cpu())
            self.main = self.vm["main"]
        except Exception as err:
            raise ExecutorError(f"TVM cannot load {path.name}: {err}") from None
        static = STATIC_BATCH_RE.search(path.name)
        self.static_batch = int(static.group(1)) if static else None
        self.max_batch = self.static_batch
        self.input_name = str(self.vm._get_function_param_name("main", 0))  # the ONNX input's name
        self.output_names = tuple(output_names)
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self._check_batch(batch)
        rows = batch.shape[0]
        if self.static_batch and rows < self.static_batch:  # a fixed-shape module: pad, then cut
            pad = np.zeros((self.static_batch - rows, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        with self._lock:
            _tvm_threads(self.tvm, self.threads)
            out = self.main(self.tvm.runtime.tensor(np.ascontiguousarray(batch)))
        outputs = list(out) if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else [out]
        if len(self.output_names) != len(outputs):
            self.output_names = tuple(f"output_{k}" for k in range(len(outputs)))
        return [o.numpy()[:rows] for o in outputs]

    def close(self) -> None:
        self.main = self.vm = self.lib = None


# --- native TensorRT ------------------------------------------------------------------------------
class TrtExecutor(Executor):
    """A serialized TensorRT engine (one optimisation profile, batch 1..N), run through cuda-python.

    Inputs are copied host -> device, outputs device -> host on the executor's own stream."""

    thread_safe = False

    def __init__(self, path: Path):
        if not (_has("tensorrt") and _has("cuda")):
            raise ExecutorError("native TensorRT needs the tensorrt and cuda-python packages")
        import tensorrt as trt
        from cuda.bindings import runtime as cudart
        self.trt, self.cudart = trt, cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ExecutorError(f"TensorRT cannot deserialize {path.name}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = inputs[0]
        self.output_names = tuple(n for n in names if n not in inputs)
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.stream = self._check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def _check(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise ExecutorError(f"CUDA error {err}")
        return values[0] if len(values) == 1 else values

    def _buffer(self, name: str, nbytes: int) -> int:
        held = self._buffers.get(name)
        if held is None or held[1] < nbytes:
            if held is not None:
                self.cudart.cudaFree(held[0])
            held = (self._check(self.cudart.cudaMalloc(nbytes)), nbytes)
            self._buffers[name] = held
        return held[0]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self._check_batch(batch)
        cudart, trt = self.cudart, self.trt
        kind = cudart.cudaMemcpyKind
        batch = np.ascontiguousarray(batch)
        with self._lock:
            self.context.set_input_shape(self.input_name, batch.shape)
            source = self._buffer(self.input_name, batch.nbytes)
            self._check(cudart.cudaMemcpyAsync(source, batch.ctypes.data, batch.nbytes,
                                               kind.cudaMemcpyHostToDevice, self.stream))
            self.context.set_tensor_address(self.input_name, source)
            outputs = []
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                out = np.empty(shape, trt.nptype(self.engine.get_tensor_dtype(name)))
                self.context.set_tensor_address(name, self._buffer(name, out.nbytes))
                outputs.append(out)
            if not self.context.execute_async_v3(self.stream):
                raise ExecutorError("TensorRT execution failed")
            for name, out in zip(self.output_names, outputs, strict=True):
                self._check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes,
                                                   kind.cudaMemcpyDeviceToHost, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
        return outputs

    def close(self) -> None:
        for pointer, _ in self._buffers.values():
            self.cudart.cudaFree(pointer)
        self._buffers.clear()
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None
