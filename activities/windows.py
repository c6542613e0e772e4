"""Live traffic windows judged, target vs source: per window, and over a whole stage.

The cutover's (and the soak's) judge: each monitor interval's latency histograms and error counts
of both deployments, compared against a baseline at the same load, with the stage's error budget.
Every verdict keeps the numbers it was based on (each `Check` has both sides, the observed
difference and the threshold), so `status`, the Temporal UI and reports can explain a decision
after the fact. Too little data is *inconclusive*, never *pass*; unreadable data is *error*.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from pydantic import BaseModel, Field
from temporalio import activity

from activities.analysis import (
    AnalysisRule,
    Check,
    Measurement,
    Verdict,
    judge,
    relative_change_pct,
    verdict,
)
from activities.metrics import EndpointSnapshot, Histogram, SideSnapshot
from activities.sequential import SignEvidence, StageBudget, observe
from activities.stats import (
    bin_counts,
    binomial_excess,
    mann_whitney_greater,
    normal_quantile,
    two_proportion_greater,
)

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


class LoadBaseline(BaseModel):
    """The source's own windows at one load level (requests/s), merged with older ones fading (x0.8 each)."""

    rate: float = Field(description="Requests per second the source served in these windows")
    window: SideWindow
    recorded: str = Field(description="When: 'before traffic moved', 'stage 10pct'")


class StageControl(BaseModel):
    """Stage-level error control (plans judged since STAGE_VERDICTS): windows feed a sequential test per metric.

    Without it (`None`), every window is judged on its own at the plan's confidence, as older workflows do.
    """

    budget: StageBudget
    window_seconds: float | None = Field(None, gt=0, description="This window's length: request rates for matching")
    load_tolerance: float = Field(0.25, gt=0, lt=1, description="Rates within this share of each other: same load")
    record_only: bool = Field(False, description="Before traffic moves: only remember the source's windows")


class JudgeWindowInput(BaseModel):
    stage: str
    previous: list[EndpointSnapshot]
    current: list[EndpointSnapshot]
    thresholds: WindowThresholds
    baselines: dict[str, SideWindow] = Field(
        default_factory=dict, description="Per endpoint, the source's last window with enough samples"
    )
    control: StageControl | None = None
    evidence: dict[str, SignEvidence] = Field(
        default_factory=dict, description="Per '<endpoint>.<metric>', this stage's sequential evidence so far"
    )
    library: dict[str, list[LoadBaseline]] = Field(
        default_factory=dict, description="Per endpoint, the source's windows by load level (a few summaries)"
    )


class WindowJudgement(BaseModel):
    verdict: Verdict
    baselines: dict[str, SideWindow]
    evidence: dict[str, SignEvidence] = Field(default_factory=dict)
    library: dict[str, list[LoadBaseline]] = Field(default_factory=dict)


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
    if request.control is not None:
        return judge_window_staged(request, request.control)
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


# -- live traffic windows, judged over the whole stage ------------------------------------------

#: Load levels remembered per endpoint (the oldest used level is dropped beyond this).
MAX_LOAD_LEVELS = 8
#: Weight of older windows when a new one at the same load is merged in (older data fades).
FADE = 0.8


def _scaled_sum(old: SideWindow, new: SideWindow, keep: float) -> SideWindow:
    if old.latency is None or new.latency is None or old.latency.bounds != new.latency.bounds:
        return new
    a, b = old.latency, new.latency
    latency = Histogram(
        bounds=b.bounds,
        cumulative=[keep * x + y for x, y in zip(a.cumulative, b.cumulative, strict=True)],
        count=keep * a.count + b.count,
        sum=keep * a.sum + b.sum,
    )
    return SideWindow(requests=keep * old.requests + new.requests, errors=keep * old.errors + new.errors,
                      latency=latency)  # fmt: skip


def _near(a: float, b: float, tolerance: float) -> bool:
    return a > 0 and b > 0 and abs(a / b - 1) <= tolerance


