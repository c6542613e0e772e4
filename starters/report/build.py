"""From a migration's record to the report: executive numbers, risk register, verdict table, series.

Each part is a function of what was recorded (`Recorded` from the history, `MigrationState`), so the
same inputs always give the same report. The tables of what is read are data at the top of each part
(VERDICT_ACTIVITIES, RISKS): a new kind of verdict or risk is a row, not a new code path.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from activities.metrics import EndpointSnapshot
from activities.windows import histogram_delta, quantile
from skyshift.spec.endpoints import PrometheusProvider
from starters.report.effective import effective_both
from starters.report.history import Recorded
from starters.report.model import (
    CheckRow,
    Convergence,
    Curve,
    Executive,
    Figure,
    LatencyWindow,
    Marker,
    Report,
    Risk,
    Savings,
    Series,
    SideEconomics,
    StateFigures,
    TimePoint,
    TrialPoint,
    VerdictRow,
)
from workflows.plan import Environment, MigrationPlan
from workflows.state import MigrationState

HOURS_PER_MONTH = 730  # 8,760 h / 12: how cloud price sheets annualise an hourly rate
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def price_per_hour(env: Environment) -> float:
    """The plan's hourly price of an environment: per GPU-hour x GPUs (per instance-hour without GPUs)."""
    return env.compute.price_per_gpu_hour * max(env.compute.gpu_count, 1)


def figure(values: list[float], unit: str, basis: str, median: float | None = None) -> Figure | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    middle = statistics.median(finite) if median is None else median
    # The state's own median is rounded; with one trial it can sit a rounding step outside the raw range.
    low, high = min(*finite, middle), max(*finite, middle)
    return Figure(median=middle, low=low, high=high, n=len(finite), unit=unit, basis=basis)


# -- economics ------------------------------------------------------------------------------------


def _job_bench(state: MigrationState):
    """The operator's job benchmarked on both sides (POC), when the plan has jobs."""
    return getattr(state.poc, "job_bench", None)


def _job_figure(summary, cost: float, unit: str, basis: str) -> Figure:
    """A job-bench cost with its spread: cost scales with 1 / throughput over the trials."""
    rate = summary.per_s
    low = cost * rate.median / rate.max if rate.median and rate.max else cost
    high = cost * rate.median / rate.min if rate.median and rate.min else cost
    return Figure(median=cost, low=low, high=high, n=summary.trials_ok, unit=unit, basis=basis)


def _job_basis(job: str, summary) -> str:
    rate = summary.per_s
    spread = f" (range {rate.min:,.4g} to {rate.max:,.4g})" if rate.min is not None else ""
    return (f"the operator's job '{job}' on {summary.environment}: {summary.trials_ok} trial(s) at "
            f"{rate.median:,.4g} {summary.unit}/s{spread}, ${summary.price_per_hour:,.2f}/h for "
            f"{summary.billed_units} billed unit(s)")  # fmt: skip


def per_1k_samples(state: MigrationState, side: str, price: float) -> Figure | None:
    """Cost per 1k training samples: the operator's job when it was benchmarked, else the POC micro-suite.

    Either way the median is the state's own figure; the range is the spread over trials.
    """
    job = _job_bench(state)
    summary = getattr(job, side, None) if job is not None else None
    if summary is not None and summary.cost_per_1k_samples_usd is not None and summary.per_s.median:
        return _job_figure(summary, summary.cost_per_1k_samples_usd, "USD per 1k samples", _job_basis(job.job, summary))
    comparison = state.poc.comparison
    results = state.poc.source_bench if side == "source" else state.poc.target_bench
    trials = [t.train_samples_per_s for r in results for t in r.trials]
    if comparison is None or not trials:
        return None
    per_million = (
        comparison.source_cost_per_million_samples if side == "source" else comparison.target_cost_per_million_samples
    )
    per_trial = [price / (rate * 3600) * 1000 if rate > 0 else math.inf for rate in trials]
    return figure(
        per_trial,
        "USD per 1k samples",
        f"POC benchmark: ${price:,.2f}/h over the median training throughput of {len(trials)} trial(s); "
        "range over trials",
        median=per_million / 1000,
    )


