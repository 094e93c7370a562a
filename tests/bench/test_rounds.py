"""radar_train.bench.rounds: interleaved rounds, warm-up, medians, skipped jobs, planned repeats."""
import pytest
import torch

from radar_train.bench.rounds import Job, run_rounds

CPU = torch.device("cpu")


def _jobs(order):
    def job(name, values):
        it = iter(values)

        def fn():
            order.append(name)
            return {"loop": next(it)}
        return Job(name, fn)
    return [job("a", [9.0, 1.0, 3.0, 2.0]), job("b", [9.0, 5.0, 4.0, 6.0])]


def test_jobs_alternate_and_the_warm_up_is_not_kept():
    order = []
    a, b = _jobs(order)
    assert run_rounds([a, b], CPU, warmup=1, repeats=3) == 3
    assert order == ["a", "b"] * 4
    assert a.times["loop"] == [1.0, 3.0, 2.0] and a.median("loop") == 2.0 and b.median("loop") == 5.0
    assert a.peak_bytes is None  # no CUDA, no memory figure


def test_a_job_that_may_fail_is_skipped_with_its_reason_and_others_go_on():
    def broken():
        raise NotImplementedError("engine cannot fork")

    order = []
    a, b = _jobs(order)
    bad = Job("bad", broken, may_fail=True)
    run_rounds([a, bad, b], CPU, warmup=0, repeats=2)
    assert bad.skipped == "NotImplementedError: engine cannot fork" and bad.median("loop") is None
    assert order == ["a", "b", "a", "b"]
    with pytest.raises(NotImplementedError):
        run_rounds([Job("strict", broken)], CPU, warmup=0, repeats=1)


def test_planned_repeats_replace_the_default_after_the_first_round_and_the_first_timed_one():
    order, seen = [], []
    a, b = _jobs(order)

    def plan(seconds, rounds_done):
        seen.append((seconds >= 0, rounds_done))
        return 4 if rounds_done == 1 else 2

    assert run_rounds([a, b], CPU, warmup=1, repeats=5, plan_repeats=plan) == 2
    assert seen == [(True, 1), (True, 2)] and len(order) == 2 * 3
    seen.clear()  # without warm-up the first round is the first timed one: planned once
    a, b = _jobs(order)
    assert run_rounds([a, b], CPU, warmup=0, repeats=5, plan_repeats=plan) == 4
    assert seen == [(True, 1)]
