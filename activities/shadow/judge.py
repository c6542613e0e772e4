"""The noise-floor judgement: does the target differ from the source more than the source differs from itself?

Per request and field there are two differences from the source's first answer: the source's own
second answer (the floor, Diffy's "secondary") and the target's. The target *exceeds* on a request
when its difference beats that request's floor by both margins (relative and absolute). Chance
alone makes the mirror image as likely: the source's own difference beating the target's by the
same margins. So a field differs when exceedances significantly outnumber their mirror images (a
one-sided sign test, Bonferroni over the fields) — or, where the source never disagreed with itself
at all, on any exceedance (no noise can explain it: p = 0; Diffy's rule). Latency and errors per
side are judged like the cutover's windows: significant *and* beyond the allowed change.

The statistics per field live here; every row's outcome comes from the one judge
(activities.analysis) applying `shadow_rules`, so a shadow verdict reads like every other verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from activities.analysis import AnalysisRule, Measurement, Verdict, judge, relative_change_pct
from activities.stats import two_proportion_greater
from skyshift.spec.shadow import ShadowSpec

MAX_FIELD_CHECKS = 10


class ShadowThresholds(BaseModel):
    """What the plan's `thresholds` say about latency and errors, and the confidence of every test."""

    latency_increase_pct: float = Field(15.0, ge=0)
    error_rate_increase_pp: float = Field(0.1, ge=0)
    confidence: float = Field(0.98, gt=0.5, lt=1)


class FieldDiff(BaseModel):
    """One output field (a JSON path, or a logits/text metric), target-vs-source against the floor."""

    field: str
    compared: int
    exceeded: int = Field(description="Requests where the target's difference beat the floor by both margins")
    reverse: int = Field(description="Requests where the source's own difference beat the target's likewise")
    structural: int = Field(0, description="Requests where the field was missing or changed type on the target")
    target_max: float | None = None
    target_mean: float | None = None
    floor_max: float | None = None
    floor_p95: float | None = None
    floor_mean: float | None = None
    max_relative: float | None = Field(None, description="Largest |Δ|/|value| of the target (numeric JSON leaves)")
    p_value: float | None = Field(
        None,
        description="Sign test that exceedances outnumber their mirror images, Bonferroni-adjusted over the fields",
    )
    quiet: bool = Field(False, description="The source never disagreed with itself on this field")
    judged: bool = Field(True, description="False when the source is noisier than the plan allows")
    differs: bool = False
    worst_request: str | None = None
    worst_target: float | None = None
    worst_floor: float | None = None


class PositionDiff(BaseModel):
    """One logits position (row, class): the largest target and source-vs-source |Δ| over all requests."""

    position: str
    target_max: float
    floor_max: float


@dataclass
class FieldSamples:
    """Per-request differences of one field, in request order."""

    target: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    relative: float | None = None

    def add(self, request_id: str, target: float, floor: float, relative: float | None) -> None:
        self.ids.append(request_id)
        self.target.append(target)
        self.floor.append(floor)
        if relative is not None:
            self.relative = max(self.relative or 0.0, relative)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _stat(values: np.ndarray, how: str) -> float | None:
    finite = _finite(values)
    if not finite.size:
        return None
    return float({"max": np.max, "mean": np.mean, "p95": lambda v: np.percentile(v, 95)}[how](finite))


def judge_field(name: str, samples: FieldSamples, spec: ShadowSpec, alpha: float, fields: int = 1) -> FieldDiff:
    """One field at significance `alpha`, its p-value multiplied by the number of `fields` (Bonferroni)."""
    from scipy.stats import binomtest

    target, floor = np.asarray(samples.target), np.asarray(samples.floor)
    grow, pad = 1 + spec.relative_margin_pct / 100, spec.absolute_margin
    with np.errstate(invalid="ignore"):  # inf * 1.2 + pad vs inf: a structural miss on both sides is no excess
        exceeded = target > floor * grow + pad
        reverse = floor > target * grow + pad
    k, m = int(exceeded.sum()), int(reverse.sum())
    quiet = bool(np.all(floor == 0))
    p_value = min(1.0, fields * binomtest(k, k + m, 0.5, alternative="greater").pvalue) if k else 1.0
    floor_p95 = _stat(floor, "p95") if np.isfinite(floor).any() else None
    judged = spec.max_source_disagreement is None or (
        floor_p95 is not None and floor_p95 <= spec.max_source_disagreement and np.isfinite(floor).all()
    )
    differs = judged and k > 0 and (quiet or p_value < alpha)
    worst = None
    if k:
        with np.errstate(invalid="ignore"):
            excess = np.where(exceeded, np.nan_to_num(target - floor * grow, posinf=np.finfo(float).max), -np.inf)
        worst = int(np.argmax(excess))
    return FieldDiff(
        field=name,
        compared=len(target),
        exceeded=k,
        reverse=m,
        structural=int(np.sum(np.isinf(target) & np.isfinite(floor))),
        target_max=_stat(target, "max"),
        target_mean=_stat(target, "mean"),
        floor_max=_stat(floor, "max"),
        floor_p95=floor_p95,
        floor_mean=_stat(floor, "mean"),
        max_relative=samples.relative,
        p_value=float(p_value),
        quiet=quiet,
        judged=judged,
        differs=differs,
        worst_request=samples.ids[worst] if worst is not None else None,
        worst_target=_finite_or_none(target[worst]) if worst is not None else None,
        worst_floor=_finite_or_none(floor[worst]) if worst is not None else None,
    )


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def judge_fields(fields: dict[str, FieldSamples], spec: ShadowSpec, confidence: float) -> list[FieldDiff]:
    """Every field, most different first. Bonferroni: a sample with many fields must not fail by chance."""
    judged = [judge_field(name, samples, spec, 1 - confidence, len(fields)) for name, samples in fields.items()]
    return sorted(judged, key=lambda f: (not f.differs, -(f.exceeded - f.reverse), -(f.target_max or 0), f.field))


