"""The demo's trace: on a clone with no Proteus data beside it, the bundled synthetic trace."""

import numpy as np
import pytest

from infaas import demo
from infaas.catalog import Variant
from infaas.demo import BUNDLED_TRACE, RequirementClass, arrivals_from_trace, default_trace
from infaas.hardware import cost_per_1k
from infaas.settings import Settings


def test_default_trace_falls_back_to_the_bundled_one(tmp_path, monkeypatch):
    monkeypatch.setenv("INFAAS_PROTEUS_DIR", str(tmp_path / "absent"))
    assert default_trace() == BUNDLED_TRACE and BUNDLED_TRACE.is_file()
    proteus_trace = tmp_path / "present" / "traces" / "zipf_exponential_bursty_300" / "resnet.txt"
    proteus_trace.parent.mkdir(parents=True)
    proteus_trace.write_text("0,1,100\n")
    monkeypatch.setenv("INFAAS_PROTEUS_DIR", str(tmp_path / "present"))
    assert default_trace() == proteus_trace


def test_bundled_trace_has_a_burst_and_a_quiet_end():
    classes = [RequirementClass("only", 1.0, 100.0, None, "")]
    arrivals = arrivals_from_trace(BUNDLED_TRACE, duration_s=150.0, mean_qps=20.0, classes=classes)
    at = np.array([a.at_s for a in arrivals])
    assert abs(len(at) - 150 * 20) < 0.1 * 150 * 20  # thinned/replicated to the mean rate asked for
    per_second = np.bincount(at.astype(int), minlength=150)
    start, burst, end = per_second[:10].mean(), per_second.max(), per_second[-30:].mean()
    assert burst > 2.5 * start and end < 0.5 * start, (start, burst, end)
    assert demo.TASK in {a.task for a in arrivals}


def _variant(model: str, accuracy: float, ms: float, batch: int = 1) -> Variant:
    return Variant(demo.TASK, f"{model}:ort-fp32:cpu-1t:b{batch}", model, 1, "demo", True, "ort-fp32", "cpu", 1, batch,
                   "a", 1, accuracy, 50.0, ms * batch, ms * batch, ms, 0.0, 1000 / ms, 10.0,
                   cost_per_1k("cpu", 1, batch, ms * batch))


def test_summary_per_class_counts_what_each_class_got():
    from infaas.loadgen import Arrival, RunStats
    classes = [RequirementClass("fast", 0.5, 25.0, None, ""), RequirementClass("accurate", 0.5, 250.0, 0.95, "")]
    variants = {v.variant_id: v for v in (_variant("logreg", 0.31, 0.01), _variant("cnn-tta", 0.97, 2.0))}
    arrivals = [Arrival(i * 0.1, demo.TASK, c.latency_ms, c.min_accuracy, c.label) for i, c in enumerate(classes * 5)]
    stats = RunStats()
    stats.label_variants.update({("fast", "logreg:ort-fp32:cpu-1t:b1"): 4, ("accurate", "cnn-tta:ort-fp32:cpu-1t:b1"): 3,
                                 ("accurate", "logreg:ort-fp32:cpu-1t:b1"): 1})
    stats.by_label["fast"]["OK"], stats.by_label["accurate"]["OK"] = 4, 4
    stats.label_slo_met.update({"fast": 4, "accurate": 2})
    summary = demo.class_summary(stats, classes, arrivals, variants)
    assert summary["fast"] | {"cost_usd": 0} == {"min_accuracy": None, "latency_ms": 25.0, "queries": 5, "ok": 4,
                                                 "slo_attainment": 0.8, "mean_accuracy": 0.31, "cost_usd": 0,
                                                 "variants": {"logreg:ort-fp32:cpu-1t:b1": 4}}
    accurate = summary["accurate"]
    assert accurate["mean_accuracy"] == pytest.approx((3 * 0.97 + 0.31) / 4) and accurate["slo_attainment"] == 0.4
    assert list(accurate["variants"]) == ["cnn-tta:ort-fp32:cpu-1t:b1", "logreg:ort-fp32:cpu-1t:b1"]
    assert accurate["cost_usd"] > summary["fast"]["cost_usd"] > 0


def test_static_cost_is_simulated_with_the_static_policy():
    settings = Settings()  # only its hardware catalogue is read: no stack needed
    classes = [RequirementClass("fast", 0.5, 25.0, None, ""), RequirementClass("accurate", 0.5, 250.0, 0.95, "")]
    variants = [_variant("logreg", 0.31, 0.05), _variant("cnn-tta", 0.97, 5.0), _variant("cnn-tta", 0.97, 2.5, 8)]
    few = arrivals_from_trace(BUNDLED_TRACE, 60.0, 5.0, classes)
    many = arrivals_from_trace(BUNDLED_TRACE, 60.0, 400.0, classes)
    cheap, dear = (demo.static_cost(settings, variants, a, classes, max_workers=8) for a in (few, many))
    assert 0 < cheap < dear  # provisioned for the peak: more load, more replicas, more cost
    adaptive = demo.static_cost(Settings(), variants, many, classes, max_workers=8, policy="infaas")
    assert 0 < adaptive != dear  # the same simulation under the infaas policy: a different bill


def test_each_class_demands_what_only_its_own_model_serves():
    variants = [_variant("logreg", 0.311, 0.01), _variant("cnn", 0.9575, 0.1), _variant("cnn", 0.9583, 0.2, 8),
                _variant("large", 0.9791, 3.0), _variant("large", 0.9783, 2.5, 8)]
    fast, balanced, accurate = demo.requirement_classes(variants)
    assert fast.min_accuracy is None and fast.rows == 1
    assert balanced.min_accuracy == 0.9575  # every cnn variant qualifies, logreg does not
    assert accurate.min_accuracy == 0.9783 > 0.9583  # only the large model's variants
    assert accurate.rows == demo.ACCURATE_ROWS > 1


def test_static_cost_counts_every_row_of_a_query():
    from dataclasses import replace
    classes = [RequirementClass("accurate", 1.0, 250.0, 0.95, "")]
    variants = [_variant("cnn-tta", 0.97, 5.0), _variant("cnn-tta", 0.97, 2.5, 8)]
    single = arrivals_from_trace(BUNDLED_TRACE, 60.0, 400.0, classes)  # 8 rows each: more than one replica
    batched = [replace(a, rows=8) for a in single]
    one, eight = (demo.static_cost(Settings(), variants, a, classes, max_workers=8) for a in (single, batched))
    assert 0 < one < eight
