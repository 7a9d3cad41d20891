"""The hardware catalogue: prices per hardware kind, and the cost of a query on a variant."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import InfaasError


class UnknownHardware(InfaasError, ValueError):
    """A hardware name that is not in the catalogue."""


@dataclass(frozen=True, slots=True)
class Hardware:
    name: str
    kind: str  # "cpu" or "gpu"
    price_per_hour: float  # USD per unit-hour (a vCPU for "cpu", one GPU otherwise)
    memory_gb: float
    description: str
    worker_units: int = 1  # units in one worker (VM)

    @property
    def worker_price_per_hour(self) -> float:
        return self.price_per_hour * self.worker_units

    @property
    def memory_mb(self) -> float:
        """One worker's memory (0: not limited)."""
        return self.memory_gb * 1024.0


@lru_cache(maxsize=8)
def load_catalog(path: str | None = None) -> dict[str, Hardware]:
    if path:
        text = Path(path).read_text()
    else:
        text = resources.files("infaas").joinpath("hardware.toml").read_text()
    table = tomllib.loads(text)
    return {name: Hardware(name=name, kind=entry["kind"], price_per_hour=float(entry["price_per_hour"]),
                           memory_gb=float(entry.get("memory_gb", 0)), description=entry.get("description", ""),
                           worker_units=int(entry.get("worker_units", 1)))
            for name, entry in table.items()}


def hardware(name: str, path: str | None = None) -> Hardware:
    catalog = load_catalog(path)
    if name not in catalog:
        raise UnknownHardware(f"unknown hardware {name!r}; the catalogue has: {', '.join(sorted(catalog))}")
    return catalog[name]


def variant_price_per_hour(hardware_name: str, threads: int = 1, path: str | None = None) -> float:
    """What the resources a variant replica occupies cost per hour."""
    hw = hardware(hardware_name, path)
    return hw.price_per_hour * (max(threads, 1) if hw.kind == "cpu" else 1)


def cost_per_1k(hardware_name: str, threads: int, batch_size: int, latency_ms: float,
                path: str | None = None) -> float:
    """USD per 1,000 queries served in full batches of `batch_size` taking `latency_ms` each."""
    price = variant_price_per_hour(hardware_name, threads, path)
    return price * latency_ms / (3600.0 * max(batch_size, 1))
