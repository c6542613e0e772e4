"""POC judging of the micro-suite: every figure side by side, against the plan's tolerances and the device's ceiling.

Domain code measures and `activities.analysis.judge` decides, by rules built from the plan's tolerances
(`bench_rules`). A target is judged on three things. Against the source: each throughput may not fall below
`min_throughput_ratio` of the source's, each latency may not rise more than `latency_increase_pct`.
Against itself: where the datasheet is known, a figure far below its own ceiling is flagged even
when it beats the source (an A100 at a third of its peak is sick, not fast). And against what the
guides warn about: the compatibility matrix of both fingerprints, throttling and memory errors seen
by NVML, and NVLink islands. Rows keep both sides' medians and spreads so the verdict explains itself.
"""

from __future__ import annotations

import math
import statistics

from pydantic import BaseModel, Field
from temporalio import activity

from activities.analysis import AnalysisRule, Check, Verdict, judge, verdict
from activities.analysis import Measurement as AnalysisMeasurement
from activities.microsuite.ceilings import CeilingFigure, ceiling_of
from activities.microsuite.compat import compatibility_matrix
from activities.microsuite.models import (
    MIN_CEILING_MATRIX_SIZE,
    BenchResult,
    CompatibilityMatrix,
    Measurement,
    Stat,
    SuiteResult,
)
from activities.microsuite.poc import CompareBenchInput, PocComparison, judge_benchmarks


class BenchTolerances(BaseModel):
    min_throughput_ratio: float = Field(0.8, gt=0, description="Each target throughput >= this x the source's")
    latency_increase_pct: float = Field(15.0, ge=0, description="Each target latency percentile <= source + this %")
    min_ceiling_fraction: float = Field(
        0.5, gt=0, le=1, description="A target figure below this share of its datasheet peak is flagged"
    )
    max_sustained_drop_pct: float = Field(10.0, ge=0, description="Burst-to-sustained throughput drop allowed")


class JudgeBenchInput(BaseModel):
    source: list[BenchResult]
    target: list[BenchResult]
    tolerances: BenchTolerances = Field(default_factory=BenchTolerances)
    source_name: str = "source"
    target_name: str = "target"
    source_price_per_hour: float | None = Field(None, description="With both prices, cost per unit is judged too")
    target_price_per_hour: float | None = None
    max_cost_ratio: float = 1.0


class FigureRow(BaseModel):
    """One figure on both sides."""

    name: str
    unit: str
    higher_is_better: bool
    source: Stat | None = None
    target: Stat | None = None
    ratio: float | None = Field(None, description="target / source medians")
    source_ceiling: CeilingFigure | None = None
    target_ceiling: CeilingFigure | None = None
    outcome: str = Field("info", description="The worst outcome of this figure's checks; 'info' when none judged it")
    detail: str = ""
    checks: list[AnalysisMeasurement] = Field(default_factory=list, exclude=True)


class PocJudgement(BaseModel):
    verdict: Verdict
    figures: list[FigureRow]
    compatibility: CompatibilityMatrix | None = None
    comparison: PocComparison | None = Field(
        None, description="Throughput and cost per unit (activities.windows), its verdict replaced by the whole one"
    )


def _merged(results: list[BenchResult]) -> dict[str, Measurement]:
    """Per figure, across repeated runs of one side: median of medians, overall min and max."""
    by_name: dict[str, list[Measurement]] = {}
    for result in results:
        for m in result.suite.measurements if result.suite else []:
            by_name.setdefault(m.name, []).append(m)
    merged = {}
    for name, runs in by_name.items():
        first = runs[0]
        merged[name] = first.model_copy(update={
            "median": statistics.median(m.median for m in runs),
            "min": min(m.min for m in runs),
            "max": max(m.max for m in runs),
            "values": [v for m in runs for v in m.values],
            "telemetry": [t for m in runs for t in m.telemetry],
        })  # fmt: skip
    return merged


def _suite(results: list[BenchResult]) -> SuiteResult | None:
    return next((r.suite for r in reversed(results) if r.suite), None)


def _stat(m: Measurement | None) -> Stat | None:
    return Stat(min=m.min, median=m.median, max=m.max) if m else None


def _ceiling(device_name: str | None, m: Measurement | None) -> CeilingFigure | None:
    if m is None or device_name is None:
        return None
    if m.kind in ("matmul", "sustained") and int(m.params.get("size", 0)) < MIN_CEILING_MATRIX_SIZE:
        return None  # too small to fill a datacenter GPU: a low fraction would say nothing about the device
    return ceiling_of(device_name, m)


