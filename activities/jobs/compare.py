"""The parallel run's comparison: target vs source, against the floor of source vs source again.

GPUs are not bit-deterministic, so "different" alone means nothing: like Diffy, every difference
between the target and the source is held against the difference between two runs of the source
(the noise floor), per metric series, per output tensor and for throughput. What is measured here
is judged by the one judge (`activities.analysis.judge`) under rules that are data
(`JobTolerances.rules` first, then `default_rules`).
"""

from __future__ import annotations

import io
import math
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio import activity

from activities.analysis import AnalysisRule, Check, Measurement, Verdict, judge, limit_for, rule_for, verdict
from activities.jobs.files import download_artifact, read_artifact
from activities.jobs.run import JobResult
from activities.jobs.series import Record, load_series
from activities.trials import slowdown_measurement
from skyshift.spec.jobs import JobTolerances

ARMS = ("source", "source_repeat", "target")
_SEVERITY = {"pass": 0, "inconclusive": 1, "error": 2, "fail": 3}


class CompareJobArmsInput(BaseModel):
    job: str
    source: JobResult
    source_repeat: JobResult
    target: JobResult
    tolerances: JobTolerances = Field(default_factory=JobTolerances)
    source_trials: list[JobResult] = Field(
        default_factory=list, description="Further source runs, interleaved in time with target_trials: throughput only"
    )
    target_trials: list[JobResult] = Field(default_factory=list, description="Further target runs: throughput only")


class ArmRow(BaseModel):
    arm: str
    environment: str
    status: str
    detail: str
    steps: int
    last_loss: float | None = None
    steady_per_s: float | None = None
    unit: str = "samples"
    device: str = "cpu"
    code_root: str = ""


class MetricRow(BaseModel):
    metric: str
    steps: int = Field(description="Steps all three arms logged")
    divergence: float | None = Field(None, description="Largest relative target-vs-source difference (None: inf)")
    divergence_step: int | None = None
    floor: float | None = Field(None, description="Largest relative source-vs-source difference")
    limit: float | None = None
    first_diverging_step: int | None = Field(None, description="First step where the target went beyond the limit")
    outcome: str = "pass"


class ThroughputRow(BaseModel):
    unit: str
    source: float | None
    source_repeat: float | None
    target: float | None
    slowdown: float | None = Field(None, description="(source - target) / source")
    spread: float | None = Field(None, description="The source trials' range / their median (its own noise)")
    limit: float | None = None
    outcome: str = "pass"
    source_trials: list[float] = Field(default_factory=list, description="Every source trial's steady rate, in order")
    target_trials: list[float] = Field(default_factory=list, description="Every target trial's steady rate, in order")


class TensorRow(BaseModel):
    name: str
    status: str = Field(description="compare_tensors' status, target vs source")
    max_abs: float | None = None
    max_rel: float | None = None
    floor_max_abs: float | None = Field(None, description="The same, source vs source again")
    floor_status: str = ""
    limit: float | None = None
    outcome: str = "pass"


class JobComparison(BaseModel):
    """The verdict and the compact table the state and the report show."""

    job: str
    verdict: Verdict
    first_diverging_step: int | None = None
    top_tensors: list[str] = Field(default_factory=list, description="Tensors beyond the limit, worst first")
    arms: list[ArmRow] = Field(default_factory=list)
    metrics: list[MetricRow] = Field(default_factory=list)
    throughput: ThroughputRow | None = None
    tensors: list[TensorRow] = Field(default_factory=list, description="The top rows, worst first")
    tensor_counts: dict[str, int] = Field(default_factory=dict, description="Tensors per status, target vs source")


def default_rules(tolerances: JobTolerances) -> list[AnalysisRule]:
    """The parallel run's analysis template, after the plan's own `rules`."""
    t = tolerances
    return [
        AnalysisRule(metric="arm:*", compare="at_most", threshold=0),
        AnalysisRule(metric="code", compare="at_most", threshold=0),
        AnalysisRule(metric="missing_steps", compare="at_most", threshold=0, unit=" steps"),
        AnalysisRule(metric="missing:*", compare="at_most", threshold=0),
        AnalysisRule(metric="bytes:*", compare="at_most", threshold=0, dry_run=True),
        AnalysisRule(metric="throughput", compare="beyond_uncertainty", threshold=t.throughput_tolerance),
        AnalysisRule(
            metric="tensor:*", compare="within_floor", threshold=1.0, floor_margin=t.floor_margin, unit=" tol"
        ),
        AnalysisRule(metric="*", compare="within_floor", threshold=t.metric_tolerance, floor_margin=t.floor_margin),
    ]


