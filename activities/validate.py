"""Comparisons and verdicts: benchmarks, loss curves and live traffic windows, target vs source.

Every verdict keeps the numbers it was based on (each `Check` has both sides, the observed
difference and the threshold), so `status`, the Temporal UI and reports can explain a decision
after the fact. Too little data is *inconclusive*, never *pass*; unreadable data is *error*.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field
from temporalio import activity

from activities.analysis import AnalysisRule, Check, Measurement, Outcome, Verdict, judge, verdict
from activities.bench import BenchResult
from activities.metrics import EndpointSnapshot, Histogram, SideSnapshot
from activities.stats import (
    bin_counts,
    binomial_excess,
    mann_whitney_greater,
    normal_quantile,
    two_proportion_greater,
)
from activities.training import TrainResult

#: Re-exported: workflows, state and tests import the verdict models from here.
__all__ = ["Check", "Outcome", "Verdict", "verdict"]


def relative_change_pct(source: float, target: float) -> float:
    if source == 0:
        return 0.0 if target == 0 else math.inf
    return (target - source) / abs(source) * 100


# -- training ----------------------------------------------------------------------------------


class CompareTrainingInput(BaseModel):
    source: TrainResult
    target: TrainResult
    loss_divergence_pct: float


def _worst_divergence_pct(source: list[float], target: list[float]) -> float:
    if len(source) != len(target) or not source:
        return math.inf
    return max(abs(relative_change_pct(a, b)) for a, b in zip(source, target, strict=True))


def _curve_check(metric: str, source: list[float], target: list[float], limit: float) -> Check:
    worst = _worst_divergence_pct(source, target)
    return Check(
        metric=metric,
        outcome="pass" if worst <= limit else "fail",
        source=source[-1] if source else None,
        target=target[-1] if target else None,
        observed=round(worst, 6),
        threshold=limit,
        detail=f"largest per-step divergence {worst:.4g}% over {len(source)} steps (allowed {limit}%)",
    )


def judge_training(request: CompareTrainingInput) -> Verdict:
    s, t, limit = request.source, request.target, request.loss_divergence_pct
    params = abs(relative_change_pct(s.param_norm, t.param_norm))
    same_data = s.data_blake3 == t.data_blake3 and s.object_key == t.object_key
    checks = [
        _curve_check("loss_curve", s.losses, t.losses, limit),
        _curve_check("grad_norm_curve", s.grad_norms, t.grad_norms, limit),
        Check(
            metric="final_params",
            outcome="pass" if params <= limit else "fail",
            source=s.param_norm,
            target=t.param_norm,
            observed=round(params, 6),
            threshold=limit,
            detail=(
                "bit-identical final tensors" if s.param_digest == t.param_digest else "final tensors differ bitwise"
            )
            + f", parameter norm differs {params:.4g}%",
        ),
        Check(
            metric="training_data",
            outcome="pass" if same_data else "fail",
            detail=f"both sides trained on identical bytes of {s.object_key}"
            if same_data
            else f"training bytes differ: {s.object_key} {s.data_blake3[:12]} vs {t.object_key} {t.data_blake3[:12]}",
        ),
    ]
    return verdict("parallel_run", checks)


@activity.defn
def compare_training(request: CompareTrainingInput) -> Verdict:
    return judge_training(request)


# -- benchmarks --------------------------------------------------------------------------------


class CompareBenchInput(BaseModel):
    source: list[BenchResult]
    target: list[BenchResult]
    source_price_per_hour: float
    target_price_per_hour: float
    min_throughput_ratio: float
    max_cost_ratio: float


class PocComparison(BaseModel):
    verdict: Verdict
    throughput_ratio: float
    source_cost_per_million_samples: float
    target_cost_per_million_samples: float


def _cost_per_million(price_per_hour: float, samples_per_s: float) -> float:
    return price_per_hour / (samples_per_s * 3600) * 1e6 if samples_per_s > 0 else math.inf


def judge_benchmarks(request: CompareBenchInput) -> PocComparison:
    source = sorted(r.median_train_samples_per_s for r in request.source)[len(request.source) // 2]
    target = sorted(r.median_train_samples_per_s for r in request.target)[len(request.target) // 2]
    ratio = target / source if source else 0.0
    source_cost = _cost_per_million(request.source_price_per_hour, source)
    target_cost = _cost_per_million(request.target_price_per_hour, target)
    cost_ratio = target_cost / source_cost if source_cost else math.inf
    checks = [
        Check(
            metric="throughput",
            outcome="pass" if ratio >= request.min_throughput_ratio else "fail",
            source=round(source, 3),
            target=round(target, 3),
            observed=round(ratio, 4),
            threshold=request.min_throughput_ratio,
            detail=f"target trains at {ratio:.2f}x the source's samples/s (floor {request.min_throughput_ratio}x)",
        ),
        Check(
            metric="cost_per_unit",
            outcome="pass" if cost_ratio <= request.max_cost_ratio else "fail",
            source=round(source_cost, 6),
            target=round(target_cost, 6),
            observed=round(cost_ratio, 4),
            threshold=request.max_cost_ratio,
            detail=f"USD per million samples: {target_cost:.4f} vs {source_cost:.4f} ({cost_ratio:.2f}x, ceiling "
            f"{request.max_cost_ratio}x)",
        ),
    ]
    return PocComparison(
        verdict=verdict("poc", checks),
        throughput_ratio=round(ratio, 4),
        source_cost_per_million_samples=round(source_cost, 6),
        target_cost_per_million_samples=round(target_cost, 6),
    )


@activity.defn
def compare_benchmarks(request: CompareBenchInput) -> PocComparison:
    return judge_benchmarks(request)


# -- live traffic windows ----------------------------------------------------------------------


class WindowThresholds(BaseModel):
    latency_increase_pct: float
    error_rate_increase_pp: float
    min_samples: int
    confidence: float = Field(0.98, gt=0.5, lt=1)
    dry_run: list[str] = Field(default_factory=list, description="Metrics judged but never acted on")


class SideWindow(BaseModel):
    """One side's traffic within one window: the difference of two scrapes."""

    requests: float
    errors: float
    latency: Histogram | None