def per_epoch(recorded: Recorded, state: MigrationState, env: Environment, side: str, price: float) -> Figure | None:
    """Cost per epoch: the operator's job's (POC job bench), else one pass of the seeded parallel-run job."""
    job = _job_bench(state)
    summary = getattr(job, side, None) if job is not None else None
    if summary is not None and summary.cost_per_epoch_usd is not None and summary.per_s.median:
        epoch = f"{summary.samples_per_epoch:,.0f} samples" if summary.samples_per_epoch else "one epoch"
        hours = f", {summary.hours_per_epoch:.4g} h" if summary.hours_per_epoch is not None else ""
        egress = f", egress ${summary.egress_usd_per_epoch:,.4g}" if summary.egress_usd_per_epoch else ""
        basis = f"{_job_basis(job.job, summary)}; epoch = {epoch}{hours}{egress}"
        return _job_figure(summary, summary.cost_per_epoch_usd, "USD per epoch", basis)
    runs = [a.result for a in recorded.results("train_seeded") if a.result.get("environment") == env.name]
    if not runs:
        return None
    spec = recorded.plan.parallel_run
    return figure(
        [r["seconds"] / 3600 * price for r in runs],
        "USD per epoch",
        f"epoch = one parallel-run pass ({spec.steps} steps x {spec.batch_size} samples, seed {spec.seed}); "
        f"its measured wall time x ${price:,.2f}/h; {len(runs)} run(s)",
    )


def windows(recorded: Recorded) -> list[tuple[datetime, float, dict, dict]]:
    """Judged cutover windows: (when judged, window seconds, judge input, judge result), in order."""
    scrapes = [a.closed_at for a in recorded.results("scrape_endpoints")]
    out = []
    for judged in recorded.results("judge_window"):
        if _records_only(judged):
            continue
        before = [t for t in scrapes if t <= judged.scheduled_at]
        seconds = (before[-1] - before[-2]).total_seconds() if len(before) >= 2 else math.nan
        out.append((judged.closed_at, seconds, judged.input, judged.result))
    return out


def per_1k_inferences(recorded: Recorded, price: float) -> Figure | None:
    """What serving costs per 1k requests on a side if it carried the whole observed load."""
    values, rates = [], []
    for _, seconds, request, _ in windows(recorded):
        for previous, current in _endpoint_pairs(request):
            total = sum(
                getattr(current, side).requests - (getattr(previous, side).requests if previous else 0)
                for side in ("source", "target")
            )
            if total > 0 and seconds > 0 and current.source.ok and current.target.ok:
                values.append(price * seconds / 3600 / total * 1000)
                rates.append(total / seconds)
    if not values:
        return None
    return figure(
        values,
        "USD per 1k inferences",
        f"${price:,.2f}/h over the requests both sides served together in each judged window "
        f"({len(values)} windows, median {statistics.median(rates):,.0f} req/s): this side carrying the whole load",
    )


def _endpoint_pairs(request: dict) -> list[tuple[EndpointSnapshot | None, EndpointSnapshot]]:
    previous = {p["endpoint"]: EndpointSnapshot.model_validate(p) for p in request.get("previous", [])}
    return [(previous.get(c["endpoint"]), EndpointSnapshot.model_validate(c)) for c in request.get("current", [])]


def double_running_hours(recorded: Recorded, now: datetime) -> tuple[float, str]:
    """Hours both sides ran: parallel run and cutover (actual), or what the plan schedules if not there yet."""
    plan = recorded.plan
    both = ("parallel_run", "shadow", "cutover")
    start = next((m.at for m in recorded.phases if m.phase in both), None)
    if start is not None:
        end = next((m.at for m in recorded.phases if m.at >= start and m.phase not in both), None)
        if end is not None:
            return (end - start).total_seconds() / 3600, f"measured: {start:%Y-%m-%d %H:%M} → {end:%H:%M} UTC"
    planned = sum((s.duration for s in plan.cutover.stages), timedelta()) + plan.soak_period
    return planned.total_seconds() / 3600, "planned: the cutover stages' durations plus the soak period"


def throughput_ratio(state: MigrationState) -> tuple[float, str] | None:
    """Target over source throughput: the operator's job's when benchmarked, else the POC micro-suite's."""
    job = _job_bench(state)
    if job is not None and job.throughput_ratio:
        return job.throughput_ratio, f"the job '{job.job}' throughput ratio"
    comparison = state.poc.comparison
    if comparison is not None and comparison.throughput_ratio > 0:
        return comparison.throughput_ratio, "POC throughput ratio"
    return None