def load_matched(library: list[LoadBaseline], rate: float, tolerance: float) -> LoadBaseline | None:
    """The remembered source level closest to `rate`, if within `tolerance` of it: never one at another load."""
    near = [level for level in library if _near(level.rate, rate, tolerance)]
    return min(near, key=lambda level: abs(math.log(level.rate / rate)), default=None)


def remember(
    library: list[LoadBaseline], window: SideWindow, rate: float, recorded: str, tolerance: float
) -> list[LoadBaseline]:
    """Merge a source window into the level at its load (or start one); most recently used last."""
    if window.latency is None or rate <= 0:
        return library
    match = load_matched(library, rate, tolerance)
    rest = [level for level in library if level is not match]
    if match is None:
        level = LoadBaseline(rate=rate, window=window, recorded=recorded)
    else:
        weight = FADE * match.window.requests
        merged_rate = (weight * match.rate + window.requests * rate) / (weight + window.requests)
        recorded = match.recorded if match.recorded == recorded else f"{match.recorded} and {recorded}"
        level = LoadBaseline(rate=merged_rate, window=_scaled_sum(match.window, window, FADE), recorded=recorded)
    return [*rest, level][-MAX_LOAD_LEVELS:]


class _Baseline(NamedTuple):
    window: SideWindow
    says: str


def choose_baseline(
    source: SideWindow, target: SideWindow, rates: tuple[float, float], library: list[LoadBaseline],
    limits: WindowThresholds, tolerance: float,
) -> _Baseline | None:  # fmt: skip
    """What the target is compared with, at equal conditions; None when nothing at its load exists.

    1. the concurrent source window when both sides carry the same load (rates within the tolerance);
    2. the source's own earlier windows at the target's load (at 100% the source is idle: the windows
       recorded before traffic moved);
    3. the concurrent source window at a *heavier* load than the target's: it can only flatter the
       target (a slower target under a lighter load is a real regression), so it is used, and said.
    A source window at a lighter load than the target's is never the baseline.
    """
    s_rate, t_rate = rates
    full = source.requests >= limits.min_samples and source.latency is not None
    if full and _near(t_rate, s_rate, tolerance):
        return _Baseline(source, f"the concurrent source window at the same load ({s_rate:.3g} vs {t_rate:.3g} req/s)")
    matched = load_matched(library, t_rate, tolerance)
    if matched is not None and matched.window.requests >= limits.min_samples:
        return _Baseline(matched.window, f"the source's own windows at {matched.rate:.3g} req/s ({matched.recorded}); "
                         f"target at {t_rate:.3g} req/s")  # fmt: skip
    if full and t_rate < s_rate:
        return _Baseline(source, f"the concurrent source window at a heavier load ({s_rate:.3g} vs {t_rate:.3g} "
                         "req/s): it can only flatter the target")  # fmt: skip
    return None


def _stage_rules(limits: WindowThresholds, alpha: float) -> list[AnalysisRule]:
    """Sequential: fail when the stage's change detector says the target became worse by more than half the
    effect to catch, at the stage's sequential alpha (activities.sequential: bounded over the planned windows)."""
    dry = set(limits.dry_run)
    return [
        AnalysisRule(metric=f"*.stage_{metric}", compare="at_least", threshold=alpha, dry_run=kind in dry,
                     unit=" (stage p)")
        for metric, kind in (("latency_p50", "latency"), ("latency_p95", "latency"), ("error_rate", "error_rate"))
    ]  # fmt: skip


