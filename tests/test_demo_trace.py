"""The demo's trace: on a clone with no Proteus data beside it, the bundled synthetic trace."""

import numpy as np

from infaas import demo
from infaas.demo import BUNDLED_TRACE, RequirementClass, arrivals_from_trace, default_trace


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