def savings(recorded: Recorded, state: MigrationState, now: datetime) -> Savings | None:
    measured = throughput_ratio(state)
    if measured is None:
        return None
    ratio, ratio_basis = measured
    plan = recorded.plan
    source_price, target_price = price_per_hour(plan.source_env), price_per_hour(plan.target_env)
    monthly = HOURS_PER_MONTH * (source_price - target_price / ratio)
    moved = bool(state.poc.transfers) or state.egress_bytes > 0
    egress = state.egress_cost_usd if moved or state.assessment is None else state.assessment.egress_cost_usd
    hours, hours_basis = double_running_hours(recorded, now)
    double = hours * target_price
    one_off = egress + double
    return Savings(
        monthly_usd=monthly,
        annual_run_rate_usd=12 * monthly,
        first_year_net_usd=12 * monthly - one_off,
        one_off_usd=one_off,
        egress_usd=egress,
        double_running_usd=double,
        double_running_hours=hours,
        payback_months=one_off / monthly if monthly > 0 else None,
        assumptions=[
            f"the same work as today: {HOURS_PER_MONTH} h/month of the source's {plan.source_env.compute.gpu_count}x "
            f"{plan.source_env.compute.gpu_type} at ${source_price:,.2f}/h",
            f"the target needs {1 / ratio:.2f}x the hours for it ({ratio_basis} {ratio:.3f}) at ${target_price:,.2f}/h",
            f"egress: {'bytes actually sent' if moved else 'projected by the assessment'} at "
            f"${plan.source_env.egress_per_gb_usd}/GB",
            f"running both sides: {hours:.2f} h of the target's price ({hours_basis})",
        ],
    )


# -- verdicts -------------------------------------------------------------------------------------


def _window_query(plan: MigrationPlan, verdict: dict) -> str:
    provider, lines = plan.workloads.metrics, []
    for endpoint in plan.workloads.endpoints:
        if isinstance(provider, PrometheusProvider):
            for side, labels in (("source", endpoint.source_labels), ("target", endpoint.target_labels)):
                queries = provider.queries.model_dump()
                rendered = "; ".join(f"{name}: {q.format(labels=labels)}" for name, q in queries.items())
                lines.append(f"{endpoint.name} {side} @ {provider.url}: {rendered}")
        else:
            lines.append(
                f"{endpoint.name}: GET {endpoint.source_url}/metrics and {endpoint.target_url}/metrics "
                "(skyshift_requests_total, skyshift_request_errors_total, skyshift_request_latency_seconds); "
                "the window is the difference of two scrapes"
            )
    return "\n".join(lines)


def _fixed(text: str) -> Callable[[MigrationPlan, dict], str]:
    return lambda plan, verdict: text


#: Activities whose results are verdicts: where the verdict sits in the result, and what was measured
#: (the query behind the decision, as an operator could re-run it).
VERDICT_ACTIVITIES: dict[str, tuple[Callable[[Any], dict], Callable[[MigrationPlan, dict], str]]] = {
    "compare_benchmarks": (lambda r: r["verdict"], _fixed(
        "run_benchmark on each environment (median training samples/s over trials); prices from the plan")),
    "judge_bench": (lambda r: r["verdict"], _fixed(
        "run_benchmark (the micro-suite) on each environment, side by side and against datasheet ceilings")),
    "judge_job_bench": (lambda r: r["verdict"], _fixed(
        "run_job (arm bench) on each environment, trials as the plan says: steady samples/s and step times from "
        "the job's own metric lines; cost per epoch from the plan's prices")),
    "compare_training": (lambda r: r, _fixed(
        "train_seeded on each environment's own copy (same seed): loss and gradient norm per step, final tensors")),
    "compare_job_arms": (lambda r: r["verdict"], _fixed(
        "run_job arms source, source-repeat and target (same seed, same code root): each metric per step and the "
        "output tensors, target-vs-source against the source-vs-source floor")),
    "judge_handoff": (lambda r: r["comparison"]["verdict"], _fixed(
        "run_job arm handoff: the source until SIGTERM and its checkpoint, the checkpoint delta-synced, the target "
        "resumed from it; step numbers, the first post-resume loss, each metric from the resume on and the output "
        "tensors against the uninterrupted source arm, with the source-vs-source floor")),
    "checkpoint_compatibility": (lambda r: r["verdict"], _fixed(
        "inspect_checkpoint at the source (per-tensor digests) and a real load at the target")),
    "run_shadow": (lambda r: r["verdict"], _fixed(
        "the same requests to both endpoints (sample or mirrored live traffic); outputs compared per field against "
        "two identical source calls")),
    "judge_window": (lambda r: r["verdict"], _window_query),
}  # fmt: skip


