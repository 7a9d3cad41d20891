"""Workloads for the simulator: query arrivals per task, with each query's requirements.

Inputs
  * a query trace, one query a line: `arrival_ms,qos_level,deadline_ms` (the Proteus traces in
    `../shared/data/proteus/traces/SCENARIO/FAMILY.txt`; the task is the file name, e.g. `resnet`);
  * or a per-second rate CSV with a header: `second,qps[,deadline_ms[,qos_level]]`; arrivals are
    Poisson within each second (seeded);
  * or `flat_trace(...)`: a Poisson stream at a constant rate.
Scaling: `--time-scale X` multiplies every arrival time by X (the trace lasts X times longer, rates
divide by X); `--rate-scale Y` keeps each query with probability Y (Y < 1), or adds copies
(floor(Y) in all, plus one more with probability frac(Y)) spread uniformly over the gap to the
next query, so the rate's shape is kept while the number of queries is multiplied by Y.

Requirements per query: the SLO is `deadline_ms`; the accuracy demand is drawn from the
distribution of its `qos_level` (QOS_DEMAND), as a fraction of the best accuracy that a variant of
the task reaches within that SLO under load (`capacity.usable_batch` >= 1; families differ: top-1
0.79 for ResNet, mAP 0.51 for YOLOv5, 0.32 for T5; and a 300 ms SLO rules out GPT-2 XL). So every
demand can be met by some variant, and the baselines' fixed variant meets them all.
Level 1 (the only one in the Proteus traces): a quarter of the queries take any variant, a quarter
want 90% of that best, a quarter 95%, a quarter 99%. These are our assumptions, not data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from numpy.typing import NDArray

from ..catalog import Variant
from ..policies.baselines import TaskDemand
from ..policies.capacity import usable_batch

# qos_level -> ((fraction of the task's best accuracy, probability), ...)
QOS_DEMAND: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.0, 0.25), (0.90, 0.25), (0.95, 0.25), (0.99, 0.25)),
    2: ((0.95, 0.5), (0.99, 0.5)),
    3: ((1.0, 1.0),),
}
INITIAL_WINDOW_S = 10  # replica-only starts with the replicas the first seconds need


@dataclass(frozen=True)
class Trace:
    task: str
    arrival_ms: np.ndarray  # float64, sorted
    deadline_ms: np.ndarray  # float64
    qos: np.ndarray  # int16
    source: str = ""

    def __len__(self) -> int:
        return len(self.arrival_ms)

    @property
    def duration_ms(self) -> float:
        return float(self.arrival_ms[-1]) if len(self) else 0.0


def read_trace(path: str | Path, task: str | None = None, rng: np.random.Generator | None = None) -> Trace:
    """A query trace or a per-second rate CSV (recognized by its `second,...` header)."""
    path = Path(path)
    task = task or path.stem
    if is_rate_csv(path):
        return read_rate_csv(path, task, rng or np.random.default_rng(0))
    data = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    if data.size == 0:
        return Trace(task, np.zeros(0), np.zeros(0), np.zeros(0, np.int16), str(path))
    if data.shape[1] != 3:
        raise ValueError(f"{path}: expected `arrival_ms,qos_level,deadline_ms` per line, got {data.shape[1]} columns")
    order = np.argsort(data[:, 0], kind="stable")
    data = data[order]
    return Trace(task, data[:, 0].copy(), data[:, 2].copy(), data[:, 1].astype(np.int16), str(path))


def is_rate_csv(path: str | Path) -> bool:
    """Whether the file is a per-second rate CSV (a `second,...` header) rather than a query trace."""
    with Path(path).open() as handle:
        return handle.readline().strip().lower().startswith("second")


def _rate_rows(path: str | Path) -> NDArray[np.void]:
    """A rate CSV's rows, by column name (`second`, `qps`, optional `deadline_ms`, `qos_level`)."""
    # With `names=True` the result is a structured array (one float64 field per column), which numpy's
    # stubs type as a plain float64 array; the cast gives it its real type, indexable by field name.
    rows = cast("NDArray[np.void]", np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64, ndmin=1))
    if rows.dtype.names is None:
        raise ValueError(f"{path}: expected a header `second,qps[,deadline_ms[,qos_level]]`")
    return rows


def rates_total(path: str | Path) -> float:
    """A rate CSV's expected number of queries: its per-second rates summed."""
    return float(np.clip(_rate_rows(path)["qps"], 0.0, None).sum())


