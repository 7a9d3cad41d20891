"""Domain records shared by the store, the registrar, the policies and the services.

Field names equal the Cassandra column names, so a row converts with `Variant(**row)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_name(kind: str, value: str) -> str:
    """App, task and model names travel in topic names and variant ids: keep them plain."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"{kind} name {value!r} is invalid: use 1-63 lower-case letters, digits and '-', "
                         "starting with a letter or digit")
    return value


def variant_id(model: str, optimizer: str, hardware: str, threads: int, batch: int) -> str:
    """A readable variant id, e.g. `mlp-large:ort-int8:cpu-2t:b8` (GPU variants: `...:gpu-t4:b8`)."""
    placement = f"{hardware}-{threads}t" if hardware == "cpu" else hardware
    return f"{model}:{optimizer}:{placement}:b{batch}"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    task: str
    input_name: str
    input_dtype: str
    input_shape: tuple[int, ...]  # per sample, batch dimension left out
    num_classes: int = 0
    created_at: int = 0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    task: str
    model: str
    version: int
    app_id: str
    public: bool
    architecture: str
    artifact: str
    sha256: str
    size_bytes: int
    metric: str
    accuracy: float
    input_name: str = ""
    output_names: tuple[str, ...] = ()
    validation_artifact: str = ""
    registered_at: int = 0

    def visible_to(self, app_id: str) -> bool:
        return self.public or self.app_id == app_id


@dataclass(frozen=True, slots=True)
class Variant:
    """A servable configuration of a model, with its measured (or imported) profile."""
    task: str
    variant_id: str
    model: str
    model_version: int
    app_id: str
    public: bool
    optimizer: str
    hardware: str
    threads: int
    batch_size: int
    artifact: str
    artifact_bytes: int
    accuracy: float
    load_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    slope_ms: float
    intercept_ms: float
    throughput_qps: float
    peak_memory_mb: float
    cost_per_1k: float
    source: str = "measured"
    profiled_at: int = 0

    def latency_at(self, batch: float) -> float:
        """INFaaS's linear latency model, latency(b) = slope * b + intercept, in ms per batch (b may be a
        mean batch size, hence a float)."""
        return max(self.slope_ms * batch + self.intercept_ms, 0.0)

    def visible_to(self, app_id: str) -> bool:
        return self.public or self.app_id == app_id

    @property
    def base_id(self) -> str:
        """The variant without its batch size: the unit whose latency is profiled per batch."""
        return self.variant_id.rsplit(":", 1)[0]


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    variant_id: str  # a base id (no batch) or a variant id
    batch_size: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_qps: float
    runs: int


def from_row(cls, row: dict):
    """Build a record from a store row, ignoring columns the record does not know."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in row.items() if k in names}
    for f in fields(cls):
        if f.name in values and values[f.name] is None and f.type in ("tuple[str, ...]", "tuple[int, ...]"):
            values[f.name] = ()
        elif f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)