def _records_only(record) -> bool:
    """A judge_window call that only recorded the source's load before traffic moved: no verdict, no window."""
    control = (record.input or {}).get("control") if isinstance(record.input, dict) else None
    return bool(control and control.get("record_only"))


def verdict_rows(recorded: Recorded, state: MigrationState) -> list[VerdictRow]:
    rows = []
    for record in recorded.activities:
        known = VERDICT_ACTIVITIES.get(record.activity)
        if known is None or record.status != "completed" or _records_only(record):
            continue
        extract, describe = known
        verdict = extract(record.result)
        rows.append(_row(verdict, record.closed_at, describe(recorded.plan, verdict)))
    seen = {(r.subject, r.summary) for r in rows}
    # Verdicts from activities this table does not know yet still reach the report, from the state.
    for verdict in state.verdicts:
        if (verdict.subject, verdict.summary) not in seen:
            rows.append(_row(verdict.model_dump(mode="json"), None, ""))
    return rows


def _row(verdict: dict, at: datetime | None, query: str) -> VerdictRow:
    return VerdictRow(
        subject=verdict["subject"],
        outcome=verdict["outcome"],
        summary=verdict["summary"],
        at=at,
        query=query,
        checks=[CheckRow.model_validate(c) for c in verdict.get("checks", [])],
    )


# -- risks ----------------------------------------------------------------------------------------


def risk_egress(recorded: Recorded, state: MigrationState) -> Risk:
    budget, a = recorded.plan.egress_budget_usd, state.assessment
    if a is None:
        return Risk(name="egress exposure", level="unknown", evidence="not assessed yet", source="assessment")
    spent = state.egress_cost_usd
    worst = max(a.egress_cost_usd, spent)
    level = "high" if worst > budget else "medium" if worst > budget / 2 else "low"
    return Risk(
        name="egress exposure",
        level=level,
        evidence=f"projected ${a.egress_cost_usd:,.4f} for {a.total_bytes / 1e9:,.3f} GB at "
        f"${recorded.plan.source_env.egress_per_gb_usd}/GB; sent so far {state.egress_bytes / 1e9:,.3f} GB "
        f"(${spent:,.4f}); budget ${budget:,.2f}",
        source="assessment.egress_cost_usd, state.egress_bytes / egress_cost_usd, plan.egress_budget_usd",
    )


def risk_residency(recorded: Recorded, state: MigrationState) -> Risk:
    a = state.assessment
    if a is None:
        return Risk(name="data residency", level="unknown", evidence="not assessed yet", source="assessment")
    return Risk(name="data residency", level="low" if a.residency_ok else "high", evidence=a.residency_detail,
                source="assessment.residency_ok")  # fmt: skip


def risk_compatibility(recorded: Recorded, state: MigrationState) -> Risk:
    sides = {"source": state.poc.source_bench, "target": state.poc.target_bench}
    if not all(sides.values()):
        return Risk(name="driver and runtime compatibility", level="unknown", evidence="no benchmark ran on both sides",
                    source="poc.source_bench / target_bench")  # fmt: skip
    facts = {
        side: {
            "device": f"{r[0].device} ({r[0].device_name})",
            "torch": r[0].torch_version,
            "driver": r[0].telemetry.driver if r[0].telemetry else "n/a",
        }
        for side, r in sides.items()
    }
    differs = [key for key in ("torch", "driver") if facts["source"][key] != facts["target"][key]]
    fits = state.assessment.gpu_fit if state.assessment else []
    no_fit = [f.checkpoint for f in fits if f.fits_serving is False or f.fits_training is False]
    warnings = state.assessment.warnings if state.assessment else []
    level = "high" if no_fit else "medium" if differs or warnings else "low"
    evidence = "; ".join(f"{s}: {v['device']}, torch {v['torch']}, driver {v['driver']}" for s, v in facts.items())
    if differs:
        evidence += f"; differs: {', '.join(differs)}"
    if no_fit:
        evidence += f"; does not fit the target's GPUs: {', '.join(no_fit)}"
    evidence += "".join(f"; {w}" for w in warnings)
    return Risk(name="driver and runtime compatibility", level=level, evidence=evidence,
                source="poc benchmarks (environment fingerprint), assessment.gpu_fit / warnings")  # fmt: skip