def relative_divergence(source: float, other: float) -> float:
    """|other - source| relative to the source's magnitude; NaN on one side only is infinitely far."""
    if math.isnan(source) or math.isnan(other):
        return 0.0 if math.isnan(source) and math.isnan(other) else math.inf
    if source == other:
        return 0.0
    return abs(other - source) / max(abs(source), 1e-12)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _series(records: list[Record]) -> dict[int, Record]:
    return {int(r["step"]): r for r in records}


def _metric_names(records: list[Record], ignore: Sequence[str]) -> list[str]:
    import fnmatch

    names = dict.fromkeys(k for r in records for k in r if k != "step")
    return [n for n in names if not any(fnmatch.fnmatchcase(n, pattern) for pattern in ignore)]


def measure_series(
    source: list[Record], repeat: list[Record], target: list[Record], tolerances: JobTolerances, rules
) -> tuple[list[Measurement], list[MetricRow]]:
    s, r, t = _series(source), _series(repeat), _series(target)
    missing = sorted(set(s) - set(t))
    measurements = [
        Measurement(
            metric="missing_steps", observed=len(missing), source=len(s), target=len(t),
            floor=len(set(s) - set(r)),
            detail=f"target logged {len(t)} steps, source {len(s)}"
            + (f"; first missing: step {missing[0]}" if missing else ""),
        )
    ]  # fmt: skip
    steps = sorted(set(s) & set(r) & set(t))
    rows = []
    for name in _metric_names(source, tolerances.ignore_metrics):
        pairs = [(step, s[step].get(name), r[step].get(name), t[step].get(name)) for step in steps]
        pairs = [p for p in pairs if p[1] is not None]
        if not pairs:
            continue
        if any(p[3] is None for p in pairs):
            gap = next(p[0] for p in pairs if p[3] is None)
            measurements.append(Measurement(metric=name, observed=math.inf, step=gap,
                                            detail=f"the target did not log {name} at step {gap}"))  # fmt: skip
            rows.append(MetricRow(metric=name, steps=len(pairs), first_diverging_step=gap, outcome="fail"))
            continue
        target_div = [(relative_divergence(sv, tv), step) for step, sv, _, tv in pairs]
        floor_div = [(relative_divergence(sv, rv), step) for step, sv, rv, _ in pairs if rv is not None]
        worst, worst_step = max(target_div)
        floor, floor_step = max(floor_div, default=(0.0, None))
        rule = rule_for(name, rules)
        limit = limit_for(rule, floor) if rule else math.inf
        first = next((step for div, step in target_div if div > limit), None)
        _, last_source, _, last_target = pairs[-1]
        where = f"; first beyond the limit at step {first}" if first is not None else ""
        measurements.append(
            Measurement(
                metric=name, observed=worst, source=last_source, target=last_target, floor=floor, step=first,
                detail=f"largest relative difference {worst:.3g} at step {worst_step} over {len(pairs)} steps, source "
                f"vs source again {floor:.3g}" + (f" at step {floor_step}" if floor_step is not None else "") + where,
            )
        )  # fmt: skip
        rows.append(
            MetricRow(
                metric=name, steps=len(pairs), divergence=_finite(worst), divergence_step=worst_step,
                floor=_finite(floor), limit=_finite(limit), first_diverging_step=first,
            )
        )  # fmt: skip
    return measurements, rows


def measure_throughput(
    arms: dict[str, JobResult], source_trials: Sequence[JobResult] = (), target_trials: Sequence[JobResult] = ()
) -> tuple[Measurement, ThroughputRow]:
    """Every trial's steady rate per side (the arms first, then further interleaved trials), judged as trials:
    a slower target counts only beyond the tolerance, the source's own spread and the trials' overlap."""
    unit = arms["source"].timing.unit
    sources = [arms["source"], arms["source_repeat"], *source_trials]
    targets = [arms["target"], *target_trials]
    s_rates = [r.timing.steady_per_s for r in sources]
    t_rates = [r.timing.steady_per_s for r in targets]
    units = {r.timing.unit for r in [*sources, *targets]}
    if any(not rate for rate in [*s_rates, *t_rates]) or len(units) > 1:
        detail = "too few steps (or different units) to measure steady-state throughput on every trial"
        row = ThroughputRow(unit=unit, source=s_rates[0], source_repeat=s_rates[1], target=t_rates[0],
                            outcome="inconclusive")  # fmt: skip
        return Measurement(metric="throughput", detail=detail), row
    source_values = [float(r) for r in s_rates if r]
    target_values = [float(r) for r in t_rates if r]
    measurement = slowdown_measurement("throughput", source_values, target_values, f"{unit}/s")
    measurement.detail = "steady state: " + measurement.detail
    return measurement, ThroughputRow(
        unit=unit, source=statistics.median(source_values), source_repeat=source_values[1],
        target=statistics.median(target_values), slowdown=measurement.observed, spread=measurement.floor,
        source_trials=source_values, target_trials=target_values,
    )  # fmt: skip


