"""PNG plots of simulation runs, in the manner of the paper's figures (small: dpi 80)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 72
COLORS = {"infaas": "tab:blue", "replica-only": "tab:orange", "static": "tab:green"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _smooth(values, window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) < window or window <= 1:
        return values
    return np.convolve(values, np.ones(window) / window, mode="same")


def _minutes(count: int) -> np.ndarray:
    return np.arange(count) / 60.0


def policies_timeline(runs: dict[str, dict], title: str, path: str | Path, smooth_s: int = 30) -> Path:
    """Load, workers, cumulative cost and SLO violations over time, one line per policy."""
    plt = _pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(7.5, 7.5), sharex=True)
    first = next(iter(runs.values()))["timeline"]
    axes[0].plot(_minutes(len(first["load_qps"])), _smooth(first["load_qps"], smooth_s), color="black", lw=1)
    axes[0].set_ylabel("load (q/s)")
    for policy, summary in runs.items():
        tl, color = summary["timeline"], COLORS.get(policy)
        minutes = _minutes(len(tl["workers_total"]))
        axes[1].plot(minutes, tl["workers_total"], label=policy, color=color, lw=1)
        axes[2].plot(minutes, tl["cost_usd"], label=policy, color=color, lw=1)
        load = np.maximum(_smooth(tl["load_qps"], smooth_s), 1e-9)
        axes[3].plot(minutes, 100 * _smooth(tl["violations"], smooth_s) / load, label=policy, color=color, lw=1)
    warmup_min = first_summary_warmup(runs) / 60.0
    for ax in axes:
        ax.axvspan(0, warmup_min, color="0.9", lw=0)  # the warm-up, left out of the metrics
    axes[1].set_ylabel("workers")
    axes[2].set_ylabel("cost (USD, cumulative)")
    axes[3].set_ylabel(f"SLO violations (%, {smooth_s} s)")
    axes[3].set_xlabel("time (min)")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def first_summary_warmup(runs: dict[str, dict]) -> float:
    return float(next(iter(runs.values())).get("warmup_s", 0.0))


def summary_bars(results: dict[str, dict[str, dict]], path: str | Path) -> Path:
    """Cost, violation rate, goodput and accuracy per workload, grouped by policy."""
    plt = _pyplot()
    metrics = (("cost_usd", "cost (USD)", 1.0), ("slo_violation_rate", "SLO violations (%)", 100.0),
               ("goodput_qps", "goodput (q/s within SLO)", 1.0), ("mean_accuracy", "mean served accuracy", 1.0))
    scenarios = list(results)
    policies = sorted({p for runs in results.values() for p in runs}, key=list(COLORS).index)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    width = 0.8 / max(len(policies), 1)
    x = np.arange(len(scenarios))
    for ax, (key, label, factor) in zip(axes.flat, metrics, strict=True):
        for i, policy in enumerate(policies):
            values = [results[s].get(policy, {}).get(key, 0.0) * factor for s in scenarios]
            ax.bar(x + (i - (len(policies) - 1) / 2) * width, values, width, label=policy, color=COLORS.get(policy))
        ax.set_xticks(x, scenarios, rotation=20, fontsize=8)
        ax.set_ylabel(label)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def run_timeline(summary: dict, path: str | Path, smooth_s: int = 10) -> Path:
    """One run: load, workers per hardware, replicas per task, SLO violations."""
    plt = _pyplot()
    tl = summary["timeline"]
    fig, axes = plt.subplots(4, 1, figsize=(8, 8), sharex=True)
    minutes = _minutes(len(tl["load_qps"]))
    axes[0].plot(minutes, _smooth(tl["load_qps"], smooth_s), color="black", lw=1)
    axes[0].set_ylabel("load (q/s)")
    for hw, counts in tl["workers"].items():
        axes[1].plot(minutes[:len(counts)], counts, label=hw, lw=1)
    axes[1].set_ylabel("workers")
    axes[1].legend(fontsize=8, loc="upper right")
    for task, counts in tl["replicas_per_task"].items():
        axes[2].plot(minutes[:len(counts)], counts, label=task, lw=1)
    axes[2].set_ylabel("replicas")
    axes[2].legend(fontsize=7, ncol=3, loc="upper right")
    load = np.maximum(_smooth(tl["load_qps"], smooth_s), 1e-9)
    axes[3].plot(minutes, 100 * _smooth(tl["violations"], smooth_s) / load, color="tab:red", lw=1)
    axes[3].set_ylabel("SLO violations (%)")
    axes[3].set_xlabel("time (min)")
    fig.suptitle(f"{summary['scenario'] or 'simulation'}: {summary['policy']}")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path