def risk_numerics(recorded: Recorded, state: MigrationState) -> Risk:
    verdict = state.parallel_run
    if verdict is None:
        return Risk(name="numerical parity", level="unknown", evidence="no parallel run yet", source="parallel_run")
    level = {"pass": "low", "fail": "high"}.get(verdict.outcome, "medium")
    evidence = "; ".join(c.detail for c in verdict.checks if c.detail) or verdict.summary
    return Risk(name="numerical parity", level=level, evidence=f"{verdict.outcome}: {evidence}", source="parallel_run")


def risk_performance(recorded: Recorded, state: MigrationState) -> Risk:
    rows = [r for r in verdict_rows(recorded, state) if r.subject.startswith("cutover:")]
    checks = [c for r in rows for c in r.checks if "latency" in c.metric and c.observed is not None]
    if not checks:
        return Risk(name="latency regression", level="unknown", evidence="no cutover window judged",
                    source="cutover verdicts")  # fmt: skip
    worst = max(checks, key=lambda c: c.observed / c.threshold if c.threshold else c.observed)
    failed = [r.subject for r in rows if any(c.outcome == "fail" and "latency" in c.metric for c in r.checks)]
    ratio = worst.observed / worst.threshold if worst.threshold else 0
    level = "high" if failed else "medium" if ratio > 0.5 else "low"
    evidence = f"worst {worst.metric}: {worst.observed:+.1f}% vs allowed +{worst.threshold}% ({worst.detail})"
    if failed:
        evidence += f"; failed in {', '.join(dict.fromkeys(failed))}"
    return Risk(name="latency regression", level=level, evidence=f"{len(rows)} windows; {evidence}",
                source="cutover verdicts (latency, latency_tail checks)")  # fmt: skip


def risk_availability(recorded: Recorded, state: MigrationState) -> Risk:
    rows = [r for r in verdict_rows(recorded, state) if r.subject.startswith("cutover:")]
    if not rows:
        return Risk(name="availability", level="unknown", evidence="no cutover window judged",
                    source="cutover verdicts")  # fmt: skip
    errors = [c for r in rows for c in r.checks if c.metric.endswith("error_rate") and c.target is not None]
    worst = max((c.target for c in errors), default=0.0)
    unreadable = sum(r.outcome == "error" for r in rows)
    failed = sum(any(c.metric.endswith("error_rate") and c.outcome == "fail" for c in r.checks) for r in rows)
    level = "high" if failed else "medium" if unreadable else "low"
    return Risk(
        name="availability",
        level=level,
        evidence=f"target error rate at most {worst:.2f}% over {len(rows)} windows; {unreadable} window(s) "
        f"unreadable; {failed} failed on errors",
        source="cutover verdicts (error_rate checks, in %), windows judged 'error'",
    )


def risk_reversibility(recorded: Recorded, state: MigrationState) -> Risk:
    pending = len(state.saga.pending)
    failed = len(getattr(state.saga, "failed", []) or [])
    if failed:
        level, evidence = "high", f"{failed} compensation(s) failed permanently and wait for an operator"
    elif state.saga.completed and not pending:
        level, evidence = (
            "low",
            f"rolled back: {len(state.saga.completed)} compensation(s) ran: " + "; ".join(state.saga.completed),
        )
    elif state.point_of_no_return:
        level, evidence = "medium", "past the point of no return: the source was released; rollback is not possible"
    else:
        level, evidence = "low", f"{pending} undo step(s) registered; rollback possible"
    return Risk(name="reversibility", level=level, evidence=evidence, source="saga, point_of_no_return")