def bench_rules(tol: BenchTolerances) -> list[AnalysisRule]:
    """The POC's analysis template for the suite: what every measurement is held to, as data."""
    return [
        AnalysisRule(metric="throughput:*", compare="at_least", threshold=tol.min_throughput_ratio, unit="x"),
        AnalysisRule(metric="latency:*", compare="at_most", threshold=tol.latency_increase_pct, unit="%"),
        AnalysisRule(metric="ceiling:*", compare="at_least", threshold=round(tol.min_ceiling_fraction * 100, 6),
                     unit="% of peak"),
        AnalysisRule(metric="sustained_drop", compare="at_most", threshold=tol.max_sustained_drop_pct, unit="%"),
        AnalysisRule(metric="gpu_health.*", compare="at_most", threshold=0),
        AnalysisRule(metric="allreduce_wrong_sums", compare="at_most", threshold=0),
        AnalysisRule(metric="nvlink_islands_added", compare="at_most", threshold=0),
        AnalysisRule(metric="sides_with_suite", compare="at_least", threshold=2, on_breach="inconclusive"),
    ]  # fmt: skip


def _spread(m: Measurement) -> str:
    return f"{m.median:.4g} [{m.min:.4g}-{m.max:.4g}]"


def _side_by_side(name: str, s: Measurement, t: Measurement) -> AnalysisMeasurement:
    """Medians compared; when the two sides' trial spreads overlap, the difference is within run-to-run noise,
    so the closest trials are compared instead (a regression must show beyond the spread to count)."""
    both = f"target {_spread(t)} vs source {_spread(s)} {t.unit}"
    overlap = t.min <= s.max and s.min <= t.max
    noise = "; the spreads overlap, so judged on the closest trials" if overlap else ""
    if t.higher_is_better:
        ratio = t.median / s.median if s.median else math.inf
        judged = max(ratio, t.max / s.min if s.min else math.inf) if overlap else ratio
        detail = f"target at {ratio:.2f}x the source: {both}{noise}"
        return AnalysisMeasurement(metric=f"throughput:{name}", observed=round(judged, 4), source=s.median,
                                   target=t.median, detail=detail)  # fmt: skip
    change = (t.median - s.median) / s.median * 100 if s.median else math.inf
    judged = min(change, (t.min - s.max) / s.max * 100 if s.max else math.inf) if overlap else change
    return AnalysisMeasurement(metric=f"latency:{name}", observed=round(judged, 3), source=s.median, target=t.median,
                               detail=f"target {change:+.1f}% vs the source: {both}{noise}")  # fmt: skip


def _against_ceiling(name: str, c: CeilingFigure, beats_source: bool) -> AnalysisMeasurement:
    detail = f"{c.model} peak {c.ceiling:g} {c.unit} ({c.basis}; {c.source}, as of {c.as_of})"
    if beats_source:
        detail += "; judged even though the target beats the source"
    return AnalysisMeasurement(metric=f"ceiling:{name}", observed=round(c.fraction * 100, 2),
                               target=round(c.fraction * c.ceiling, 6), detail=detail)  # fmt: skip


def _health(suite: SuiteResult, figures: dict[str, Measurement]) -> list[AnalysisMeasurement]:
    measured = []
    if suite.sustained:
        s = suite.sustained
        runs = [t for m in figures.values() if m.kind == "sustained" for t in m.telemetry]
        seen = {reason for t in runs for reason in t.clock_event_reasons}
        reasons = sorted(seen - {"gpu_idle", "applications_clocks_setting"})
        measured.append(AnalysisMeasurement(
            metric="sustained_drop", observed=s.drop_pct, source=s.burst, target=s.sustained,
            detail=f"target {s.dtype} {s.matrix_size}: burst {s.burst:.4g} -> sustained {s.sustained:.4g} TFLOP/s "
            f"over {s.seconds:g} s" + (f"; clock events seen: {', '.join(reasons)}" if reasons else ""),
        ))  # fmt: skip
    # The whole run's summaries see counters that rose between tests; per-test ones are what older results have.
    summaries = suite.telemetry or [t for m in figures.values() for t in m.telemetry]
    if summaries:
        errors = sum(t.ecc_uncorrected_delta or 0 for t in summaries)
        remap = sorted({t.gpu for t in summaries if t.remapping_failed or t.remapping_pending})
        remap = sorted({*remap, *(t.gpu for t in summaries if t.retired_pages_pending)})
        measured += [
            AnalysisMeasurement(metric="gpu_health.ecc_uncorrected", observed=errors,
                                detail="uncorrected ECC errors on the target during the run"),
            AnalysisMeasurement(metric="gpu_health.row_remap_gpus", observed=len(remap),
                                detail="target GPUs with a pending or failed row remap or page retirement"
                                + (f": {remap}" if remap else "")),
        ]  # fmt: skip
    if suite.allreduce:
        wrong = sum(not p.correct for p in suite.allreduce.points)
        detail = "all-reduces of known values that returned a wrong sum"
        measured.append(AnalysisMeasurement(metric="allreduce_wrong_sums", observed=wrong, detail=detail))
    return measured


