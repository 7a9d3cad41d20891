"""The replicas' batching rule: wait for more queries only while the deadline allows and more are
expected in time; pack queries into runs of the batch size."""

from __future__ import annotations

import pytest

from infaas.consumers.batching import ArrivalRate, BatchPolicy, wait_budget_ms
from infaas.policies.batching import next_run, plan_runs, run_latencies
from tests.unit.test_policies_scaling import GPU_B8

B8 = BatchPolicy(batch_size=8, max_delay_ms=5.0, margin_ms=1.0)


def test_without_a_rate_the_wait_is_bounded_by_the_delay_and_the_deadline():
    assert wait_budget_ms(B8, now_ms=0, earliest_deadline_ms=None, run_latency_ms=2) == 5.0
    assert wait_budget_ms(B8, now_ms=0, earliest_deadline_ms=6, run_latency_ms=2) == pytest.approx(3.0)
    assert wait_budget_ms(B8, now_ms=0, earliest_deadline_ms=2, run_latency_ms=2) == 0.0


def test_a_lone_query_at_low_load_runs_at_once():
    # 10 queries per second: the next one is due in 100 ms, far beyond the 5 ms the query may wait.
    assert wait_budget_ms(B8, 0, None, 2, in_hand=1, arrivals_per_ms=0.01) == 0.0
    assert wait_budget_ms(B8, 0, None, 2, in_hand=1, arrivals_per_ms=0.0) == 0.0


def test_under_load_the_wait_is_what_filling_the_batch_takes():
    # 2 queries per ms: 7 missing fill in 3.5 ms, within the 5 ms allowed.
    assert wait_budget_ms(B8, 0, None, 2, in_hand=1, arrivals_per_ms=2.0) == pytest.approx(3.5)
    # 0.5 per ms: the next is due in 2 ms, the batch would take 14 ms: wait the 5 ms allowed.
    assert wait_budget_ms(B8, 0, None, 2, in_hand=1, arrivals_per_ms=0.5) == 5.0
    # a full batch never waits
    assert wait_budget_ms(B8, 0, None, 2, in_hand=8, arrivals_per_ms=2.0) == 0.0


def test_the_deadline_still_bounds_the_wait_under_load():
    assert wait_budget_ms(B8, 0, earliest_deadline_ms=4, run_latency_ms=2, in_hand=1,
                          arrivals_per_ms=0.5) == 0.0  # 1 ms of slack, next query due in 2 ms
    assert wait_budget_ms(B8, 0, earliest_deadline_ms=5, run_latency_ms=2, in_hand=1,
                          arrivals_per_ms=2.0) == pytest.approx(2.0)


def test_arrival_rate_over_its_window():
    rate = ArrivalRate(window_ms=1000)
    assert rate.per_ms(0) == 0.0
    for t in range(0, 1000, 10):  # 100 arrivals in one second
        rate.note(t)
    assert rate.per_ms(999) == pytest.approx(0.1)
    assert rate.per_ms(2500) == 0.0  # all older than the window


def test_arrival_rate_when_the_window_holds_more_than_it_keeps():
    rate = ArrivalRate(window_ms=1000, most=100)
    for t in range(0, 200):  # 5 per ms for 200 ms... kept: the last 100 over their own span
        for _ in range(5):
            rate.note(float(t))
    assert rate.per_ms(199) == pytest.approx(100 / 20, rel=0.1)


def test_runs_never_split_a_query():
    assert plan_runs([1, 1, 1], [None] * 3, 2, 0.0, 0.0) == ([[0, 1], [2]], [])
    assert plan_runs([3, 1], [None] * 2, 2, 0.0, 0.0) == ([[0], [1]], [])
    assert plan_runs([], [], 8, 0.0, 0.0) == ([], [])



def test_a_query_that_cannot_start_before_its_deadline_is_told_at_once():
    # Batch 1, runs of 40 ms from now (t=1000): the third query's turn comes at 1080, after its deadline.
    runs, hopeless = plan_runs([1, 1, 1, 1], [1300, 1300, 1050, 1300], 1, 1000.0, 40.0)
    assert hopeless == [(2, 1080.0)]
    assert runs == [[0], [1], [3]]  # the one behind it moves up: its turn is at 1080, in time
    # Queries past their deadline now are hopeless whatever the pace; no deadline, never.
    assert plan_runs([1, 1], [999, None], 1, 1000.0, 1e9) == ([[1]], [(0, 1000.0)])
    # Batches of 4 rows: the runs pack as above, and only a run's start counts.
    runs, hopeless = plan_runs([2, 2, 3, 1], [1000, 1000, 1039, 1041], 4, 1000.0, 40.0)
    assert (runs, hopeless) == ([[0, 1], [3]], [(2, 1040.0)])


def test_the_next_run_skips_the_late_and_stops_at_the_batch_size():
    # From t=100: query 1 is past its deadline, the others fill a batch of 2; query 4 waits for the next run.
    deadlines = [50.0, 150.0, 99.0, 200.0, 300.0]
    assert next_run(deadlines, 2, 100.0, first=1) == ([1, 3], [2], 4)
    assert next_run(deadlines, 2, 100.0, first=1, end=3) == ([1], [2], 3)  # only what has arrived
    assert next_run(deadlines, 2, 100.0) == ([1, 3], [0, 2], 4)
    assert next_run(deadlines, 2, 100.0, rows=[1, 3, 1, 1, 1], first=1) == ([1], [], 2)  # 3 rows run alone
    assert next_run([None, 100.0], 4, 100.0) == ([0, 1], [], 2)  # at its deadline it still starts


def test_a_run_stops_growing_where_it_would_end_after_its_first_deadline():
    latency = [0.0, 10.0, 18.0, 40.0, 45.0]  # by rows
    deadlines = [120.0, 500.0, 500.0, 500.0]  # from t=100: two rows end at 118, three at 140, past 120
    assert next_run(deadlines, 4, 100.0, latency=latency) == ([0, 1], [], 2)
    assert next_run(deadlines, 4, 100.0) == ([0, 1, 2, 3], [], 4)  # no cap without run times
    assert next_run([105.0, 500.0], 4, 100.0, latency=latency) == ([0], [], 1)  # alone, a query always runs
    # Run after run, the same cap: the queries left over form the next run.
    assert plan_runs([1] * 4, deadlines, 4, 100.0, 20.0, latency) == ([[0, 1], [2, 3]], [])


def test_the_cap_uses_the_profiles_run_times():
    assert run_latencies(GPU_B8) == [GPU_B8.latency_at(n) for n in range(9)]