def _immediate_rules(limits: WindowThresholds) -> list[AnalysisRule]:
    """One window rolls back at once only on a large, certain regression: its p10, p25 *and* p50 (not the tail:
    a stall moves the tail of a window, not its lower quantiles) beyond twice the effect the stage must catch,
    or the error rate beyond the effect, at the per-window share of the stage's budget. The tail is reported
    per window but judged by the stage."""
    dry = set(limits.dry_run)
    return [
        AnalysisRule(metric="*.samples", compare="at_least", threshold=limits.min_samples, on_breach="inconclusive",
                     unit=" requests"),
        AnalysisRule(metric="*.baseline", compare="at_least", threshold=1, on_breach="inconclusive"),
        AnalysisRule(metric="*.latency", compare="significant_increase", threshold=2 * limits.latency_increase_pct,
                     unit="%", dry_run="latency" in dry),
        AnalysisRule(metric="*.latency_tail", compare="significant_increase", threshold=limits.latency_increase_pct,
                     unit="%", dry_run=True),
        AnalysisRule(metric="*.error_rate", compare="significant_increase",
                     threshold=limits.error_rate_increase_pp, unit=" pp", dry_run="error_rate" in dry),
    ]  # fmt: skip


def _stage_measurement(name: str, metric: str, evidence: SignEvidence, margin: float, unit: str) -> Measurement:
    mean = evidence.mean_change
    if mean is None:
        return Measurement(metric=f"{name}.stage_{metric}", detail="no window counted yet in this stage")
    return Measurement(
        metric=f"{name}.stage_{metric}", observed=evidence.p_value, p_value=evidence.p_value,
        detail=f"{evidence.worse} of {evidence.windows} windows worse by more than {margin:g}{unit} "
        f"(mean change {mean:+.3g}{unit}); stage p={evidence.p_value:.2g} (Shiryaev-Roberts over the planned windows)",
    )  # fmt: skip


def measure_endpoint_staged(
    previous: EndpointSnapshot | None, current: EndpointSnapshot, limits: WindowThresholds, control: StageControl,
    evidence: dict[str, SignEvidence], library: list[LoadBaseline], stage: str,
) -> tuple[list[Measurement], list[Measurement], dict[str, SignEvidence], list[LoadBaseline]]:  # fmt: skip
    """This window's measurements, the stage's, and the evidence and load levels to keep."""
    name = current.endpoint
    for side in ("source", "target"):
        snapshot: SideSnapshot = getattr(current, side)
        if not snapshot.ok:
            error = Measurement(metric=f"{name}.scrape", error=f"{side} metrics unreadable: {snapshot.error}")
            return [error], [], evidence, library
    source = side_window(previous.source if previous else None, current.source)
    target = side_window(previous.target if previous else None, current.target)
    seconds = control.window_seconds or 1.0
    rates = (source.requests / seconds, target.requests / seconds)
    recorded = "before traffic moved" if control.record_only else f"stage {stage}"
    if source.requests >= limits.min_samples:
        updated_library = remember(library, source, rates[0], recorded, control.load_tolerance)
    else:
        updated_library = library
    if control.record_only:
        return [], [], evidence, updated_library
    lat_margin, err_margin = limits.latency_increase_pct / 2, limits.error_rate_increase_pp / 2
    keys = {"latency_p50": (lat_margin, "%"), "latency_p95": (lat_margin, "%"), "error_rate": (err_margin, " pp")}

    def stage_part(kept: dict[str, SignEvidence]) -> list[Measurement]:
        empty = SignEvidence()
        return [_stage_measurement(name, k, kept.get(f"{name}.{k}", empty), m, u) for k, (m, u) in keys.items()]

    if target.requests < limits.min_samples or target.latency is None:
        samples = Measurement(metric=f"{name}.samples", observed=target.requests if target.latency else 0,
                              source=source.requests, target=target.requests,
                              detail=f"{int(target.requests)} target requests in the window; {limits.min_samples} "
                              "needed")  # fmt: skip
        return [samples], stage_part(evidence), evidence, updated_library
    baseline = choose_baseline(source, target, rates, library, limits, control.load_tolerance)
    if baseline is None:
        levels = ", ".join(f"{level.rate:.3g}" for level in library) or "none yet"
        missing = Measurement(metric=f"{name}.baseline", observed=0, source=rates[0], target=rates[1],
                              detail=f"no source baseline at the target's load ({rates[1]:.3g} req/s; the source now "
                              f"serves {rates[0]:.3g}, levels recorded: {levels} req/s)")  # fmt: skip
        return [missing], stage_part(evidence), evidence, updated_library
    base, says = baseline.window, f" [baseline: {baseline.says}]"
    assert base.latency is not None and target.latency is not None
    window = [*_latency_measurements(name, base.latency, target.latency, says),
              _error_measurement(name, base, target, 1 - control.budget.immediate_alpha, says)]  # fmt: skip
    window[0] = immediate_latency(window[0], base.latency, target.latency)
    changes = {
        "latency_p50": relative_change_pct(quantile(base.latency, 0.5), quantile(target.latency, 0.5)),
        "latency_p95": relative_change_pct(quantile(base.latency, 0.95), quantile(target.latency, 0.95)),
        "error_rate": (target.errors / target.requests - base.errors / max(base.requests, 1)) * 100,
    }
    kept = dict(evidence)
    for key, change in changes.items():
        margin = keys[key][0]
        bounded = change if math.isfinite(change) else 1e9
        kept[f"{name}.{key}"] = observe(
            kept.get(f"{name}.{key}", SignEvidence()), bounded, margin, control.budget.planned_windows
        )
    return window, stage_part(kept), kept, updated_library