#: The risk register, in the order an executive reads it.
RISKS: tuple[Callable[[Recorded, MigrationState], Risk], ...] = (
    risk_egress,
    risk_compatibility,
    risk_availability,
    risk_performance,
    risk_numerics,
    risk_residency,
    risk_reversibility,
)


# -- series ---------------------------------------------------------------------------------------


class SeriesUnavailable(Exception):
    """A series stored by reference could not be read back here; the report says which and why."""


#: A metric file larger than this is not a job's metric lines: it is not read.
MAX_SERIES_BYTES = 64 << 20


def read_artifact(ref: dict) -> bytes:
    """An artifact a run recorded by reference, read from its store and checked against its BLAKE3."""
    import blake3

    from activities.stores import StoreSpec, open_store

    where = f"{ref['store']['url']}/{ref['key']}"
    if ref["size"] > MAX_SERIES_BYTES:
        raise SeriesUnavailable(f"{where}: {ref['size']:,} bytes, over the {MAX_SERIES_BYTES:,} read for a report")
    try:
        data = open_store(StoreSpec.model_validate(ref["store"])).read_bytes(ref["key"])
    except Exception as error:  # any store failure (credentials, network, gone) is a note, not a crash
        reason = str(error).split(". ")[0][:200]  # the first sentence says it; the rest is how-to links
        raise SeriesUnavailable(f"{where}: not readable from here ({type(error).__name__}: {reason})") from None
    if blake3.blake3(data).hexdigest() != ref["blake3"]:
        raise SeriesUnavailable(f"{where}: changed since it was recorded (BLAKE3 differs); not used")
    return data


def _seeded_training(result: dict, plan: MigrationPlan) -> list[Curve]:
    env = result.get("environment", "")
    arm = {plan.source: "source", plan.target: "target"}.get(env, env)
    return [Curve(arm=arm, environment=env, values=result.get("losses", []))]


def _job_run(result: dict, plan: MigrationPlan) -> list[Curve]:
    """A parallel-run arm of the operator's job: its loss per step, from the metric lines it stored."""
    if result.get("arm") == "bench" or not result.get("metrics"):
        return []
    steps, losses, times = [], [], []
    for line in read_artifact(result["metrics"]).decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
            step, loss = int(record["step"]), float(record["loss"])
        except (ValueError, KeyError, TypeError):
            continue  # the run counted its bad lines; the curve is what parsed
        steps.append(step)
        losses.append(loss)
        times.append(record.get("time"))
    seconds = [t - times[0] for t in times] if times and all(isinstance(t, int | float) for t in times) else []
    where = f"{result['metrics']['store']['url']}/{result['metrics']['key']}"
    return [Curve(arm=result["arm"], environment=result.get("environment", ""), values=losses, steps=steps,
                  seconds=seconds, job=result.get("job", ""), source=where)]  # fmt: skip


#: Activities whose results carry loss curves, and how to read them: one row per kind of job.
CURVE_ACTIVITIES: dict[str, Callable[[dict, MigrationPlan], list[Curve]]] = {
    "train_seeded": _seeded_training,
    "run_job": _job_run,
}

#: Convergence: an arm has converged once its loss (averaged over this many steps) is within
#: CONVERGED_WITHIN of the loss the source arm ended at.
CONVERGENCE_WINDOW, CONVERGED_WITHIN = 5, 0.01


def convergence(curves: list[Curve]) -> list[Convergence]:
    """Per arm of each job: time (and step) to reach the source arm's final loss."""
    out = []
    for job in dict.fromkeys(c.job for c in curves if c.job):
        arms = [c for c in curves if c.job == job]
        source = next((c for c in arms if c.arm == "source" and c.values), None)
        if source is None:
            continue
        goal = source.values[-1] * (1 + CONVERGED_WITHIN)
        for curve in arms:
            means = [statistics.fmean(curve.values[max(i + 1 - CONVERGENCE_WINDOW, 0) : i + 1])
                     for i in range(len(curve.values))]  # fmt: skip
            reached = next((i for i, m in enumerate(means) if i + 1 >= CONVERGENCE_WINDOW and m <= goal), None)
            if reached is None:
                continue
            step = curve.steps[reached] if curve.steps else reached + 1
            out.append(Convergence(
                arm=f"{job}: {curve.arm} ({curve.environment})",
                seconds=curve.seconds[reached] if curve.seconds else math.nan,
                detail=f"step {step}: the {CONVERGENCE_WINDOW}-step mean loss within {CONVERGED_WITHIN:.0%} of the "
                f"source arm's final {source.values[-1]:.4g}",
            ))  # fmt: skip
    return out


