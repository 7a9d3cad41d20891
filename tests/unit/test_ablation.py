"""`infaas bench ablate`: settings parsed as typed values, the goal's verdict per row, and the CLI end to end."""

from __future__ import annotations

import pytest

from infaas.cli import main
from infaas.policies.snapshot import PolicyConfig
from infaas.sim.ablation import (
    NOT_SIM_SETTINGS,
    Setup,
    ablation_records,
    check_ranges,
    goal_row,
    parse_overrides,
    run_ablation,
    save,
)
from infaas.sim.engine import SimOptions
from infaas.sim.report import ablation_section


def test_overrides_take_the_type_of_the_field():
    parsed = parse_overrides(["target_util_min=0.7", "trend_windows=3", "slo_first=false",
                              "warm_pool_kinds=cpu,gpu-t4"], PolicyConfig())
    assert parsed == {"target_util_min": 0.7, "trend_windows": 3, "slo_first": False,
                      "warm_pool_kinds": ("cpu", "gpu-t4")}
    assert parse_overrides(["worker_start_s=1, 2"], SimOptions(), NOT_SIM_SETTINGS) == {"worker_start_s": (1.0, 2.0)}


@pytest.mark.parametrize("pair, message", [
    ("nope=1", "NAME one of"), ("target_util_min", "NAME one of"), ("target_util_min=abc", "expected a number"),
    ("trend_windows=2.5", "expected an integer"), ("slo_first=maybe", "expected true or false"), ("target_util_min=nan", "finite"),
])
def test_a_bad_policy_setting_is_refused_with_what_is_accepted(pair, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([pair], PolicyConfig())


def test_the_runs_identity_is_not_a_setting_of_the_simulated_world():
    with pytest.raises(ValueError, match="billing_minimum_s"):  # the message lists what is accepted
        parse_overrides(["policy=static"], SimOptions(), NOT_SIM_SETTINGS)


def test_a_row_is_met_only_with_violations_within_statics_and_the_cost_goal():
    static = {"slo_violation_rate": 0.001, "cost_usd": 10.0}
    met = goal_row("bursty", 0, {"slo_violation_rate": 0.001, "cost_usd": 6.0}, static)
    assert met["met"] and met["goal"] == 1.5 and met["cost_vs_static"] == pytest.approx(10 / 6)
    cheap_but_late = goal_row("bursty", 0, {"slo_violation_rate": 0.002, "cost_usd": 1.0}, static)
    assert not cheap_but_late["met"] and not cheap_but_late["violations_within_static"]
    in_time_but_dear = goal_row("fluctuating-high", 1, {"slo_violation_rate": 0.0, "cost_usd": 6.0}, static)
    assert not in_time_but_dear["met"] and in_time_but_dear["goal"] == 2.0


def test_ablate_cli_runs_infaas_and_static_with_the_change(tmp_path, capsys, proteus_data_set):
    scales = ["--time-scale", "0.5", "--rate-scale", "0.1", "--warmup-s", "5"]
    code = main(["bench", "ablate", "--scenarios", "bursty", *scales, "--profiles", str(proteus_data_set.profiles),
                 "--traces-dir", str(proteus_data_set.root / "traces"), "--seeds", "0", "--jobs", "1",
                 "--set", "target_util_min=0.6", "--sim", "billing_minimum_s=0", "--results", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "infaas with --set target_util_min=0.6 --sim billing_minimum_s=0" in printed and "met: " in printed
    (saved,) = ablation_records(tmp_path, 0.5, 0.1, 5.0)  # found at the scales it ran at
    assert saved["changes"] == ["--set target_util_min=0.6", "--sim billing_minimum_s=0"]
    (row,) = saved["rows"]
    assert row["scenario"] == "bursty" and row["cost_usd"] > 0 and row["static_cost_usd"] > 0
    assert row["cost_vs_static"] == pytest.approx(row["static_cost_usd"] / row["cost_usd"])
    assert ablation_records(tmp_path, 12.0, 3.0, 60.0) == []  # another workload: not the report's to show


def test_the_report_shows_each_saved_ablation_with_its_verdicts():
    rows = [goal_row("flat", 0, {"slo_violation_rate": 0.01, "cost_usd": 1.0}, {"slo_violation_rate": 0.0, "cost_usd": 2.0}),
            goal_row("bursty", 1, {"slo_violation_rate": 0.0, "cost_usd": 1.0}, {"slo_violation_rate": 0.0, "cost_usd": 2.0})]
    text = "\n".join(ablation_section([{"changes": ["--sim worker_start_s=1,1"], "rows": rows}]))
    assert "With `--sim worker_start_s=1,1`:" in text and "|\n\nMet: 1 of 2." in text  # not a row of the table
    assert "| flat | 0 | 1.000% / 0.000% | 1.000 / 2.000 | 2.00x (1.15x) | no (violations) |" in text
    assert "| bursty | 1 | 0.000% / 0.000% | 1.000 / 2.000 | 2.00x (1.5x) | yes |" in text


def test_ablate_cli_refuses_a_bad_setting_before_simulating(capsys):
    assert main(["bench", "ablate", "--set", "target_util_min=high"]) != 0
    assert "target_util_min='high': expected a number" in capsys.readouterr().err


def test_saved_ablations_are_listed_fewest_changes_first_and_long_names_stay_apart(tmp_path):
    setup = Setup("p", "t", 12.0, 3.0, 60.0, "", PolicyConfig(), {})
    long = [f"--set target_util_min=0.{i}" for i in range(5, 9)] + ["--sim billing_minimum_s=0"] * 20
    first = save(tmp_path, long, setup, [0], [])
    second = save(tmp_path, long[:-1], setup, [0], [])  # the same first 100 characters
    save(tmp_path, ["--sim worker_start_s=1,1"], setup, [0], [])
    assert first != second and len(list(tmp_path.glob("ablate-*.json"))) == 3
    assert [len(r["changes"]) for r in ablation_records(tmp_path, 12.0, 3.0, 60.0)] == [1, len(long) - 1, len(long)]


@pytest.mark.parametrize("values, message", [
    ({"target_util_min": 0.0}, "above 0 and at most 1"), ({"target_util_max": 1.5}, "above 0 and at most 1"),
    ({"target_util_min": 0.9}, r"target_util_min \(0.9\) is above target_util_max \(0.85\)"),
    ({"worker_backoff_s": -1.0}, "must not be negative"),
])
def test_a_policy_setting_out_of_range_is_refused(values, message):
    with pytest.raises(ValueError, match=message):
        check_ranges(values, PolicyConfig())


@pytest.mark.parametrize("values, message", [
    ({"worker_start_s": (1.0,)}, "expected 2 comma-separated values"), ({"worker_start_s": (-5.0, 5.0)}, "negative"),
    ({"tick_ms": 0}, "above 0"),
])
def test_a_world_setting_out_of_range_is_refused(values, message):
    with pytest.raises(ValueError, match=message):
        check_ranges(values, SimOptions())


def test_a_simulation_that_fails_says_which_run_and_why(tmp_path):
    setup = Setup(str(tmp_path / "missing.csv"), str(tmp_path), 1.0, 1.0, 0.0, "", PolicyConfig(), {})
    with pytest.raises(ValueError, match="bursty, seed 0, infaas: the simulation failed with these settings"):
        run_ablation(setup, ["bursty"], [0], jobs=1, say=lambda _: None)


@pytest.mark.parametrize("content", ["{not json", '{"changes": [], "rows": []}', '["a list"]'])
def test_a_file_that_is_not_a_saved_ablation_is_named_not_a_traceback(tmp_path, content):
    (tmp_path / "ablate-x.json").write_text(content)
    with pytest.raises(ValueError, match="ablate-x.json: not what `infaas bench ablate` writes"):
        ablation_records(tmp_path, 12.0, 3.0, 60.0)