def load_trace(path: str | Path, task: str | None, time_scale: float, rate_scale: float,
               rng: np.random.Generator) -> Trace:
    """A trace file `time_scale` x longer with `rate_scale` x its queries: a per-second rate CSV through its
    rates (Poisson arrivals at the scaled rate), a query trace through `scale_trace`.

    `scale_trace` spreads each query's copies over the gap to the next one: right for a dense trace, but
    the bundled rate traces draw 0.5-2 queries a second, and at 30x each drawn query became a clump of 30
    (inter-arrival gaps' coefficient of variation 1.7, against a Poisson stream's 1)."""
    if time_scale <= 0 or rate_scale <= 0:
        raise ValueError("time and rate scales must be positive")
    if is_rate_csv(path):
        return read_rate_csv(path, task or Path(path).stem, rng, time_scale, rate_scale)
    return scale_trace(read_trace(path, task, rng), time_scale, rate_scale, rng)


def read_rate_csv(path: str | Path, task: str, rng: np.random.Generator, time_scale: float = 1.0,
                  rate_scale: float = 1.0) -> Trace:
    """Poisson arrivals at each second's rate x `rate_scale`, each second stretched `time_scale` x."""
    rows = _rate_rows(path)
    names = rows.dtype.names or ()
    deadline = rows["deadline_ms"] if "deadline_ms" in names else np.full(len(rows), 1000.0)
    qos = rows["qos_level"] if "qos_level" in names else np.ones(len(rows))
    arrivals, deadlines, levels = [], [], []
    for second, qps, slo, level in zip(rows["second"], rows["qps"], deadline, qos, strict=True):
        count = rng.poisson(max(qps, 0.0) * rate_scale)
        arrivals.append(np.sort(rng.uniform(second * 1000.0 * time_scale, (second + 1) * 1000.0 * time_scale, count)))
        deadlines.append(np.full(count, slo))
        levels.append(np.full(count, level, dtype=np.int16))
    return Trace(task, np.concatenate(arrivals), np.concatenate(deadlines), np.concatenate(levels), str(path))


def flat_trace(task: str, rate_qps: float, duration_s: float, deadline_ms: float, rng: np.random.Generator,
               qos: int = 1) -> Trace:
    """Poisson arrivals at a constant rate."""
    count = rng.poisson(rate_qps * duration_s)
    arrivals = np.sort(rng.uniform(0.0, duration_s * 1000.0, count))
    return Trace(task, arrivals, np.full(count, float(deadline_ms)), np.full(count, qos, dtype=np.int16),
                 f"flat {rate_qps:g} qps")


def scale_trace(trace: Trace, time_scale: float, rate_scale: float, rng: np.random.Generator) -> Trace:
    if time_scale <= 0 or rate_scale <= 0:
        raise ValueError("time and rate scales must be positive")
    arrivals = trace.arrival_ms * time_scale
    if rate_scale == 1 or len(trace) == 0:
        return Trace(trace.task, arrivals, trace.deadline_ms, trace.qos, trace.source)
    whole, fraction = math.floor(rate_scale), rate_scale - math.floor(rate_scale)
    copies = np.full(len(trace), whole, dtype=np.int64) + (rng.random(len(trace)) < fraction)
    gaps = np.diff(arrivals, append=arrivals[-1] + (np.mean(np.diff(arrivals)) if len(arrivals) > 1 else 1.0))
    source = np.repeat(np.arange(len(trace)), copies)
    first_copy = np.concatenate(([0], np.cumsum(copies)[:-1]))
    rank = np.arange(len(source)) - np.repeat(first_copy, copies)  # 0 for the original, 1.. for the copies
    jitter = np.where(rank == 0, 0.0, rng.random(len(source)) * gaps[source])
    new_arrivals = arrivals[source] + jitter
    order = np.argsort(new_arrivals, kind="stable")
    return Trace(trace.task, new_arrivals[order], trace.deadline_ms[source][order], trace.qos[source][order],
                 trace.source)


def trace_files(spec: str) -> list[tuple[str | None, Path]]:
    """`PATH`, `TASK=PATH`, or a directory (every *.txt / *.csv in it)."""
    task, _, name = spec.rpartition("=") if "=" in spec else (None, "", spec)
    path = Path(name)
    if path.is_dir():
        files = sorted([*path.glob("*.txt"), *path.glob("*.csv")])
        if not files:
            raise ValueError(f"{path}: no *.txt or *.csv trace in this directory")
        return [(None, f) for f in files]
    if not path.exists():
        raise ValueError(f"trace {path} does not exist")
    return [(task or None, path)]


@dataclass(frozen=True)
class Workload:
    """All tasks' queries merged in arrival order, with each query's requirements."""
    tasks: tuple[str, ...]
    arrival_ms: np.ndarray  # float64, sorted
    task_index: np.ndarray  # int32 into `tasks`
    deadline_ms: np.ndarray  # float64 (the SLO)
    accuracy_demand: np.ndarray  # float64, absolute
    demand_class: np.ndarray  # int32: one request class per (task, accuracy demand, SLO)
    classes: tuple[tuple[str, float, float], ...]  # class -> (task, accuracy demand, SLO)

    def __len__(self) -> int:
        return len(self.arrival_ms)

    @property
    def duration_ms(self) -> float:
        return float(self.arrival_ms[-1]) if len(self) else 0.0


