"""Analysis as data: checks written as `{metric, compare, threshold, dry_run}` rules, and the one judge.

Like Argo Rollouts' AnalysisTemplates and Kayenta's metric sets, a check is not code: a rule says
which measurement it judges (a name or a glob: `loss`, `eval_*`, `tensor:*`, `*.latency`), how to
compare and against what. Domain code (the cutover's traffic windows, the parallel run's arms, the
POC's benchmarks) only *measures*; `judge` applies the first matching rule to each measurement and
keeps the numbers beside the outcome, so a verdict explains itself, floor included (Diffy: a
difference counts only where it beats the noise of two identical primaries).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field

from skyshift.spec.analysis import AnalysisRule

Outcome = Literal["pass", "fail", "inconclusive", "error"]
_SEVERITY: dict[str, int] = {"pass": 0, "inconclusive": 1, "error": 2, "fail": 3}


class Check(BaseModel):
    """One judged measurement with the numbers it was judged on (new fields keep defaults: old histories)."""

    metric: str
    outcome: Outcome
    source: float | None = None
    target: float | None = None
    observed: float | None = Field(None, description="The compared quantity, e.g. relative increase in %")
    threshold: float | None = Field(None, description="The limit the observed value was held to")
    p_value: float | None = Field(None, description="One-sided test that the target is worse")
    effect_size: float | None = Field(None, description="e.g. P(target latency > source latency)")
    confidence_interval: tuple[float, float] | None = None
    dry_run: bool = Field(False, description="Judged and reported, never acted on")
    detail: str = ""
    floor: float | None = Field(None, description="The same quantity between two runs of the source (noise floor)")
    step: int | None = Field(None, description="The first step where the target went beyond the limit")
    compare: str | None = Field(None, description="The rule's comparison (COMPARISONS)")


class Verdict(BaseModel):
    subject: str
    outcome: Outcome
    checks: list[Check]
    summary: str


def verdict(subject: str, checks: list[Check]) -> Verdict:
    """The worst acting check decides: fail > error > inconclusive > pass. Dry-run checks only report."""
    acting = [c for c in checks if not c.dry_run]
    outcome: Outcome = max((c.outcome for c in acting), key=_SEVERITY.__getitem__, default="inconclusive")
    deciding = [c for c in acting if c.outcome == outcome]
    passed = f"{len(acting)} checks passed"
    summary = "; ".join(f"{c.metric}: {c.detail}" for c in deciding) if outcome != "pass" else passed
    shadow = [c for c in checks if c.dry_run and c.outcome != "pass"]
    if shadow:
        summary += "; dry-run: " + "; ".join(f"{c.metric} would be {c.outcome}: {c.detail}" for c in shadow)
    return Verdict(subject=subject, outcome=outcome, checks=checks, summary=summary)


class Measurement(BaseModel):
    """What domain code observed for one metric; the judge adds the outcome."""

    metric: str
    observed: float | None = Field(None, description="The compared quantity; None: no data (inconclusive)")
    source: float | None = None
    target: float | None = None
    floor: float | None = Field(None, description="The same quantity between two runs of the source")
    step: int | None = Field(None, description="The first step where the target went beyond the limit")
    p_value: float | None = None
    effect_size: float | None = None
    confidence_interval: tuple[float, float] | None = None
    error: str | None = Field(None, description="Why the metric could not be read: the check is an error")
    detail: str = ""


class Comparator(NamedTuple):
    meaning: str
    limit: Callable[[AnalysisRule, float | None], float]
    breached: Callable[[float, float, float | None, float], bool]  # observed, limit, p_value, alpha


def _floor_limit(rule: AnalysisRule, floor: float | None) -> float:
    return max(rule.threshold, (floor or 0.0) * (1 + rule.floor_margin))


#: The comparisons a rule may name: the only code that turns numbers into outcomes.
COMPARISONS: dict[str, Comparator] = {
    "at_most": Comparator(
        "observed <= threshold", lambda rule, floor: rule.threshold, lambda o, limit, p, a: not o <= limit
    ),
    "at_least": Comparator(
        "observed >= threshold", lambda rule, floor: rule.threshold, lambda o, limit, p, a: not o >= limit
    ),
    "within_floor": Comparator(
        "observed <= max(threshold, floor x (1 + floor_margin)): differences inside the noise of two source runs pass",
        _floor_limit,
        lambda o, limit, p, a: not o <= limit,
    ),
    "significant_increase": Comparator(
        "fails only when observed > threshold and the one-sided test is significant (p < 1 - confidence)",
        lambda rule, floor: rule.threshold,
        lambda o, limit, p, a: o > limit and p is not None and p < a,
    ),
    "beyond_uncertainty": Comparator(
        "passes when observed <= threshold; fails only when even the interval's lower end is beyond "
        "max(threshold, floor x (1 + floor_margin)); anything between is inconclusive (a floor or trials too "
        "noisy to decide ask the operator, never fail)",
        _floor_limit,
        lambda o, limit, p, a: o > limit,
    ),
}


def rule_for(metric: str, rules: Sequence[AnalysisRule]) -> AnalysisRule | None:
    return next((rule for rule in rules if fnmatch.fnmatchcase(metric, rule.metric)), None)


def limit_for(rule: AnalysisRule, floor: float | None = None) -> float:
    """The value the observed quantity may reach under `rule` (domain code uses it to find a first bad step)."""
    return COMPARISONS[rule.compare].limit(rule, floor)


def _number(value: float, unit: str) -> str:
    return f"{value:.4g}{unit}"


def judge_measurement(measurement: Measurement, rule: AnalysisRule | None, confidence: float) -> Check:
    m = measurement
    common = dict(
        metric=m.metric, source=m.source, target=m.target, observed=m.observed, floor=m.floor, step=m.step,
        p_value=m.p_value, effect_size=m.effect_size, confidence_interval=m.confidence_interval,
    )  # fmt: skip
    if m.error is not None:
        return Check(**common, outcome="error", dry_run=bool(rule and rule.dry_run), detail=m.error)
    if rule is None:
        return Check(**common, outcome="inconclusive", detail=f"{m.detail}; no analysis rule judges {m.metric}")
    common |= dict(dry_run=rule.dry_run, compare=rule.compare)
    if m.observed is None:
        return Check(**common, outcome="inconclusive", threshold=rule.threshold, detail=m.detail or "no data")
    limit = limit_for(rule, m.floor)
    observed = math.inf if math.isnan(m.observed) else m.observed
    breached = COMPARISONS[rule.compare].breached(observed, limit, m.p_value, 1 - confidence)
    outcome: Outcome = rule.on_breach if breached else "pass"
    if rule.compare == "beyond_uncertainty":
        lower = m.confidence_interval[0] if m.confidence_interval else None
        if observed <= rule.threshold:
            outcome = "pass"
        elif lower is not None and lower > limit:
            outcome = rule.on_breach
        else:
            outcome = "inconclusive"
        floor = m.floor if m.floor is not None else math.nan
        why = (
            f"allowed {_number(rule.threshold, rule.unit)}; counts only when every trial is beyond "
            f"{_number(limit, rule.unit)} (the source's own spread {_number(floor, rule.unit)})"
        )
        if outcome == "inconclusive":
            why += "; within the noise: inconclusive, the operator decides"
    elif rule.compare == "within_floor":
        floor = m.floor or 0.0
        floor_part = f"floor {_number(floor, rule.unit)} x {1 + rule.floor_margin:g}"
        why = (
            f"{_number(m.observed, rule.unit)} vs allowed {_number(limit, rule.unit)} "
            f"({floor_part}, at least {_number(rule.threshold, rule.unit)})"
        )
    elif rule.compare == "significant_increase":
        p = "" if m.p_value is None else f", p={m.p_value:.2g}"
        why = f"allowed +{rule.threshold:g}{rule.unit}; more counts only if significant at {confidence:.0%}{p}"
    else:
        sign = "<=" if rule.compare == "at_most" else ">="
        why = f"{_number(m.observed, rule.unit)}, needs {sign} {_number(limit, rule.unit)}"
    detail = f"{m.detail} ({why})" if m.detail else why
    return Check(**common, outcome=outcome, threshold=round(limit, 12), detail=detail)


def judge(
    subject: str, measurements: Sequence[Measurement], rules: Sequence[AnalysisRule], confidence: float = 0.98
) -> Verdict:
    """The one judge: each measurement by the first rule matching its name; the worst acting check decides."""
    return verdict(subject, [judge_measurement(m, rule_for(m.metric, rules), confidence) for m in measurements])


def relative_change_pct(source: float, target: float) -> float:
    if source == 0:
        return 0.0 if target == 0 else math.inf
    return (target - source) / abs(source) * 100
