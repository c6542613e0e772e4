"""Throughput judged from repeated trials: a difference counts only beyond the tolerance, the source's own
spread and the trials' overlap; a floor or trials too noisy to decide are inconclusive, never a fail."""

from __future__ import annotations

from activities.analysis import judge
from activities.jobs.compare import default_rules, measure_throughput
from activities.jobs.run import JobResult
from activities.jobs.series import JobTiming
from activities.trials import slowdown_measurement
from skyshift.spec.jobs import JobTolerances

RULES = default_rules(JobTolerances())


def run(arm: str, rate: float) -> JobResult:
    return JobResult(job="toy", environment=arm, arm="target" if arm == "target" else "source", status="succeeded",
                     code_root="r", timing=JobTiming(steady_per_s=rate))  # fmt: skip


def throughput(source: list[float], target: list[float]):
    arms = {"source": run("source", source[0]), "source_repeat": run("source", source[1]),
            "target": run("target", target[0])}  # fmt: skip
    measured, row = measure_throughput(arms, [run("source", r) for r in source[2:]],
                                       [run("target", r) for r in target[1:]])  # fmt: skip
    return judge("parallel_run:toy", [measured], RULES).checks[0], row


def test_the_issues_single_slow_target_run_on_a_busy_host_is_inconclusive_not_a_fail():
    """make demo on a busy 2-core host: source 2.233e4, source again 2.038e4, target 1.664e4 samples/s."""
    check, row = throughput([2.233e4, 2.038e4], [1.664e4])
    assert check.outcome == "inconclusive", check.detail
    assert "fewer than 3 trials a side" in check.detail and row.target_trials == [1.664e4]


def test_interleaved_trials_that_overlap_are_never_a_fail():
    check, _ = throughput([2.2e4, 1.7e4, 2.0e4, 1.9e4], [1.6e4, 2.1e4, 1.75e4])
    assert check.outcome == "inconclusive", check.detail


def test_a_target_slower_in_every_trial_beyond_the_spread_fails_with_both_spreads_shown():
    check, row = throughput([2.0e4, 2.05e4, 1.98e4], [1.2e4, 1.25e4, 1.22e4])
    assert check.outcome == "fail", check.detail
    assert "[1.2e+04-1.25e+04, 3 trials]" in check.detail and "[1.98e+04-2.05e+04, 3 trials]" in check.detail
    assert row.spread is not None and row.spread < 0.05


def test_a_floor_too_noisy_to_decide_is_inconclusive():
    """The source's own trials span 45%: a target 25% slower in every trial is still within that noise."""
    check, _ = throughput([2.0e4, 1.3e4, 2.2e4], [1.25e4, 1.28e4, 1.22e4])
    assert check.outcome == "inconclusive" and "own spread" in check.detail


def test_within_the_tolerance_passes_whatever_the_noise():
    check, _ = throughput([2.0e4, 1.5e4, 2.2e4], [1.98e4, 1.4e4, 2.3e4])
    assert check.outcome == "pass", check.detail


def test_lower_is_better_figures_are_judged_the_same_way():
    m = slowdown_measurement("step_time", [1.0, 1.02, 0.99], [1.5, 1.52, 1.49], "s", higher_is_better=False)
    assert m.observed is not None and m.observed > 0.45 and m.confidence_interval[0] > 0.4