def best_accuracy(variants: Iterable[Variant], slo_ms: float = 0.0, slo_factor: float = 2.0) -> dict[str, float]:
    """Per task, the best accuracy of a variant that meets the SLO under load (any, for no SLO)."""
    best: dict[str, float] = {}
    for v in variants:
        if slo_ms <= 0 or usable_batch(v, slo_ms, slo_factor) >= 1:
            best[v.task] = max(best.get(v.task, 0.0), v.accuracy)
    return best


def build_workload(traces: Sequence[Trace], variants: Iterable[Variant], rng: np.random.Generator,
                   qos_demand: Mapping[int, tuple[tuple[float, float], ...]] = QOS_DEMAND,
                   slo_factor: float = 2.0) -> Workload:
    variants = list(variants)
    best = best_accuracy(variants)
    missing = sorted({t.task for t in traces} - set(best))
    if missing:
        raise ValueError(f"no variant for task(s) {', '.join(missing)} in the catalogue (tasks: {', '.join(sorted(best))})")
    tasks = tuple(sorted({t.task for t in traces}))
    arrival = np.concatenate([t.arrival_ms for t in traces] or [np.zeros(0)])
    task_index = np.concatenate([np.full(len(t), tasks.index(t.task), np.int32) for t in traces] or [np.zeros(0, np.int32)])
    deadline = np.concatenate([t.deadline_ms for t in traces] or [np.zeros(0)])
    qos = np.concatenate([t.qos for t in traces] or [np.zeros(0, np.int16)])
    order = np.argsort(arrival, kind="stable")
    arrival, task_index, deadline, qos = arrival[order], task_index[order], deadline[order], qos[order]
    fractions, level = _draw_fractions(qos, rng, qos_demand)
    slos, slo_index = np.unique(deadline, return_inverse=True)
    # One request class per (task, SLO, demand level): an integer key, so grouping 3.6 M queries is one sort.
    key = (task_index.astype(np.int64) * len(slos) + slo_index) * len(fractions) + level
    keys, demand_class = np.unique(key, return_inverse=True)
    classes = []
    for k in keys.tolist():
        rest, level_of = divmod(k, len(fractions))
        task_of, slo_of = divmod(rest, len(slos))
        task, slo = tasks[task_of], float(slos[slo_of])
        within = best_accuracy((v for v in variants if v.task == task), slo, slo_factor)
        # No variant meets this SLO under load: the best one overall sets the scale.
        classes.append((task, float(fractions[level_of]) * within.get(task, best[task]), slo))
    demand_class = demand_class.reshape(-1).astype(np.int32)
    demand = np.array([c[1] for c in classes])[demand_class] if classes else np.zeros(0)
    return Workload(tasks, arrival, task_index, deadline, demand, demand_class, tuple(classes))


def _draw_fractions(qos: np.ndarray, rng: np.random.Generator,
                    qos_demand: Mapping[int, tuple[tuple[float, float], ...]]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct demand fractions, and for each query the index of its own."""
    fractions = np.array(sorted({f for table in qos_demand.values() for f, _ in table}))
    draws = rng.random(len(qos))
    level = np.zeros(len(qos), dtype=np.int64)
    for value in np.unique(qos):
        table = qos_demand.get(int(value), qos_demand[1])
        cumulative = np.cumsum([p for _, p in table])
        picks = np.searchsorted(cumulative / cumulative[-1], draws[qos == value], side="right")
        values = np.array([f for f, _ in table])[np.minimum(picks, len(table) - 1)]
        level[qos == value] = np.searchsorted(fractions, values)
    return fractions, level


def task_demands(workload: Workload) -> list[TaskDemand]:
    """Peak and initial rates, highest accuracy demand and tightest SLO per task (for the baselines)."""
    demands = []
    for index, task in enumerate(workload.tasks):
        mine = workload.task_index == index
        seconds = (workload.arrival_ms[mine] // 1000).astype(np.int64)
        per_second = np.bincount(seconds) if len(seconds) else np.zeros(1)
        initial = per_second[:INITIAL_WINDOW_S].mean() if len(per_second) else 0.0
        demands.append(TaskDemand(task, float(per_second.max()), float(initial),
                                  float(workload.accuracy_demand[mine].max(initial=0.0)),
                                  float(workload.deadline_ms[mine].min(initial=math.inf))))
    return demands
