"""The noise-floor judgement: does the target differ from the source more than the source differs from itself?

Per request and field there are two differences from the source's first answer: the source's own
second answer (the floor, Diffy's "secondary") and the target's. The target *exceeds* on a request
when its difference beats that request's floor by both margins (relative and absolute). Chance
alone makes the mirror image as likely: the source's own difference beating the target's by the
same margins. So a field differs when exceedances significantly outnumber their mirror images (a
one-sided sign test, Bonferroni over the fields) — or, where the source never disagreed with itself
at all, on any exceedance (there is no noise to explain it; Diffy's rule). Latency and errors per
side are judged like the cutover's windows: significant *and* beyond the allowed change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from activities.shadow.spec import ShadowSpec
from activities.stats import two_proportion_greater
from activities.validate import Check, relative_change_pct

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
    p_value: float | None = Field(None, description="Sign test: exceedances outnumber their mirror images")
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


def judge_field(name: str, samples: FieldSamples, spec: ShadowSpec, alpha: float) -> FieldDiff:
    """One field's verdict at significance `alpha` (already divided among the fields)."""
    from scipy.stats import binomtest

    target, floor = np.asarray(samples.target), np.asarray(samples.floor)
    grow, pad = 1 + spec.relative_margin_pct / 100, spec.absolute_margin
    with np.errstate(invalid="ignore"):  # inf * 1.2 + pad vs inf: a structural miss on both sides is no excess
        exceeded = target > floor * grow + pad
        reverse = floor > target * grow + pad
    k, m = int(exceeded.sum()), int(reverse.sum())
    quiet = bool(np.all(floor == 0))
    p_value = binomtest(k, k + m, 0.5, alternative="greater").pvalue if k else 1.0
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
    alpha = (1 - confidence) / max(len(fields), 1)
    judged = [judge_field(name, samples, spec, alpha) for name, samples in fields.items()]
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
    if value is None:
        return "missing"
    return f"{value:.3g}"


def output_checks(endpoint: str, fields: list[FieldDiff], spec: ShadowSpec) -> list[Check]:
    """A failing row per differing field (the worst first, at most MAX_FIELD_CHECKS), an inconclusive
    row per field too noisy to judge, else one passing row that still shows the largest difference."""
    margins = f"+{spec.relative_margin_pct:g}% and +{spec.absolute_margin:g} over the floor"
    checks = []
    for diff in [f for f in fields if f.differs][:MAX_FIELD_CHECKS]:
        floor = "the source never disagreed with itself" if diff.quiet else (
            f"the source by chance on {diff.reverse}, sign test p={diff.p_value:.2g}")  # fmt: skip
        checks.append(Check(
            metric=f"{endpoint}.output.{diff.field}",
            outcome="fail",
            source=diff.floor_max,
            target=diff.target_max,
            observed=round(100 * diff.exceeded / diff.compared, 3),
            threshold=spec.absolute_margin,
            p_value=diff.p_value,
            detail=f"target beyond the floor on {diff.exceeded}/{diff.compared} requests ({floor}); largest "
            f"|Δ| {_fmt(diff.target_max)} vs the source's own {_fmt(diff.floor_max)} ({margins}); e.g. request "
            f"{diff.worst_request}: {_fmt(diff.worst_target)} vs {_fmt(diff.worst_floor)}"
            + (f"; missing or retyped on {diff.structural}" if diff.structural else ""),
        ))  # fmt: skip
    for diff in [f for f in fields if not f.judged]:
        checks.append(Check(
            metric=f"{endpoint}.noise_floor.{diff.field}",
            outcome="inconclusive",
            source=diff.floor_p95,
            threshold=spec.max_source_disagreement,
            detail=f"the source disagrees with itself by {_fmt(diff.floor_p95)} (p95) on {diff.field}, more than "
            f"max_source_disagreement {spec.max_source_disagreement}: a target difference cannot be told from noise",
        ))  # fmt: skip
    if not checks:
        top = fields[0] if fields else None
        checks.append(Check(
            metric=f"{endpoint}.outputs",
            outcome="pass" if fields else "error",
            source=top.floor_max if top else None,
            target=top.target_max if top else None,
            threshold=spec.absolute_margin,
            detail=(f"{len(fields)} fields within the floor ({margins}); largest target |Δ| {_fmt(top.target_max)} "
                    f"on {top.field} (source's own {_fmt(top.floor_max)})") if top else "no output field compared",
        ))  # fmt: skip
    return checks