def measure_outputs(
    arms: dict[str, JobResult], tolerances: JobTolerances, rules
) -> tuple[list[Measurement], list[TensorRow]]:
    """Every output file of the source: checkpoints tensor by tensor, other files by their bytes."""
    from activities.checkpoints.compare import load_tensors
    from activities.checkpoints.errors import CheckpointError

    refs = {name: {o.path: o.ref for o in arm.outputs} for name, arm in arms.items()}
    measurements: list[Measurement] = []
    rows: list[TensorRow] = []
    several = len(refs["source"]) > 1
    with tempfile.TemporaryDirectory(prefix="skyshift-compare-") as scratch:
        for path, source_ref in refs["source"].items():
            absent = [arm for arm in ("source_repeat", "target") if path not in refs[arm]]
            if absent:
                missing = f"{' and '.join(absent)} did not write {path}"
                measurements.append(Measurement(metric=f"missing:{path}", observed=1, detail=missing))
                continue
            local = {arm: download_artifact(refs[arm][path], Path(scratch) / arm / path) for arm in ARMS}
            try:
                tensors = {arm: load_tensors(local[arm]) for arm in ARMS}
            except CheckpointError:
                same = source_ref.blake3 == refs["target"][path].blake3
                state = "identical" if same else "differ"
                measurements.append(Measurement(metric=f"bytes:{path}", observed=0 if same else 1,
                                                detail=f"{path} is not a checkpoint; its bytes {state}"))  # fmt: skip
                continue
            prefix = f"tensor:{path}:" if several else "tensor:"
            found, found_rows = _tensor_measurements(prefix, tensors, tolerances, rules)
            measurements += found
            rows += found_rows
    return measurements, rows


def _tensor_measurements(
    prefix: str, tensors: dict[str, dict], tolerances: JobTolerances, rules
) -> tuple[list[Measurement], list[TensorRow]]:
    """Target vs source with compare_tensors, the source-vs-source floor beside each tensor.

    Differences are measured in tolerances (atol + rtol x the tensor's largest magnitude), so one
    rule (`tensor:*`) fits tensors of every scale; the table keeps the raw numbers.
    """
    from activities.checkpoints.compare import compare_tensors

    source, rtol, atol = tensors["source"], tolerances.rtol, tolerances.atol
    # The source is the reference (b): relative differences are relative to its values.
    against = compare_tensors(tensors["target"], source, rtol=rtol, atol=atol)
    floors = {d.name: d for d in compare_tensors(tensors["source_repeat"], source, rtol=rtol, atol=atol).tensors}
    measurements, rows = [], []
    for diff in against.tensors:
        name, base = prefix + diff.name, floors.get(diff.name)
        floor_abs = base.max_abs if base is not None else None
        # compare_tensors loosens the tolerance of a tensor whose dtype changed; use what it used.
        unit = (atol if diff.atol is None else diff.atol) + (rtol if diff.rtol is None else diff.rtol) * _scale(
            source.get(diff.name)
        )
        floor = 0.0 if floor_abs is None else _units(floor_abs, unit)  # no floor where the source runs disagree
        rule = rule_for(name, rules)
        limit = limit_for(rule, floor) * unit if rule else math.inf
        status = _status(diff.status)
        measurements.append(
            Measurement(
                metric=name, observed=_units(diff.max_abs, unit), floor=floor,
                detail=f"{status}: max |diff| {_fmt(diff.max_abs)}, max rel {_fmt(diff.max_rel)}; source vs "
                f"source again {_fmt(floor_abs)}; tolerance {unit:.3g}",
            )
        )  # fmt: skip
        rows.append(
            TensorRow(
                name=name.removeprefix("tensor:"), status=status, max_abs=_finite(diff.max_abs),
                max_rel=_finite(diff.max_rel), floor_max_abs=_finite(floor_abs), limit=_finite(limit),
                floor_status=_status(base.status) if base is not None else "only_in_source",
            )
        )  # fmt: skip
    return measurements, rows