def series(recorded: Recorded, state: MigrationState) -> Series:
    plan = recorded.plan
    out = Series()
    for activity, curves in CURVE_ACTIVITIES.items():
        for run in recorded.results(activity):
            try:
                out.loss_curves += curves(run.result, plan)
            except SeriesUnavailable as unavailable:
                out.notes.append(f"{activity} ({run.result.get('arm', '')}): {unavailable}")
    for side, results in (("source", state.poc.source_bench), ("target", state.poc.target_bench)):
        for result in results:
            for i, trial in enumerate(result.trials):
                out.throughput_trials.append(TrialPoint(side=side, environment=result.environment, trial=i + 1,
                                                        samples_per_s=trial.train_samples_per_s,
                                                        matmul_tflops=trial.matmul_tflops))  # fmt: skip
    trials: dict[str, int] = {}
    for run in recorded.results("run_job"):
        result, timing = run.result, run.result.get("timing") or {}
        if result.get("arm") != "bench" or not timing.get("steady_per_s"):
            continue
        env = result.get("environment", "")
        trials[env] = trials.get(env, 0) + 1
        side = "source" if env == plan.source else "target"
        out.throughput_trials.append(TrialPoint(side=side, environment=env, trial=trials[env],
                                                samples_per_s=timing["steady_per_s"], kind=f"job:{result['job']}",
                                                unit=timing.get("unit", "samples")))  # fmt: skip
    for index, (at, _, request, result) in enumerate(windows(recorded)):
        for previous, current in _endpoint_pairs(request):
            sides = {}
            for side in ("source", "target"):
                now, before = getattr(current, side), getattr(previous, side) if previous else None
                delta = histogram_delta(before.latency if before else None, now.latency) if now.latency else None
                count = delta.count if delta else 0
                sides[side] = (
                    {name: quantile(delta, q) * 1000 for name, q in QUANTILES.items()} if count > 0 else {},
                    now.requests - (before.requests if before else 0),
                )
            window = LatencyWindow(index=index + 1, stage=request.get("stage", ""), endpoint=current.endpoint, at=at,
                                   outcome=result["verdict"]["outcome"], source_ms=sides["source"][0],
                                   target_ms=sides["target"][0], source_requests=sides["source"][1],
                                   target_requests=sides["target"][1])  # fmt: skip
            out.latency_windows.append(window)
    out.traffic.append(TimePoint(at=recorded.started_at, value=0, label="start"))
    for route in recorded.results("route_traffic"):
        out.traffic.append(TimePoint(at=route.closed_at, value=route.input["target_percent"],
                                     label=route.input.get("reason", "")))  # fmt: skip
    sent, dollars = 0, 0.0
    out.egress_bytes.append(TimePoint(at=recorded.started_at, value=0))
    out.egress_usd.append(TimePoint(at=recorded.started_at, value=0))
    for child in recorded.children:
        if isinstance(child.result, dict) and "egress_bytes" in child.result:
            sent += child.result["egress_bytes"]
            dollars += child.result.get("egress_cost_usd", 0.0)
            label = child.result.get("path", "")
            out.egress_bytes.append(TimePoint(at=child.closed_at, value=sent, label=label))
            out.egress_usd.append(TimePoint(at=child.closed_at, value=dollars, label=label))
    for entry in state.audit:
        kind = {"awaiting_approval": "gate", "approved": "approval", "rollback_requested": "rollback"}.get(entry.action)
        if kind:
            out.markers.append(Marker(at=entry.at, kind=kind, label=f"{entry.actor}: {entry.detail}"[:160]))
    return out


# -- the report -----------------------------------------------------------------------------------


