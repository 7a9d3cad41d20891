"""Measuring variants on this host: accuracy, load latency, latency per batch size, memory.

Latency measurements run one at a time, host-wide: a process lock plus a file lock under the
state directory, so neither another thread of this process nor another `infaas register` on the
same host times at the same moment. Accuracy runs (not timed) may run in parallel.

Peak memory is the growth of this process's resident set (RSS) while the variant is loaded and
run at its largest batch: the kernel's RSS high-water mark (`VmHWM`) is reset before the load
(`/proc/self/clear_refs`), and the peak minus the RSS just before the load is reported. It counts
native allocations (ONNX Runtime arenas, TVM workspaces) that Python's tracemalloc cannot see. It
is a lower bound when the allocator reuses memory freed by an earlier variant; without
/proc (not Linux) it falls back to the RSS growth sampled after each batch size.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalog import Variant
from ..consumers.executors import Executor, open_executor
from ..settings import Settings

MB = 1 << 20
_PROFILE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Budget:
    """How long each batch size is timed."""
    warmup: int
    runs: int
    max_s: float

    @classmethod
    def from_settings(cls, settings: Settings, quick: bool = False) -> Budget:
        if quick:
            return cls(warmup=2, runs=min(settings.profile_runs, 15), max_s=min(settings.profile_max_s, 0.3))
        return cls(settings.profile_warmup, settings.profile_runs, settings.profile_max_s)


@dataclass(frozen=True)
class BatchTiming:
    batch: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    runs: int

    @property
    def throughput_qps(self) -> float:
        return self.batch * 1000.0 / self.p50_ms if self.p50_ms > 0 else 0.0


@dataclass(frozen=True)
class BaseProfile:
    load_ms: float
    peak_memory_mb: float
    timings: dict[int, BatchTiming]


@contextlib.contextmanager
def exclusive_timing(settings: Settings):
    """Hold the host-wide profiling lock while timing."""
    with _PROFILE_LOCK:
        lock_path = settings.state_dir / "profiler.lock"
        try:
            import fcntl
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = lock_path.open("a")
        except (ImportError, OSError):  # no file locks here: the process lock still holds
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# --- accuracy ---------------------------------------------------------------------------------------
def predictions(outputs: list[np.ndarray], k: int = 1) -> np.ndarray:
    """Top-k class indices [n, k] from the first output (scores [n, C] or labels [n])."""
    first = np.asarray(outputs[0])
    if first.ndim == 1:
        return first.astype(np.int64)[:, None]
    if k == 1:
        return np.argmax(first, axis=1)[:, None]
    return np.argsort(-first, axis=1, kind="stable")[:, :k]


def predict(executor: Executor, inputs: np.ndarray, chunk: int, k: int = 1) -> np.ndarray:
    parts = [predictions(executor.run(inputs[i:i + chunk]), k) for i in range(0, len(inputs), chunk)]
    return np.concatenate(parts)


def accuracy(top: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose label is among the predicted top-k."""
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def metric_k(metric: str) -> int:
    return 5 if metric == "top5" else 1


# --- memory -----------------------------------------------------------------------------------------
def _proc_status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _release_freed_memory() -> None:
    """Hand memory freed by earlier variants back to the OS, so the baseline RSS is honest."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """RSS growth from `start()` to the highest point reached since."""

    def start(self) -> None:
        _release_freed_memory()
        self.hwm = _reset_peak()
        self.base = _proc_status("VmRSS") or 0
        self.sampled = self.base

    def sample(self) -> None:
        self.sampled = max(self.sampled, _proc_status("VmRSS") or 0)

    def peak_mb(self) -> float:
        self.sample()
        peak = (_proc_status("VmHWM") if self.hwm else None) or self.sampled
        return max(peak - self.base, 0) / MB


# --- timing -----------------------------------------------------------------------------------------
def batch_input(inputs: np.ndarray, batch: int) -> np.ndarray:
    """`batch` real validation samples (repeated when the set is smaller)."""
    reps = -(-batch // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * reps)[:batch] if reps > 1 else inputs[:batch])


def time_batch(executor: Executor, data: np.ndarray, budget: Budget) -> BatchTiming:
    for _ in range(budget.warmup):
        executor.run(data)
    times: list[float] = []
    deadline = time.perf_counter() + budget.max_s
    while len(times) < budget.runs and (len(times) < 5 or time.perf_counter() < deadline):
        started = time.perf_counter_ns()
        executor.run(data)
        times.append((time.perf_counter_ns() - started) / 1e6)
    values = np.asarray(times)
    return BatchTiming(len(data), float(np.percentile(values, 50)), float(np.percentile(values, 99)),
                       float(values.mean()), len(values))


def profile_base(variant: Variant, fetch: Callable[[str, bool], Path], artifacts: dict[int, str],
                 inputs: np.ndarray, batch_sizes: tuple[int, ...], budget: Budget) -> BaseProfile:
    """Cold load (fetch from the repository, open, first inference), then each batch size.

    `variant` is any variant of the base (its optimizer, hardware, threads matter); `artifacts`
    maps each batch size to its artifact URL (the same URL for all, unless built per batch)."""
    probe = MemoryProbe()
    largest = max(batch_sizes)
    probe.start()
    started = time.perf_counter()
    path = fetch(artifacts[largest], True)
    executor = open_executor(_with_batch(variant, largest), path)
    executor.run(batch_input(inputs, 1))
    load_ms = (time.perf_counter() - started) * 1000
    timings: dict[int, BatchTiming] = {}
    try:
        for batch in sorted(batch_sizes, reverse=True):  # the largest first: the memory peak
            if artifacts[batch] != artifacts[largest]:
                with open_executor(_with_batch(variant, batch), fetch(artifacts[batch], False)) as other:
                    timings[batch] = time_batch(other, batch_input(inputs, batch), budget)
            else:
                timings[batch] = time_batch(executor, batch_input(inputs, batch), budget)
            probe.sample()
        peak = probe.peak_mb()
    finally:
        executor.close()
    return BaseProfile(load_ms, peak, dict(sorted(timings.items())))


def _with_batch(variant: Variant, batch: int) -> Variant:
    from dataclasses import replace
    return replace(variant, batch_size=batch)
