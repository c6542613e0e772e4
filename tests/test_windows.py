"""Verdicts: the numbers behind each decision, and the rule that too little data never passes."""

from __future__ import annotations

import math

import pytest

from activities.metrics import LATENCY_BUCKETS, EndpointSnapshot, Histogram, SideSnapshot, parse_metrics
from activities.training import CompareTrainingInput, TrainResult, judge_training
from activities.windows import JudgeWindowInput, WindowThresholds, judge_window, quantile

LIMITS = WindowThresholds(latency_increase_pct=15, error_rate_increase_pp=0.1, min_samples=50)


def histogram(latencies_s: list[float]) -> Histogram:
    bounds = list(LATENCY_BUCKETS)
    return Histogram(bounds=bounds, cumulative=[sum(x <= b for x in latencies_s) for b in bounds],
                     count=len(latencies_s), sum=sum(latencies_s))  # fmt: skip


def side(latencies_s: list[float], errors: int = 0, ok: bool = True) -> SideSnapshot:
    if not ok:
        return SideSnapshot(url="http://x", ok=False, error="ConnectionRefusedError")
    return SideSnapshot(
        url="http://x", ok=True, requests=len(latencies_s), errors=errors, latency=histogram(latencies_s)
    )


def judge(source: SideSnapshot, target: SideSnapshot, baselines=None):
    current = [EndpointSnapshot(endpoint="chat", source=source, target=target)]
    return judge_window(JudgeWindowInput(stage="25pct", previous=[], current=current, thresholds=LIMITS,
                                         baselines=baselines or {}))  # fmt: skip


def test_quantile_interpolates_like_prometheus():
    h = histogram([0.0045] * 50 + [0.0095] * 50)
    assert 0.004 <= quantile(h, 0.5) <= 0.005
    assert 0.008 <= quantile(h, 0.99) <= 0.010
    assert math.isnan(quantile(histogram([]), 0.5))


def test_equal_sides_pass_with_the_numbers_kept():
    result = judge(side([0.008] * 200), side([0.008] * 200)).verdict
    assert result.outcome == "pass"
    latency = next(c for c in result.checks if c.metric == "chat.latency")
    assert latency.source == latency.target and latency.threshold == 15 and latency.observed == 0
    assert latency.p_value > 0.4 and latency.effect_size == 0.5


def test_forty_percent_slower_target_fails_with_the_deciding_check_named():
    result = judge(side([0.0075] * 200), side([0.0105] * 200)).verdict
    assert result.outcome == "fail"
    assert "chat.latency:" in result.summary and "allowed +15" in result.summary


def test_error_spike_fails_on_error_rate():
    result = judge(side([0.008] * 1000), side([0.008] * 1000, errors=20)).verdict
    assert result.outcome == "fail"
    check = next(c for c in result.checks if c.metric == "chat.error_rate")
    assert check.outcome == "fail" and check.observed == 2.0


def test_too_few_samples_is_inconclusive_never_pass():
    result = judge(side([0.008] * 200), side([0.008] * 49)).verdict
    assert result.outcome == "inconclusive" and "50 a side needed" in result.summary


def test_unreadable_metrics_are_an_error():
    assert judge(side([0.008] * 200), side([], ok=False)).verdict.outcome == "error"


def test_idle_source_at_100_percent_is_judged_against_its_last_full_window():
    first = judge(side([0.008] * 200), side([0.008] * 200))
    idle = judge(side([]), side([0.012] * 200), baselines=first.baselines)
    assert idle.verdict.outcome == "fail" and "source idle" in idle.verdict.summary


def test_prometheus_text_is_parsed_into_a_snapshot():
    text = (
        'skyshift_requests_total{env="a"} 10.0\nskyshift_request_errors_total{env="a"} 2.0\n'
        'skyshift_request_latency_seconds_bucket{env="a",le="0.005"} 4.0\n'
        'skyshift_request_latency_seconds_bucket{env="a",le="+Inf"} 10.0\n'
        'skyshift_request_latency_seconds_count{env="a"} 10.0\nskyshift_request_latency_seconds_sum{env="a"} 0.2\n'
    )
    snapshot = parse_metrics("http://a", text)
    assert (snapshot.requests, snapshot.errors) == (10, 2)
    assert snapshot.latency.bounds == [0.005] and snapshot.latency.count == 10


def train(losses, digest="d", data="x", key="k") -> TrainResult:
    return TrainResult(environment="e", object_key=key, data_blake3=data, losses=losses, grad_norms=[1.0] * len(losses),
                       param_digest=digest, param_norm=3.0, seconds=0.1)  # fmt: skip


def test_identical_training_passes_and_drift_fails():
    same = judge_training(
        CompareTrainingInput(source=train([2.0, 1.5]), target=train([2.0, 1.5]), loss_divergence_pct=1)
    )
    assert same.outcome == "pass"
    drift = judge_training(
        CompareTrainingInput(source=train([2.0, 1.5]), target=train([2.0, 1.6]), loss_divergence_pct=1)
    )
    assert drift.outcome == "fail" and "loss_curve" in drift.summary
    other_data = judge_training(
        CompareTrainingInput(source=train([2.0]), target=train([2.0], data="y"), loss_divergence_pct=1)
    )
    assert other_data.outcome == "fail" and "training bytes differ" in other_data.summary


def test_one_slow_request_in_a_small_window_does_not_fail():
    assert judge(side([0.008] * 60), side([0.008] * 59 + [0.150])).verdict.outcome == "pass"


def test_variance_only_regression_same_median_heavy_tail_fails():
    source = [0.008] * 1000
    target = [0.008] * 970 + [0.030] * 30  # same median and p95, a 3% slow tail
    result = judge(side(source), side(target)).verdict
    assert result.outcome == "fail"
    assert [c.metric for c in result.checks if c.outcome == "fail"] == ["chat.latency_tail"]


def test_checks_keep_p_values_effect_sizes_and_intervals():
    result = judge(side([0.0075] * 300), side([0.0105] * 300, errors=9)).verdict
    latency = next(c for c in result.checks if c.metric == "chat.latency")
    errors = next(c for c in result.checks if c.metric == "chat.error_rate")
    assert latency.p_value < 0.02 and latency.effect_size > 0.9
    low, high = errors.confidence_interval
    assert low < errors.observed < high


def test_a_dry_run_metric_reports_but_never_decides():
    limits = LIMITS.model_copy(update={"dry_run": ["latency"]})
    current = [EndpointSnapshot(endpoint="chat", source=side([0.0075] * 300), target=side([0.0105] * 300))]
    result = judge_window(JudgeWindowInput(stage="s", previous=[], current=current, thresholds=limits)).verdict
    assert result.outcome == "pass"
    assert "dry-run: chat.latency would be fail" in result.summary


def test_the_error_rate_interval_is_as_wide_as_the_plans_confidence():
    current = [EndpointSnapshot(endpoint="chat", source=side([0.008] * 1000, errors=10),
                                target=side([0.008] * 1000, errors=30))]  # fmt: skip

    def width(confidence: float) -> float:
        limits = LIMITS.model_copy(update={"confidence": confidence})
        result = judge_window(JudgeWindowInput(stage="s", previous=[], current=current, thresholds=limits)).verdict
        low, high = next(c for c in result.checks if c.metric == "chat.error_rate").confidence_interval
        return high - low

    # Two-sided normal quantiles: 2.326 at 98% (the old fixed z), 1.645 at 90%.
    assert width(0.98) / width(0.90) == pytest.approx(2.3263 / 1.6449, rel=1e-3)