def worst_positions(target: np.ndarray | None, floor: np.ndarray | None, spec: ShadowSpec,
                    limit: int = 10) -> list[PositionDiff]:  # fmt: skip
    """Logits positions whose largest target |Δ| most exceeds the largest source-vs-source |Δ|."""
    if target is None or floor is None:
        return []
    excess = target - floor * (1 + spec.relative_margin_pct / 100) - spec.absolute_margin
    order = np.argsort(-excess, axis=None, kind="stable")[:limit]
    rows = []
    for flat in order:
        if excess.flat[flat] <= 0:
            break
        row, column = np.unravel_index(flat, target.shape)
        rows.append(PositionDiff(position=f"[{row}][{column}]", target_max=float(target.flat[flat]),
                                 floor_max=float(floor.flat[flat])))  # fmt: skip
    return rows


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.3g}"


def shadow_rules(spec: ShadowSpec, limits: ShadowThresholds) -> list[AnalysisRule]:
    """The shadow phase's analysis template: what every endpoint's comparison is judged by, as data."""
    rules = [
        AnalysisRule(metric="*.requests", compare="at_least", threshold=spec.min_requests, on_breach="inconclusive",
                     unit=" requests"),
        # Any share of requests beyond the floor fails, if significant (p = 0 where the source has no noise).
        AnalysisRule(metric="*.output.*", compare="significant_increase", threshold=0.0, unit="% of requests"),
        AnalysisRule(metric="*.errors", compare="significant_increase", threshold=limits.error_rate_increase_pp,
                     unit=" pp"),
        AnalysisRule(metric="*.latency", compare="significant_increase", threshold=limits.latency_increase_pct,
                     unit="%"),
    ]  # fmt: skip
    if spec.max_source_disagreement is not None:
        rules.append(AnalysisRule(metric="*.noise_floor", compare="at_most", threshold=spec.max_source_disagreement,
                                  on_breach="inconclusive"))  # fmt: skip
    return rules


def _field_measurement(endpoint: str, diff: FieldDiff, spec: ShadowSpec) -> Measurement:
    metric = f"{endpoint}.output.{diff.field}"
    if not diff.judged:
        return Measurement(
            metric=metric, floor=diff.floor_p95,
            detail=f"the source disagrees with itself by {_fmt(diff.floor_p95)} (p95) on {diff.field}, more than "
            f"max_source_disagreement {spec.max_source_disagreement}: a target difference cannot be told from noise",
        )  # fmt: skip
    chance = "the source never disagreed with itself" if diff.quiet else f"the source by chance on {diff.reverse}"
    detail = (
        f"target beyond the floor on {diff.exceeded}/{diff.compared} requests ({chance}); largest |Δ| "
        f"{_fmt(diff.target_max)} vs the source's own {_fmt(diff.floor_max)} (margins +{spec.relative_margin_pct:g}% "
        f"and +{spec.absolute_margin:g})"
    )
    if diff.worst_request:
        detail += f"; e.g. {diff.worst_request}: {_fmt(diff.worst_target)} vs {_fmt(diff.worst_floor)}"
    if diff.structural:
        detail += f"; missing or retyped on {diff.structural}"
    return Measurement(
        metric=metric,
        observed=round(100 * diff.exceeded / diff.compared, 3),
        source=round(100 * diff.reverse / diff.compared, 3),
        target=diff.target_max,
        floor=diff.floor_max,
        p_value=0.0 if diff.quiet and diff.exceeded else diff.p_value,
        detail=detail,
    )


