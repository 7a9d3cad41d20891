"""The live replay sends what the simulator sends: model-less queries with their requirements for
infaas, and for a baseline every query to its fixed variant with the query's SLO."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from infaas.replay import arrivals_of

WORKLOAD = SimpleNamespace(arrival_ms=np.array([0, 500]), deadline_ms=np.array([50.0, 80.0]),
                           accuracy_demand=np.array([0.9, 0.0]))


def test_infaas_queries_are_model_less_with_their_requirements():
    first, second = arrivals_of(WORKLOAD, "digits")
    assert (first.task, first.variant, first.latency_ms, first.min_accuracy) == ("digits", None, 50.0, 0.9)
    assert second.at_s == 0.5 and second.min_accuracy is None


def test_baseline_queries_name_the_fixed_variant():
    arrivals = arrivals_of(WORKLOAD, "digits", variant="mlp:ort-fp32:cpu-1t:b8")
    assert [a.variant for a in arrivals] == ["mlp:ort-fp32:cpu-1t:b8"] * 2
    assert [a.latency_ms for a in arrivals] == [50.0, 80.0]
    assert all(a.min_accuracy is None for a in arrivals)