def whole_shift_pct(source: Histogram, target: Histogram) -> tuple[float, float, float]:
    """Rises of the p10, p25 and p50: a window's whole distribution moved only when all three did.

    A stall (GC pause, noisy neighbour) delays a burst of a window's requests: it moves the upper
    quantiles, and the median once the burst is large, but barely the lower ones. A slower target
    moves them all. The Mann-Whitney p-value cannot tell them apart (a burst is not independent
    requests): it is far too small under a stall. The false-alarm bench found one stall plus the
    ordinary noise of 300-request quantiles moving the p25 and p50 (and even the p10) past 15% in
    2 of 100 equal 72-hour stages: hence all three, and twice the effect the stage must catch.
    """
    return tuple(relative_change_pct(quantile(source, q), quantile(target, q)) for q in (0.1, 0.25, 0.5))  # type: ignore[return-value]


def immediate_latency(shift: Measurement, source: Histogram, target: Histogram) -> Measurement:
    """The window's latency judged for an immediate rollback: the smallest of the p10, p25 and p50 rises."""
    p10, p25, p50 = whole_shift_pct(source, target)
    return shift.model_copy(update={"observed": round(min(p10, p25, p50), 2),
                                    "detail": f"{shift.detail}; p10 {p10:+.1f}%, p25 {p25:+.1f}%: judged on the "
                                    "smallest of the p10/p25/p50 rises"})  # fmt: skip


def judge_window_staged(request: JudgeWindowInput, control: StageControl) -> WindowJudgement:
    """Each window judged for a large, certain regression; every window also counted towards the stage's test."""
    previous = {snapshot.endpoint: snapshot for snapshot in request.previous}
    limits, budget = request.thresholds, control.budget
    window_part: list[Measurement] = []
    stage_part: list[Measurement] = []
    evidence, library = dict(request.evidence), dict(request.library)
    for current in request.current:
        w, st, evidence, levels = measure_endpoint_staged(
            previous.get(current.endpoint), current, limits, control, evidence,
            library.get(current.endpoint, []), request.stage,
        )  # fmt: skip
        window_part += w
        stage_part += st
        library[current.endpoint] = levels
    subject = f"cutover:{request.stage}"
    immediate = judge(subject, window_part, _immediate_rules(limits), 1 - budget.immediate_alpha).checks
    staged = judge(subject, stage_part, _stage_rules(limits, budget.sequential_alpha)).checks
    return WindowJudgement(verdict=verdict(subject, [*immediate, *staged]), baselines=request.baselines,
                           evidence=evidence, library=library)  # fmt: skip
