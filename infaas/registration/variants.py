"""The search space: which variants of a model this host can build, and building their artifacts.

A variant is (optimizer, hardware, CPU threads, batch size). Artifacts depend on the optimizer only
(and, for fixed-shape builds, the batch size): ORT fp32 is the graph after offline optimisation,
ORT int8 the dynamically quantized graph, TVM a compiled Relax module (a shared library), fp16 the
graph converted for GPU execution, native TensorRT a serialized engine. Thread count and batch size
are run-time choices of the executor.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import variant_id
from ..consumers.executors import (
    CPU_OPTIMIZERS,
    GPU_OPTIMIZERS,
    OPTIMIZERS,
    available_backends,
    backend_key,
    cpu_count,
    local_gpu_hardware,
)
from ..hardware import UnknownHardware, load_catalog
from ..settings import Settings
from .validate import RegistrationError

log = logging.getLogger(__name__)
_TVM_BUILD = threading.Lock()  # TVM's compiler keeps per-process state: build one module at a time


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """A variant without its batch size: the unit that is built, loaded and profiled."""
    optimizer: str
    hardware: str
    threads: int

    def base_id(self, model: str) -> str:
        return variant_id(model, self.optimizer, self.hardware, self.threads, 0).rsplit(":", 1)[0]

    def variant_id(self, model: str, batch: int) -> str:
        return variant_id(model, self.optimizer, self.hardware, self.threads, batch)


@dataclass
class Plan:
    specs: list[VariantSpec]
    batch_sizes: tuple[int, ...]
    unavailable: dict[str, str] = field(default_factory=dict)  # "optimizer:hardware" -> why not here

    @property
    def optimizers(self) -> list[str]:
        return sorted({s.optimizer for s in self.specs}, key=OPTIMIZERS.index)


def thread_counts(settings: Settings) -> tuple[int, ...]:
    return tuple(sorted(set(settings.variant_threads))) or tuple(sorted({1, cpu_count()}))


def plan_variants(settings: Settings, hardware: Sequence[str] | None = None) -> Plan:
    """The variants to build for `hardware` (catalogue names; default: what this host has)."""
    catalog = load_catalog(settings.hardware_catalog or None)
    local_gpu = local_gpu_hardware(settings.gpu_hardware)
    if hardware:
        unknown = [h for h in hardware if h not in catalog]
        if unknown:
            raise UnknownHardware(f"unknown hardware {', '.join(map(repr, unknown))}; the catalogue has: "
                                  f"{', '.join(sorted(catalog))}")
        wanted = list(dict.fromkeys(hardware))
    else:
        wanted = ["cpu"] + ([local_gpu] if local_gpu in catalog else [])
    optimizers = settings.variant_optimizers or OPTIMIZERS
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad:
        raise RegistrationError(f"setting variant_optimizers: unknown optimizer(s) {', '.join(bad)}; "
                                f"known: {', '.join(OPTIMIZERS)}")
    backends = available_backends(settings.gpu_hardware)
    plan = Plan([], tuple(sorted(set(settings.variant_batch_sizes))))
    for name in wanted:
        on_cpu = catalog[name].kind == "cpu"
        for optimizer in (CPU_OPTIMIZERS if on_cpu else GPU_OPTIMIZERS):
            if optimizer not in optimizers:
                continue
            reason = backends[backend_key(optimizer, "cpu" if on_cpu else name)]
            if reason is None and not on_cpu and name != local_gpu:
                reason = f"not available on this host: its GPU is {local_gpu or 'none'}, not {name}"
            if reason:
                plan.unavailable[f"{optimizer}:{name}"] = reason
                continue
            for threads in (thread_counts(settings) if on_cpu else (1,)):
                plan.specs.append(VariantSpec(optimizer, name, threads))
    if not hardware and local_gpu not in catalog:  # say why no GPU variant was generated
        for optimizer in GPU_OPTIMIZERS:
            if optimizer in optimizers:
                plan.unavailable[f"{optimizer}:gpu"] = backends[backend_key(optimizer, "gpu")] or (
                    "not available on this host: GPU not in the hardware catalogue")
    return plan


# --- artifact builders: each writes files under `workdir` and returns {batch or None: path} -------
def build_artifacts(optimizer: str, model_path: Path, workdir: Path, settings: Settings,
                    batch_sizes: Sequence[int]) -> dict[int | None, Path]:
    """Build the artifact(s) of one optimizer. Key None: one artifact serves every batch size."""
    workdir.mkdir(parents=True, exist_ok=True)
    if optimizer == "ort-fp32":
        return {None: _ort_optimized(model_path, workdir / "model.fp32.onnx")}
    if optimizer == "ort-int8":
        return {None: _ort_int8(model_path, workdir / "model.int8.onnx")}
    if optimizer in ("ort-cuda-fp32", "ort-trt-fp16"):
        return {None: model_path}  # ORT builds the CUDA kernels / TensorRT engine at load time
    if optimizer == "ort-cuda-fp16":
        return {None: _fp16(model_path, workdir / "model.fp16.onnx")}
    if optimizer == "tvm":
        if settings.tvm_tune_trials > 0:  # MetaSchedule tunes fixed shapes: one module per batch size
            return {b: _tvm(model_path, workdir / f"model.tvm-b{b}.so", b, settings.tvm_tune_trials)
                    for b in batch_sizes}
        return {None: _tvm(model_path, workdir / "model.tvm.so", None, 0)}
    if optimizer == "trt":
        return {b: _trt_engine(model_path, workdir / f"model.trt-b{b}.engine", b) for b in batch_sizes}
    raise RegistrationError(f"no builder for optimizer {optimizer!r}")


def _ort_optimized(source: Path, target: Path) -> Path:
    """Offline graph optimisation. EXTENDED, not ALL: ALL adds layout rewrites tied to this CPU's
    instruction set; the executor applies those at load time on whatever CPU serves it."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    return target