class JudgeWindowInput(BaseModel):
    stage: str
    previous: list[EndpointSnapshot]
    current: list[EndpointSnapshot]
    thresholds: WindowThresholds
    baselines: dict[str, SideWindow] = Field(
        default_factory=dict, description="Per endpoint, the source's last window with enough samples"
    )


class WindowJudgement(BaseModel):
    verdict: Verdict
    baselines: dict[str, SideWindow]


def histogram_delta(before: Histogram | None, after: Histogram) -> Histogram:
    if before is None or before.bounds != after.bounds:
        return after
    return Histogram(
        bounds=after.bounds,
        cumulative=[a - b for a, b in zip(after.cumulative, before.cumulative, strict=True)],
        count=after.count - before.count,
        sum=after.sum - before.sum,
    )


def quantile(histogram: Histogram, q: float) -> float:
    """Prometheus-style histogram_quantile: linear interpolation inside the bucket holding rank q."""
    if histogram.count <= 0:
        return math.nan
    rank = q * histogram.count
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(histogram.bounds, histogram.cumulative, strict=True):
        if count >= rank:
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1)
        lower_bound, lower_count = bound, count
    return lower_bound  # rank falls in the +Inf bucket: the last finite bound, as Prometheus does


def side_window(before: SideSnapshot | None, after: SideSnapshot) -> SideWindow:
    return SideWindow(
        requests=after.requests - (before.requests if before else 0),
        errors=after.errors - (before.errors if before else 0),
        latency=histogram_delta(before.latency if before else None, after.latency) if after.latency else None,
    )


def window_rules(limits: WindowThresholds) -> list[AnalysisRule]:
    """The cutover's analysis template: what every endpoint's window is judged by, as data."""
    dry = set(limits.dry_run)
    return [
        AnalysisRule(metric="*.samples", compare="at_least", threshold=limits.min_samples, on_breach="inconclusive",
                     unit=" requests"),
        AnalysisRule(metric="*.latency", compare="significant_increase", threshold=limits.latency_increase_pct,
                     unit="%", dry_run="latency" in dry),
        AnalysisRule(metric="*.latency_tail", compare="significant_increase", threshold=limits.latency_increase_pct,
                     unit="%", dry_run="latency" in dry),
        AnalysisRule(metric="*.error_rate", compare="significant_increase", threshold=limits.error_rate_increase_pp,
                     unit=" pp", dry_run="error_rate" in dry),
    ]  # fmt: skip


def measure_endpoint(
    previous: EndpointSnapshot | None, current: EndpointSnapshot, limits: WindowThresholds, baseline: SideWindow | None
) -> tuple[list[Measurement], SideWindow | None]:
    """Measurements for one endpoint's window, and the source baseline to keep for the next window.

    When the source is idle (100% of traffic on the target), the target is compared with the
    source's last window that had enough samples, so the final stage is still judged.
    """
    name = current.endpoint
    for side in ("source", "target"):
        snapshot: SideSnapshot = getattr(current, side)
        if not snapshot.ok:
            return [
                Measurement(metric=f"{name}.scrape", error=f"{side} metrics unreadable: {snapshot.error}")
            ], baseline
    source = side_window(previous.source if previous else None, current.source)
    target = side_window(previous.target if previous else None, current.target)
    note = ""
    if source.requests >= limits.min_samples and source.latency is not None:
        baseline = source
    elif baseline is not None:
        source, note = baseline, " (source idle: its last full window)"
    if min(source.requests, target.requests) < limits.min_samples or source.latency is None or target.latency is None:
        samples = Measurement(
            metric=f"{name}.samples",
            observed=min(source.requests, target.requests) if source.latency and target.latency else 0,
            source=source.requests,
            target=target.requests,
            detail=f"{int(source.requests)} source / {int(target.requests)} target requests in the window; "
            f"{limits.min_samples} a side needed",
        )
        return [samples], baseline
    confidence = limits.confidence
    measured = [*_latency_measurements(name, source.latency, target.latency, note),
                _error_measurement(name, source, target, confidence, note)]  # fmt: skip
    return measured, baseline