def sample_check(endpoint: str, compared: int, sent: int, spec: ShadowSpec, uncomparable: list[str]) -> Check:
    enough = compared >= spec.min_requests
    detail = f"{compared} of {sent} requests answered by all three arms and compared; {spec.min_requests} needed"
    if uncomparable:
        detail += f"; {len(uncomparable)} not comparable, e.g. {uncomparable[0]}"
    return Check(
        metric=f"{endpoint}.requests",
        outcome="pass" if enough else "inconclusive",
        target=compared,
        threshold=spec.min_requests,
        detail=detail,
    )


def error_check(endpoint: str, source_errors: int, source_calls: int, target_errors: int, target_calls: int,
                limits: ShadowThresholds, examples: list[str]) -> Check:  # fmt: skip
    """Errors count as the cutover counts them: beyond the allowed pp *and* significant."""
    if not source_calls or not target_calls:
        return Check(metric=f"{endpoint}.errors", outcome="inconclusive", detail="no requests sent")
    s_rate, t_rate = 100 * source_errors / source_calls, 100 * target_errors / target_calls
    difference = t_rate - s_rate
    p_value = two_proportion_greater(target_errors, target_calls, source_errors, source_calls)
    failed = difference > limits.error_rate_increase_pp and p_value < 1 - limits.confidence
    detail = (
        f"target {target_errors}/{target_calls} errors ({t_rate:.2f}%) vs source {source_errors}/{source_calls} "
        f"({s_rate:.2f}%): {difference:+.2f} pp, allowed +{limits.error_rate_increase_pp} pp, p={p_value:.2g}"
    )
    if examples:
        detail += f"; e.g. {', '.join(examples[:3])}"
    return Check(
        metric=f"{endpoint}.errors",
        outcome="fail" if failed else "pass",
        source=round(s_rate, 4),
        target=round(t_rate, 4),
        observed=round(difference, 4),
        threshold=limits.error_rate_increase_pp,
        p_value=p_value,
        detail=detail,
    )  # fmt: skip


def percentiles(latencies_ms: list[float]) -> tuple[float | None, float | None, float | None]:
    if not latencies_ms:
        return None, None, None
    p50, p95, p99 = np.percentile(np.asarray(latencies_ms), [50, 95, 99])
    return round(float(p50), 3), round(float(p95), 3), round(float(p99), 3)


def latency_check(endpoint: str, source_ms: list[float], target_ms: list[float], limits: ShadowThresholds) -> Check:
    """Same requests, same moments: the target is slower only if significantly so *and* by more than allowed."""
    from scipy.stats import mannwhitneyu

    if len(source_ms) < 2 or len(target_ms) < 2:
        return Check(metric=f"{endpoint}.latency", outcome="inconclusive", detail="too few answers to time")
    s, t = percentiles(source_ms), percentiles(target_ms)
    rise = [relative_change_pct(a, b) for a, b in zip(s, t, strict=True)]  # type: ignore[arg-type]
    p_value = float(mannwhitneyu(target_ms, source_ms, alternative="greater").pvalue)
    allowed = limits.latency_increase_pct
    failed = p_value < 1 - limits.confidence and max(rise[0], rise[1]) > allowed
    return Check(
        metric=f"{endpoint}.latency",
        outcome="fail" if failed else "pass",
        source=s[0],
        target=t[0],
        observed=round(max(rise[0], rise[1]), 2),
        threshold=allowed,
        p_value=p_value,
        detail=f"target p50/p95/p99 {t[0]:.1f}/{t[1]:.1f}/{t[2]:.1f} ms vs source {s[0]:.1f}/{s[1]:.1f}/{s[2]:.1f} ms "
        f"({rise[0]:+.1f}%/{rise[1]:+.1f}%/{rise[2]:+.1f}%, allowed +{allowed}%); Mann-Whitney p={p_value:.2g}",
    )  # fmt: skip


def source_down_check(endpoint: str, calls: int, examples: list[str]) -> Check:
    return Check(metric=f"{endpoint}.source", outcome="error",
                 detail=f"the source answered none of {calls} requests: {'; '.join(examples)}")  # fmt: skip