def _ort_int8(source: Path, target: Path) -> Path:
    """Dynamic quantization: int8 weights, activations quantized per batch at run time. Signed
    weights first; ONNX Runtime's CPU ConvInteger only takes unsigned, so fall back to uint8."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    for weight_type in (QuantType.QInt8, QuantType.QUInt8):
        with _quiet_quantizer():
            quantize_dynamic(str(source), str(target), weight_type=weight_type)
        try:
            ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            return target
        except Exception as err:  # NOT_IMPLEMENTED for this weight type: try the other
            log.info("int8 (%s) model does not load in onnxruntime: %s", weight_type.name, err)
    raise RegistrationError("dynamic int8 quantization produced a model onnxruntime cannot run")


class _QuantizerChatter(logging.Filter):
    """The quantizer logs advice and per-tensor notes on the root logger; keep its errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not noisy or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_quantizer():
    chatter = _QuantizerChatter()
    logging.getLogger().addFilter(chatter)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(chatter)


def _fp16(source: Path, target: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(target))
    return target


def tvm_target():
    """LLVM for this host's CPU: the compiled module uses its vector instructions."""
    from ..consumers.executors import import_tvm
    tvm, _ = import_tvm()
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                              "num-cores": cpu_count()})


def _tvm(source: Path, target_path: Path, batch: int | None, trials: int) -> Path:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx
    model = onnx.load(str(source))
    with _TVM_BUILD:
        target = tvm_target()
        if batch is None:  # a dynamic batch dimension: one module for every batch size
            executable = _tvm_compile(from_onnx(model), target)
        else:
            name = model.graph.input[0].name
            dims = [batch] + [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
            executable = _tvm_tuned(from_onnx(model, shape_dict={name: dims}), target, trials, target_path.parent)
        executable.export_library(str(target_path))
    return target_path


def _fuse(mod):
    """Relax -> fused TIR kernels, the same preparation MetaSchedule extracts its tasks from."""
    import tvm
    from tvm import relax
    return tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                     relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                     relax.transform.FuseTIR()])(mod)


def _tvm_compile(mod, target):
    """Untuned build with one light schedule: TVM's legalized matmul loops (i, j, k) stride down
    the weight's columns; reordering them to (i, k, j) walks rows contiguously (so LLVM vectorizes
    the inner loop) and parallelising the batch loop lets TVM's thread pool use its threads.
    Measured on mlp-large (64x1024x1024x10) at batch 64: ~420 ms -> ~16 ms. Kernels of other
    shapes (convolutions, ...) keep TVM's default loops."""
    import tvm
    return tvm.compile(_schedule_matmuls(_fuse(mod)), target=target)


def _schedule_matmuls(mod):
    from tvm import s_tir, tirx
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        changed = False
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            kinds = [int(v.iter_type) for v in sch.get(block).iter_vars]  # 0: spatial, 2: reduction
            loops = sch.get_loops(block)
            if len(loops) != len(kinds) or len(kinds) < 3 or kinds[-1] != 2 or any(k != 0 for k in kinds[:-1]):
                continue
            *outer, j, k = loops
            sch.reorder(k, j)
            sch.parallel(outer[0])
            sch.decompose_reduction(block, k)
            changed = True
        if changed:
            mod[gvar] = sch.mod["main"]
    return mod


def _tvm_tuned(mod, target, trials: int, workdir: Path):
    """MetaSchedule: tune the fused kernels for `trials` measured candidates, then build with them."""
    import tempfile

    from tvm.s_tir import meta_schedule as ms
    with tempfile.TemporaryDirectory(dir=workdir) as work:
        # one builder process with a generous timeout: its worker imports TVM first, which took over
        # MetaSchedule's default 30 s on a busy 2-core host and failed every candidate
        database = ms.relax_integration.tune_relax(
            _fuse(mod), {}, target, work, max_trials_global=trials, num_trials_per_iter=min(trials, 64),
            cost_model="random", builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=300),
            runner=ms.runner.LocalRunner(timeout_sec=120))
        return ms.relax_integration.compile_relax(database, mod, target, None)


def _trt_engine(source: Path, target: Path, batch: int) -> Path:
    """A native TensorRT fp16 engine whose optimisation profile covers batches 1..`batch`."""
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RegistrationError(f"TensorRT cannot parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    tensor = network.get_input(0)
    sample = tuple(tensor.shape)[1:]
    profile.set_shape(tensor.name, (1, *sample), (batch, *sample), (batch, *sample))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RegistrationError(f"TensorRT could not build an engine for batch {batch}")
    target.write_bytes(bytes(engine))
    return target