def judge_bench(request: JudgeBenchInput) -> PocJudgement:
    tol = request.tolerances
    source, target = _merged(request.source), _merged(request.target)
    source_suite, target_suite = _suite(request.source), _suite(request.target)
    source_device = source_suite.device_name if source_suite else None
    target_device = target_suite.device_name if target_suite else None
    extra: list[Check] = []
    comparison = None
    if request.source_price_per_hour is not None and request.target_price_per_hour is not None:
        comparison = judge_benchmarks(CompareBenchInput(
            source=request.source, target=request.target, source_price_per_hour=request.source_price_per_hour,
            target_price_per_hour=request.target_price_per_hour, min_throughput_ratio=tol.min_throughput_ratio,
            max_cost_ratio=request.max_cost_ratio,
        ))  # fmt: skip
        extra += comparison.verdict.checks

    measured: list[AnalysisMeasurement] = []
    rows: list[FigureRow] = []
    for name in [*target, *(n for n in source if n not in target)]:
        s, t = source.get(name), target.get(name)
        m = t or s
        assert m is not None
        row = FigureRow(name=name, unit=m.unit, higher_is_better=m.higher_is_better, source=_stat(s), target=_stat(t),
                        ratio=round(t.median / s.median, 4) if s and t and s.median else None,
                        source_ceiling=_ceiling(source_device, s), target_ceiling=_ceiling(target_device, t),
                        detail="" if s and t else f"measured on the {'target' if t else 'source'} only")  # fmt: skip
        if s and t and not (comparison and name == "train_mlp"):  # validate's throughput check judged that one
            row.checks.append(_side_by_side(name, s, t))
        if row.target_ceiling and t:
            beats = bool(s and (t.median >= s.median if t.higher_is_better else t.median <= s.median))
            row.checks.append(_against_ceiling(name, row.target_ceiling, beats))
        measured += row.checks
        rows.append(row)
    if target_suite:
        measured += _health(target_suite, target)
    if source_suite and target_suite and source_suite.topology and target_suite.topology:
        s_top, t_top = source_suite.topology, target_suite.topology
        measured.append(AnalysisMeasurement(
            metric="nvlink_islands_added", observed=max(0, len(t_top.islands) - len(s_top.islands)),
            source=len(s_top.islands), target=len(t_top.islands),
            detail=f"source: {s_top.detail}; target: {t_top.detail}",
        ))  # fmt: skip
    measured.append(AnalysisMeasurement(metric="sides_with_suite", observed=int(bool(source)) + int(bool(target)),
                                        detail="sides with suite figures (results recorded before the suite have "
                                        "only the headline throughput)"))  # fmt: skip

    matrix = None
    source_fp = next((r.fingerprint for r in reversed(request.source) if r.fingerprint), None)
    target_fp = next((r.fingerprint for r in reversed(request.target) if r.fingerprint), None)
    if source_fp and target_fp:
        matrix = compatibility_matrix(source_fp, target_fp, request.source_name, request.target_name)
        # Categorical findings: a fail stops the workload as it is; a warning passes but is named in the summary.
        extra += [
            Check(metric=f"compat:{r.item}", outcome="fail" if r.status == "fail" else "pass",
                  detail=r.detail if r.status == "fail" else f"warning: {r.detail}")
            for r in matrix.flagged
        ]  # fmt: skip

    judged = judge("poc", measured, bench_rules(tol))
    by_metric = {c.metric: c for c in judged.checks}
    for row in rows:
        own = [by_metric[m.metric] for m in row.checks]
        if own:
            row.outcome = max((c.outcome for c in own), key=["pass", "inconclusive", "error", "fail"].index)
            row.detail = "; ".join(c.detail for c in own)
    result = verdict("poc", [*extra, *judged.checks])
    warnings = [c.detail.removeprefix("warning: ") for c in result.checks if c.detail.startswith("warning: ")]
    if warnings:
        result = result.model_copy(update={"summary": f"{result.summary}; warnings: {'; '.join(warnings)}"})
    if comparison:
        comparison = comparison.model_copy(update={"verdict": result})
    return PocJudgement(verdict=result, figures=rows, compatibility=matrix, comparison=comparison)


@activity.defn(name="judge_bench")
def judge_bench_activity(request: JudgeBenchInput) -> PocJudgement:
    return judge_bench(request)
