"""The run summary, the report's ratios and markdown, the live-results format, and the CLI."""

from __future__ import annotations

import json

import pytest

from infaas.cli import main
from infaas.replay import measured_service_times
from infaas.sim.report import (
    REQUIRED_KEYS,
    live_agrees,
    load_live,
    ratios,
    render_markdown,
    single_trace_section,
)
from tests.unit.test_policies_scaling import CPU_B1, variant

B8 = variant("b8:ort:cpu-2t:b8", batch=8, slope=5.0, intercept=20.0)


def summary(policy: str, cost: float, violations: float, goodput: float, **extra) -> dict:
    return {"scenario": "bursty", "policy": policy, "queries": 1000, "slo_violation_rate": violations,
            "cost_usd": cost, "throughput_qps": goodput * 1.1, "goodput_qps": goodput, "mean_accuracy": 0.8,
            "accuracy_shortfall": 0.0, "accuracy_shortfall_rate": 0.0, "workers_mean": 3.0, **extra}


RESULTS = {"bursty": {"infaas": summary("infaas", 1.0, 0.02, 13.0), "static": summary("static", 8.0, 0.01, 10.0),
                      "replica-only": summary("replica-only", 2.0, 0.04, 10.0)}}
META = {"command": "infaas bench report", "date": "today", "setup": ["a line"], "why": ["a reason"]}


def test_ratios_are_stated_as_the_paper_states_them():
    r = ratios(RESULTS["bursty"])
    assert r["cost_vs_static"] == 8.0 and r["cost_vs_replica_only"] == 2.0
    assert r["violations_vs_replica_only"] == 2.0 and r["violations_vs_static"] == 0.5
    assert r["goodput_vs_replica_only"] == pytest.approx(1.3)


def test_markdown_compares_with_the_paper_and_says_where_infaas_loses(tmp_path):
    (tmp_path / "live-bursty-infaas.json").write_text(json.dumps(summary("infaas", 1.2, 0.03, 12.0)))
    text = render_markdown(RESULTS, META, load_live(tmp_path), {"bursty": "img/bursty.png"})
    assert "| bursty | infaas | 1,000 | 2.00% | 1.000 |" in text
    assert "21.6x" in text and "8.5x" in text and "1.6x" in text and "1.3x" in text
    assert "infaas violates more SLOs" in text  # static has fewer violations: said plainly
    assert "![bursty](img/bursty.png)" in text
    assert "| bursty | infaas | 1,000 / 1,000 | 3.00% / 2.00% / – |" in text  # live next to the simulator
    assert "| 0.8000 / 0.8000 | no: cost; – |" in text  # 1.2 live vs 1.0 simulated is outside 10%


def test_the_live_row_shows_the_simulator_at_the_measured_speeds_too(tmp_path):
    record = {**summary("static", 1.0, 0.10, 12.0), "simulated": summary("static", 1.0, 0.01, 12.0),
              "simulated_at_measured_speeds": summary("static", 1.02, 0.095, 12.0)}
    (tmp_path / "live-bursty-static.json").write_text(json.dumps(record))
    text = render_markdown(RESULTS, META, load_live(tmp_path), {})
    assert "| bursty | static | 1,000 / 1,000 | 10.00% / 1.00% / 9.50% | 1.00000 / 1.00000 / 1.02000 |" in text
    assert "| no: violations; yes |" in text


def test_measured_service_times_weigh_the_intervals_by_the_queries_served():
    # B8: latency(n) = 20 + 5n. Model runs of 60 ms at batch 4 (1.5x its 40 ms), held 65 ms, 30 queries;
    # 80 ms at batch 4 (2x), held 90 ms, 10 queries; an interval that served none counts for nothing.
    runs = {B8.variant_id: [(60.0, 65.0, 4.0, 30), (80.0, 90.0, 4.0, 10), (99.0, 99.0, 4.0, 0)],
            CPU_B1.variant_id: [(150.0, 150.0, 1.0, 0)]}
    times = measured_service_times(runs, {v.variant_id: v for v in (CPU_B1, B8)})
    assert times.keys() == {B8.variant_id}
    factor, overhead = times[B8.variant_id]
    assert factor == pytest.approx((1.5 * 30 + 2.0 * 10) / 40) and overhead == pytest.approx((5 * 30 + 10 * 10) / 40)