def headline(state: MigrationState, savings_: Savings | None) -> tuple[str, str | None]:
    outcome = state.outcome or "running"
    if outcome == "completed":
        if savings_ is not None:
            return (f"Completed. Projected saving ${savings_.monthly_usd:,.0f}/month "
                    f"(${savings_.annual_run_rate_usd:,.0f}/year) for the same work.", None)  # fmt: skip
        return "Completed.", None
    if outcome == "running":
        return f"In progress: {state.phase}" + (f", stage {state.stage}" if state.stage else "") + ".", None
    reason = state.outcome_reason or "no reason recorded"
    where = getattr(state, "ended_in", None) or (f"stage {state.stage}" if state.stage else None)
    title = outcome.replace("_", " ").capitalize() + (f" during {where}" if where else "")
    first = reason.split("; ")[0]
    if state.stage and first.startswith(f"{state.stage}: "):
        first = first.removeprefix(f"{state.stage}: ")
    return f"{title}: {first}", reason


def build_report(recorded: Recorded, state: MigrationState, now: datetime | None = None) -> Report:
    now = now or datetime.now(UTC)
    plan = recorded.plan
    prices = {"source": price_per_hour(plan.source_env), "target": price_per_hour(plan.target_env)}
    sides = {}
    effective = effective_both(recorded, state)
    for side, env in (("source", plan.source_env), ("target", plan.target_env)):
        sides[side] = SideEconomics(
            environment=env.name,
            price_per_hour_usd=prices[side],
            per_1k_samples=per_1k_samples(state, side, prices[side]),
            per_epoch=per_epoch(recorded, state, env, side, prices[side]),
            per_1k_inferences=per_1k_inferences(recorded, prices[side]),
            effective=effective[side],
        )
    saved = savings(recorded, state, now)
    text, why = headline(state, saved)
    comparison, job = state.poc.comparison, _job_bench(state)
    data = series(recorded, state)
    verdicts = verdict_rows(recorded, state)
    executive = Executive(
        outcome=state.outcome or "running",
        headline=text,
        why=why,
        source=sides["source"],
        target=sides["target"],
        savings=saved,
        convergence=convergence(data.loss_curves),
        risks=[risk(recorded, state) for risk in RISKS],
    )
    present = {
        "executive": True,
        "why": why is not None,
        "economics": any(getattr(sides["source"], f) for f in ("per_1k_samples", "per_epoch", "per_1k_inferences")),
        "savings": saved is not None,
        "convergence": bool(executive.convergence),
        "risks": True,
        "loss_curves": bool(data.loss_curves),
        "throughput": bool(data.throughput_trials),
        "latency": bool(data.latency_windows),
        "traffic": len(data.traffic) > 1,
        "egress": len(data.egress_bytes) > 1,
        "verdicts": bool(verdicts),
        "audit": bool(state.audit),
    }
    return Report(
        generated_at=now,
        migration_id=state.migration_id,
        plan_name=plan.name,
        source=plan.source,
        target=plan.target,
        workflow_status=recorded.status,
        started_at=recorded.started_at,
        closed_at=recorded.closed_at,
        executive=executive,
        state=StateFigures(
            phase=state.phase,
            stage=state.stage,
            traffic_percent=state.traffic_percent,
            egress_bytes=state.egress_bytes,
            egress_cost_usd=state.egress_cost_usd,
            outcome=state.outcome,
            outcome_reason=state.outcome_reason,
            source_cost_per_million_samples=comparison.source_cost_per_million_samples if comparison else None,
            target_cost_per_million_samples=comparison.target_cost_per_million_samples if comparison else None,
            throughput_ratio=comparison.throughput_ratio if comparison else None,
            projected_egress_usd=state.assessment.egress_cost_usd if state.assessment else None,
            job_source_cost_per_epoch_usd=job.source.cost_per_epoch_usd if job else None,
            job_target_cost_per_epoch_usd=job.target.cost_per_epoch_usd if job else None,
            job_throughput_ratio=job.throughput_ratio if job else None,
            data_transfer_amplification=state.data_transfer_amplification(),
            continuous_passes=state.sync.passes_run,
            continuous_bytes=state.sync.bytes_sent,
            final_sync_bytes=sum(t.egress_bytes for t in state.decommission.final_sync),
        ),
        series=data,
        verdicts=verdicts,
        audit=state.audit,
        sections=[name for name, shown in present.items() if shown],
    )