def measure_outputs(endpoint: str, fields: list[FieldDiff], spec: ShadowSpec) -> list[Measurement]:
    """One row per field, the most different first; beyond MAX_FIELD_CHECKS one row for the rest, so a
    response of thousands of numbers still makes a short verdict."""
    rows = [_field_measurement(endpoint, diff, spec) for diff in fields[:MAX_FIELD_CHECKS]]
    rest = [f for f in fields[MAX_FIELD_CHECKS:] if f.judged]
    if rest:
        worst = rest[0]
        differing = [f.field for f in rest if f.differs]
        rows.append(Measurement(
            metric=f"{endpoint}.output.(+{len(fields) - MAX_FIELD_CHECKS} fields)",
            observed=round(100 * worst.exceeded / worst.compared, 3),
            target=worst.target_max, floor=worst.floor_max,
            p_value=0.0 if worst.quiet and worst.exceeded else worst.p_value,
            detail=f"{len(differing)} more fields beyond the floor"
            + (f": {', '.join(differing[:5])}{', ...' if len(differing) > 5 else ''}" if differing else ""),
        ))  # fmt: skip
    if spec.max_source_disagreement is not None and fields:
        noisiest = max(fields, key=lambda f: f.floor_p95 or 0.0)
        rows.append(Measurement(
            metric=f"{endpoint}.noise_floor", observed=noisiest.floor_p95 or 0.0, floor=noisiest.floor_p95,
            detail=f"the source's largest self-disagreement (p95) is {_fmt(noisiest.floor_p95)} on {noisiest.field}",
        ))  # fmt: skip
    return rows


def measure_requests(endpoint: str, compared: int, sent: int, uncomparable: list[str]) -> Measurement:
    detail = f"{compared} of {sent} requests answered by all three arms and compared"
    if uncomparable:
        detail += f"; {len(uncomparable)} not comparable, e.g. {uncomparable[0]}"
    return Measurement(metric=f"{endpoint}.requests", observed=compared, target=compared, detail=detail)


def measure_errors(endpoint: str, source_errors: int, source_calls: int, target_errors: int, target_calls: int,
                   examples: list[str]) -> Measurement:  # fmt: skip
    """Errors count as the cutover counts them: beyond the allowed pp *and* significant."""
    metric = f"{endpoint}.errors"
    if not source_calls or not target_calls:
        return Measurement(metric=metric, detail="no requests sent")
    s_rate, t_rate = 100 * source_errors / source_calls, 100 * target_errors / target_calls
    detail = (f"target {target_errors}/{target_calls} errors ({t_rate:.2f}%) vs source {source_errors}/{source_calls} "
              f"({s_rate:.2f}%)")  # fmt: skip
    if examples:
        detail += f"; e.g. {', '.join(examples[:3])}"
    return Measurement(
        metric=metric,
        source=round(s_rate, 4),
        target=round(t_rate, 4),
        observed=round(t_rate - s_rate, 4),
        p_value=two_proportion_greater(target_errors, target_calls, source_errors, source_calls),
        detail=detail,
    )


def percentiles(latencies_ms: list[float]) -> tuple[float | None, float | None, float | None]:
    if not latencies_ms:
        return None, None, None
    p50, p95, p99 = np.percentile(np.asarray(latencies_ms), [50, 95, 99])
    return round(float(p50), 3), round(float(p95), 3), round(float(p99), 3)


def measure_latency(endpoint: str, source_ms: list[float], target_ms: list[float]) -> Measurement:
    """Same requests, same moments: the target is slower only if significantly so *and* by more than allowed
    (the larger of the p50 and p95 increases; p99 is reported)."""
    from scipy.stats import mannwhitneyu

    if len(source_ms) < 2 or len(target_ms) < 2:
        return Measurement(metric=f"{endpoint}.latency", detail="too few answers to time")
    s, t = percentiles(source_ms), percentiles(target_ms)
    rise = [relative_change_pct(a, b) for a, b in zip(s, t, strict=True)]  # type: ignore[arg-type]
    return Measurement(
        metric=f"{endpoint}.latency",
        source=s[0],
        target=t[0],
        observed=round(max(rise[0], rise[1]), 2),
        p_value=float(mannwhitneyu(target_ms, source_ms, alternative="greater").pvalue),
        detail=f"target p50/p95/p99 {t[0]:.1f}/{t[1]:.1f}/{t[2]:.1f} ms vs source {s[0]:.1f}/{s[1]:.1f}/{s[2]:.1f} ms "
        f"({rise[0]:+.1f}%/{rise[1]:+.1f}%/{rise[2]:+.1f}%, Mann-Whitney)",
    )


def source_down(endpoint: str, calls: int, examples: list[str]) -> Measurement:
    return Measurement(metric=f"{endpoint}.source",
                       error=f"the source answered none of {calls} requests: {'; '.join(examples)}")  # fmt: skip


def shadow_verdict(endpoint: str, measurements: list[Measurement], spec: ShadowSpec,
                   limits: ShadowThresholds) -> Verdict:  # fmt: skip
    return judge(f"shadow:{endpoint}", measurements, shadow_rules(spec, limits), limits.confidence)