def _scale(tensor) -> float:
    if tensor is None or tensor.numel() == 0 or not tensor.is_floating_point():
        return 0.0
    return float(tensor.detach().abs().max())


def _status(status: str) -> str:
    """compare_tensors' statuses with its sides named: a is the target (or source again), b the source."""
    return {"only_in_a": "only_in_target", "only_in_b": "only_in_source"}.get(status, status)


def _units(value: float | None, unit: float) -> float:
    if value is None or math.isnan(value):
        return math.inf
    if unit <= 0:
        return 0.0 if value == 0 else math.inf
    return value / unit


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def arm_measurement(name: str, arm: JobResult) -> Measurement:
    detail = f"{name.replace('_', ' ')} on {arm.environment}: {arm.status}, {arm.detail}"
    if arm.stderr_tail:
        detail += "; stderr: " + " | ".join(arm.stderr_tail[-5:])
    return Measurement(metric=f"arm:{name}", observed=0 if arm.ok else 1, detail=detail)


def arm_rows(arms: dict[str, JobResult]) -> list[ArmRow]:
    """One table row per arm, as `status`, the demo and the report show them."""
    return [
        ArmRow(
            arm=name, environment=arm.environment, status=arm.status, detail=arm.detail, steps=arm.steps_logged,
            last_loss=_finite(arm.last_loss), steady_per_s=arm.timing.steady_per_s, unit=arm.timing.unit,
            device=arm.device, code_root=arm.code_root[:16],
        )
        for name, arm in arms.items()
    ]  # fmt: skip


def compare_arms(request: CompareJobArmsInput) -> JobComparison:
    tolerances = request.tolerances
    rules = [*tolerances.rules, *default_rules(tolerances)]
    arms = {"source": request.source, "source_repeat": request.source_repeat, "target": request.target}
    table = arm_rows(arms)
    measurements = [arm_measurement(name, arm) for name, arm in arms.items()]
    roots = {arm.code_root for arm in arms.values()}
    measurements.append(
        Measurement(metric="code", observed=len(roots) - 1,
                    detail="all arms ran byte-identical code" if len(roots) == 1
                    else "arms ran different code: " + ", ".join(f"{n} {a.code_root[:12]}" for n, a in arms.items()))
    )  # fmt: skip
    comparison = JobComparison(job=request.job, verdict=Verdict(subject="", outcome="pass", checks=[], summary=""))
    comparison.arms = table
    if all(arm.ok for arm in arms.values()):
        series = {name: load_series(read_artifact(arm.metrics)) if arm.metrics else [] for name, arm in arms.items()}
        metric_measurements, comparison.metrics = measure_series(
            series["source"], series["source_repeat"], series["target"], tolerances, rules
        )
        throughput, comparison.throughput = measure_throughput(arms, request.source_trials, request.target_trials)
        tensor_measurements, tensor_rows = measure_outputs(arms, tolerances, rules)
        measurements += [*metric_measurements, throughput, *tensor_measurements]
    else:
        tensor_rows = []
    judged = judge(f"parallel_run:{request.job}", measurements, rules)
    return summarize(comparison, judged, tensor_rows, tolerances.top_tensors)