def judge_endpoint(
    previous: EndpointSnapshot | None, current: EndpointSnapshot, limits: WindowThresholds, baseline: SideWindow | None
) -> tuple[list[Check], SideWindow | None]:
    measured, baseline = measure_endpoint(previous, current, limits, baseline)
    rules = window_rules(limits)
    return judge(current.endpoint, measured, rules, limits.confidence).checks, baseline


def _latency_measurements(name: str, source: Histogram, target: Histogram, note: str) -> list[Measurement]:
    """Latency fails only when the target is significantly slower *and* by more than allowed.

    Mann-Whitney U guards against noise; the effect-size gate (relative p50/p95 increase)
    against significant-but-irrelevant shifts. The tail measurement catches what the rank test
    misses: the same median with a heavier tail (more target requests above the source's p95
    than the 5% expected, significantly, and a p99 beyond the allowed increase).
    """
    s_bins, t_bins = bin_counts(source.cumulative, source.count), bin_counts(target.cumulative, target.count)
    p_value, effect = mann_whitney_greater(t_bins, s_bins)
    s_q = {q: quantile(source, q / 100) for q in (50, 95, 99)}
    t_q = {q: quantile(target, q / 100) for q in (50, 95, 99)}
    rise = {q: relative_change_pct(s_q[q], t_q[q]) for q in (50, 95, 99)}
    shift = Measurement(
        metric=f"{name}.latency",
        source=round(s_q[50] * 1000, 3),
        target=round(t_q[50] * 1000, 3),
        observed=round(max(rise[50], rise[95]), 2),
        p_value=p_value,
        effect_size=round(effect, 4),
        detail=f"p50 {t_q[50] * 1000:.1f} ms vs {s_q[50] * 1000:.1f} ms{note} ({rise[50]:+.1f}%), "
        f"p95 {rise[95]:+.1f}%; P(target slower)={effect:.2f} (Mann-Whitney)",
    )
    above = target.count - _count_at_or_below(target, s_q[95])
    tail_p = binomial_excess(above, target.count, 0.05)
    tail = Measurement(
        metric=f"{name}.latency_tail",
        source=round(s_q[99] * 1000, 3),
        target=round(t_q[99] * 1000, 3),
        observed=round(rise[99], 2),
        p_value=tail_p,
        effect_size=round(above / target.count, 4),
        detail=f"p99 {t_q[99] * 1000:.1f} ms vs {s_q[99] * 1000:.1f} ms ({rise[99]:+.1f}%); "
        f"{above / target.count:.1%} of target requests above the source's p95 (5% expected)",
    )
    return [shift, tail]


def _count_at_or_below(histogram: Histogram, value: float) -> float:
    """Observations at or below `value`, interpolated within its bucket."""
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(histogram.bounds, histogram.cumulative, strict=True):
        if value <= bound:
            share = (value - lower_bound) / (bound - lower_bound) if bound > lower_bound else 1.0
            return lower_count + (count - lower_count) * share
        lower_bound, lower_count = bound, count
    return histogram.count


def _error_measurement(name: str, source: SideWindow, target: SideWindow, confidence: float, note: str) -> Measurement:
    """More errors fail only past the allowed pp *and* when significant: two errors in a sparse
    window are not an outage. The interval is two-sided at the plan's confidence."""
    s_rate, t_rate = source.errors / source.requests * 100, target.errors / target.requests * 100
    difference = t_rate - s_rate
    p_value = two_proportion_greater(target.errors, target.requests, source.errors, source.requests)
    sd = math.sqrt(
        s_rate / 100 * (1 - s_rate / 100) / source.requests + t_rate / 100 * (1 - t_rate / 100) / target.requests
    )
    z = normal_quantile(1 - (1 - confidence) / 2)  # two-sided: 2.326 at the default 98%
    return Measurement(
        metric=f"{name}.error_rate",
        source=round(s_rate, 4),
        target=round(t_rate, 4),
        observed=round(difference, 4),
        p_value=p_value,
        confidence_interval=(round(difference - z * sd * 100, 4), round(difference + z * sd * 100, 4)),
        detail=f"{t_rate:.2f}% vs {s_rate:.2f}% errors{note} ({difference:+.2f} pp)",
    )


@activity.defn
def judge_window(request: JudgeWindowInput) -> WindowJudgement:
    previous = {snapshot.endpoint: snapshot for snapshot in request.previous}
    checks, baselines = [], dict(request.baselines)
    for current in request.current:
        endpoint_checks, baseline = judge_endpoint(
            previous.get(current.endpoint), current, request.thresholds, baselines.get(current.endpoint)
        )
        checks += endpoint_checks
        if baseline is not None:
            baselines[current.endpoint] = baseline
    return WindowJudgement(verdict=verdict(f"cutover:{request.stage}", checks), baselines=baselines)