def test_live_results_need_the_summary_keys(tmp_path):
    (tmp_path / "live-x.json").write_text(json.dumps({"policy": "infaas"}))
    with pytest.raises(ValueError, match="missing key"):
        load_live(tmp_path)
    assert set(REQUIRED_KEYS) <= set(summary("infaas", 1, 0, 1))


def test_simulate_cli_prints_one_json_summary(capsys, proteus_data_set):
    trace = proteus_data_set.trace("zipf_exponential_bursty_300", "resnet")
    code = main(["simulate", "--trace", str(trace), "--profiles", str(proteus_data_set.profiles),
                 "--policy", "replica-only", "--rate-scale", "0.2", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(REQUIRED_KEYS) <= set(result) and "timeline" not in result
    expected = 0.2 * len(trace.read_text().splitlines())  # each query kept with probability 0.2
    assert result["policy"] == "replica-only" and 0.7 * expected < result["queries"] < 1.3 * expected


def test_bench_report_writes_markdown_plots_and_summaries(tmp_path, proteus_data_set):
    ablated = {"changes": ["--set target_util_min=0.6"], "rows": [], "time_scale": 0.5, "rate_scale": 0.1,
               "warmup_s": 5.0, "seeds": [0]}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "ablate-x.json").write_text(json.dumps(ablated))  # `bench ablate` at these scales
    code = main(["bench", "report", "--scenarios", "bursty", "--time-scale", "0.5", "--rate-scale", "0.1",
                 "--profiles", str(proteus_data_set.profiles), "--traces-dir", str(proteus_data_set.root / "traces"),
                 "--warmup-s", "5", "--speed-runs", "0", "--results", str(tmp_path / "results"),
                 "--out", str(tmp_path / "docs/evaluation.md"), "--img", str(tmp_path / "docs/img")])
    assert code == 0
    text = (tmp_path / "docs/evaluation.md").read_text()
    assert "| bursty | infaas |" in text and "![bursty](img/bursty.png)" in text
    assert (tmp_path / "docs/img/bursty.png").stat().st_size < 200_000
    assert len(list((tmp_path / "results").glob("sim-bursty-*.json"))) == 3
    alone = json.loads((tmp_path / "results" / "single-traces-seed-0.json").read_text())
    assert alone and {row["traces"] for row in alone} == {"zipf_exponential_bursty_300"}
    assert "## Each trace alone" in text and f"| zipf_exponential_bursty_300 | {alone[0]['trace']} |" in text
    assert "With `--set target_util_min=0.6`:" in text  # the saved ablation, beside the goal table


def test_each_trace_alone_is_counted_where_infaas_loses_too():
    def row(trace, infaas, static):
        return {"traces": "d", "trace": trace, "infaas": {"queries": 10, "slo_violation_rate": infaas[0],
                                                         "cost_usd": infaas[1]},
                "static": {"queries": 10, "slo_violation_rate": static[0], "cost_usd": static[1]}}
    text = "\n".join(single_trace_section([row("a", (0.01, 1.0), (0.02, 3.0)), row("b", (0.01, 2.0), (0.0, 1.0))]))
    assert "no more SLOs than static on **1 of 2**" in text and "costs no more on **1 of 2**" in text
    assert "$3.00 against static's $4.00 (1.33x)" in text and "none at all on 1 of them" in text
    assert "| d | b | 10 | 1.000% / 0.000% | 2.000 / 1.000 | 0.50x |" in text


def test_live_vs_simulator_verdict_names_what_the_simulator_missed():
    live = summary("infaas", 1.0, 0.030, 12.0)
    assert live_agrees(live, summary("infaas", 1.05, 0.025, 12.0)) == "yes"
    assert live_agrees(live, summary("infaas", 1.05, 0.0, 12.0)) == "no: violations"
    assert live_agrees(live, summary("infaas", 0.7, 0.0, 12.0)) == "no: violations, cost"