def summarize(comparison: JobComparison, judged: Verdict, tensor_rows: list[TensorRow], top: int) -> JobComparison:
    """Keep the verdict small: every non-tensor check, the worst tensors, and one check for all tensors."""
    outcomes = {c.metric: c for c in judged.checks}
    for row in comparison.metrics:
        if row.metric in outcomes:
            row.outcome = outcomes[row.metric].outcome
    if comparison.throughput is not None and "throughput" in outcomes:
        comparison.throughput.outcome = outcomes["throughput"].outcome
        comparison.throughput.limit = outcomes["throughput"].threshold
    tensor_checks = [c for c in judged.checks if c.metric.startswith("tensor:")]
    for row in tensor_rows:
        row.outcome = outcomes[f"tensor:{row.name}"].outcome

    def badness(check: Check) -> float:
        observed, limit = check.observed, check.threshold or 0.0
        if observed is None or math.isinf(observed):
            return math.inf
        return observed / limit if limit > 0 else (math.inf if observed > 0 else 0.0)

    ranked = sorted(tensor_checks, key=lambda c: (-_SEVERITY[c.outcome] if not c.dry_run else 0, -badness(c)))
    beyond = [c for c in ranked if c.outcome == "fail"]
    comparison.top_tensors = [c.metric.removeprefix("tensor:") for c in beyond[:top]]
    rank = {c.metric.removeprefix("tensor:"): i for i, c in enumerate(ranked)}
    comparison.tensors = sorted(tensor_rows, key=lambda r: rank[r.name])[:top]
    counts: dict[str, int] = {}
    for row in tensor_rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    counts["beyond_floor"] = len(beyond)
    comparison.tensor_counts = counts
    checks = [c for c in judged.checks if not c.metric.startswith("tensor:")] + ranked[:top]
    if tensor_checks:
        worst = max((c.outcome for c in tensor_checks if not c.dry_run), key=_SEVERITY.__getitem__, default="pass")
        named = f"; beyond the floor: {', '.join(comparison.top_tensors)}" if beyond else ""
        checks.append(
            Check(
                metric="tensors", outcome=worst, observed=len(beyond), threshold=0,
                detail=f"{len(tensor_checks)} tensors: "
                + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if k != "beyond_floor")
                + f"; {len(beyond)} beyond tolerance and floor" + named,
            )
        )  # fmt: skip
    diverging = [c.step for c in judged.checks if c.step is not None and c.outcome == "fail"]
    comparison.first_diverging_step = min(diverging, default=None)
    result = verdict(judged.subject, checks)
    if result.outcome == "fail":
        lead = []
        if comparison.first_diverging_step is not None:
            first = [
                c.metric for c in judged.checks if c.step == comparison.first_diverging_step and c.outcome == "fail"
            ]
            lead.append(f"first diverging step {comparison.first_diverging_step} ({', '.join(first)})")
        if comparison.top_tensors:
            lead.append(f"top differing tensors: {', '.join(comparison.top_tensors)}")
        if lead:
            result.summary = "; ".join(lead) + " | " + result.summary
    comparison.verdict = result
    return comparison


def comparison_text(comparison: JobComparison, width: int = 132) -> str:
    """The comparison as plain-text tables (rich), for reports, notes and the demo's output."""
    from rich.console import Console
    from rich.table import Table

    def num(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    arms = Table("arm", "environment", "status", "steps", "last loss", "steady /s", "device", "code root",
                 title=f"job {comparison.job}: arms")  # fmt: skip
    for a in comparison.arms:
        arms.add_row(a.arm, a.environment, a.status, str(a.steps), num(a.last_loss, 7), num(a.steady_per_s, 4),
                     a.device, a.code_root[:12])  # fmt: skip
    metrics = Table("metric", "steps", "target vs source", "at step", "floor (source vs again)", "limit",
                    "first diverging step", "outcome", title="metric series (relative divergence)")  # fmt: skip
    for m in comparison.metrics:
        metrics.add_row(m.metric, str(m.steps), num(m.divergence), str(m.divergence_step), num(m.floor), num(m.limit),
                        "-" if m.first_diverging_step is None else str(m.first_diverging_step), m.outcome)  # fmt: skip
    counts = ", ".join(f"{n} {status}" for status, n in sorted(comparison.tensor_counts.items()))
    tensors = Table("tensor", "status", "max |diff|", "max rel", "floor max |diff|", "floor status", "limit",
                    "outcome", title=f"final checkpoint, worst first ({counts})")  # fmt: skip
    for t in comparison.tensors:
        tensors.add_row(t.name, t.status, num(t.max_abs), num(t.max_rel), num(t.floor_max_abs), t.floor_status,
                        num(t.limit), t.outcome)  # fmt: skip
    console = Console(width=width, record=True, file=io.StringIO())
    for table in (arms, metrics, tensors):
        console.print(table)
    if (tp := comparison.throughput) is not None:
        console.print(
            f"throughput ({tp.unit}/s): source {num(tp.source, 4)}, source again {num(tp.source_repeat, 4)}, "
            f"target {num(tp.target, 4)}; slowdown {num(tp.slowdown)} vs limit {num(tp.limit)}: {tp.outcome}"
        )
    console.print(f"verdict: {comparison.verdict.outcome.upper()}: {comparison.verdict.summary}")
    return console.export_text()


@activity.defn
def compare_job_arms(request: CompareJobArmsInput) -> JobComparison:
    """Control worker: read the three arms by reference and judge the target against the noise floor."""
    return compare_arms(request)
