"""The POC on the operator's own job: throughput, step times and start-up per side, and cost per unit of work.

Each side runs the job `trials` times (`run_job` with `stop_after_steps`); every figure is the
median over trials with its spread (min-max). Cost is what a unit of useful work costs on that
side:

    cost per epoch   = price per GPU-hour x GPUs the job used x hours per epoch
                       + the migration's egress / epochs it is amortized over (target only)
    cost per 1k samples = cost per epoch / samples per epoch x 1000

with hours per epoch = samples per epoch / steady-state samples per second / 3600. A job that
used no GPU is billed one unit of the plan's price (the plan's price is per instance-hour when
the environment has no GPUs). Throughput and GPUs come from the same run, so a job on 1 of 8 GPUs
is no longer charged for 8 at one GPU's throughput.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel, Field
from temporalio import activity

from activities.analysis import AnalysisRule, Measurement, Verdict, judge
from activities.jobs.run import JobResult
from activities.trials import slowdown_measurement
from skyshift.spec.jobs import JobCostModel, JobSpec


class JobBenchSide(BaseModel):
    environment: str
    trials: list[JobResult]
    price_per_gpu_hour: float = Field(ge=0, description="The plan's compute price (per instance-hour without GPUs)")
    egress_usd: float = Field(0.0, ge=0, description="Migration egress charged to this side (the target's)")


class JudgeJobBenchInput(BaseModel):
    job: JobSpec
    source: JobBenchSide
    target: JobBenchSide
    cost: JobCostModel = Field(default_factory=JobCostModel)
    min_throughput_ratio: float = Field(0.8, gt=0)
    max_cost_ratio: float = Field(1.0, gt=0)
    confidence: float = Field(0.98, gt=0.5, lt=1)


class Spread(BaseModel):
    median: float | None = None
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: list[float | None]) -> Spread:
        present = [v for v in values if v is not None]
        if not present:
            return cls()
        return cls(median=statistics.median(present), min=min(present), max=max(present))


class JobBenchSummary(BaseModel):
    environment: str
    trials: int
    trials_ok: int
    unit: str = Field("samples", description="What throughput counts: samples when the job logs them, else steps")
    per_s: Spread = Field(default_factory=Spread, description="Steady-state units per second")
    step_time_p50_s: Spread = Field(default_factory=Spread)
    step_time_p95_s: Spread = Field(default_factory=Spread)
    time_to_first_step_s: Spread = Field(default_factory=Spread, description="Fetch + start-up to the first step")
    gpus_used: int = 0
    billed_units: int = Field(1, description="GPUs billed (one instance when the job used no GPU)")
    price_per_hour: float = 0.0
    samples_per_epoch: float | None = None
    hours_per_epoch: float | None = None
    compute_usd_per_epoch: float | None = None
    egress_usd_per_epoch: float = 0.0
    cost_per_epoch_usd: float | None = None
    cost_per_1k_samples_usd: float | None = None
    note: str = ""


class JobBenchComparison(BaseModel):
    job: str
    source: JobBenchSummary
    target: JobBenchSummary
    throughput_ratio: float | None = None
    cost_ratio: float | None = None
    verdict: Verdict


def summarize_side(side: JobBenchSide, job: JobSpec, cost: JobCostModel) -> JobBenchSummary:
    ok = [t for t in side.trials if t.ok]
    summary = JobBenchSummary(environment=side.environment, trials=len(side.trials), trials_ok=len(ok))
    if not ok:
        return summary
    summary.unit = ok[0].timing.unit
    summary.per_s = Spread.of([t.timing.steady_per_s for t in ok])
    summary.step_time_p50_s = Spread.of([t.timing.step_time_p50_s for t in ok])
    summary.step_time_p95_s = Spread.of([t.timing.step_time_p95_s for t in ok])
    summary.time_to_first_step_s = Spread.of([t.timing.time_to_first_step_s for t in ok])
    summary.gpus_used = max(t.gpus_used for t in ok)
    summary.billed_units = max(summary.gpus_used, 1)
    summary.price_per_hour = side.price_per_gpu_hour * summary.billed_units
    rate = summary.per_s.median
    if not rate:
        summary.note = "no steady-state throughput measured (too few steps)"
        return summary
    per_step = statistics.median([t.timing.samples_per_step or 1.0 for t in ok])
    if job.samples_per_epoch is not None:
        summary.samples_per_epoch = float(job.samples_per_epoch)
    elif job.steps_per_epoch is not None:
        summary.samples_per_epoch = job.steps_per_epoch * per_step
    compute_per_unit = summary.price_per_hour / rate / 3600
    if summary.samples_per_epoch is None:
        summary.cost_per_1k_samples_usd = compute_per_unit * 1000
        summary.note = "samples_per_epoch / steps_per_epoch not in the plan: no cost per epoch, egress not amortized"
        return summary
    summary.hours_per_epoch = summary.samples_per_epoch / rate / 3600
    summary.compute_usd_per_epoch = summary.price_per_hour * summary.hours_per_epoch
    summary.egress_usd_per_epoch = side.egress_usd / cost.egress_amortized_over_epochs
    summary.cost_per_epoch_usd = summary.compute_usd_per_epoch + summary.egress_usd_per_epoch
    summary.cost_per_1k_samples_usd = summary.cost_per_epoch_usd / summary.samples_per_epoch * 1000
    return summary


def bench_rules(request: JudgeJobBenchInput) -> list[AnalysisRule]:
    return [
        AnalysisRule(metric="trials:*", compare="at_most", threshold=0, unit=" failed"),
        AnalysisRule(
            metric="throughput", compare="beyond_uncertainty", threshold=round(1 - request.min_throughput_ratio, 6)
        ),
        AnalysisRule(metric="cost_ratio", compare="at_most", threshold=request.max_cost_ratio, unit="x"),
    ]


def judge_bench(request: JudgeJobBenchInput) -> JobBenchComparison:
    source = summarize_side(request.source, request.job, request.cost)
    target = summarize_side(request.target, request.job, request.cost)
    measurements = [
        Measurement(
            metric=f"trials:{name}", observed=side.trials - side.trials_ok,
            detail=f"{side.trials_ok}/{side.trials} trials of {request.job.name} on {side.environment} succeeded"
            + "".join(f"; {t.detail}" for t in trials.trials if not t.ok)[:600],
        )
        for name, side, trials in (("source", source, request.source), ("target", target, request.target))
    ]  # fmt: skip
    ratio = target.per_s.median / source.per_s.median if source.per_s.median and target.per_s.median else None
    # Each trial's rate: a slower target counts only beyond the allowed slowdown, the source's own spread and
    # the trials' overlap (activities.trials); fewer than 3 trials a side or overlap: inconclusive, never a fail.
    rates = {side: [t.timing.steady_per_s for t in trials.trials if t.ok and t.timing.steady_per_s]
             for side, trials in (("source", request.source), ("target", request.target))}  # fmt: skip
    throughput = slowdown_measurement("throughput", rates["source"], rates["target"], f"{source.unit}/s")
    if ratio is not None:
        throughput.detail = f"steady state, target at {ratio:.2f}x the source: {throughput.detail}"
    measurements.append(throughput)
    cost_s, cost_t = source.cost_per_1k_samples_usd, target.cost_per_1k_samples_usd
    cost_ratio = cost_t / cost_s if cost_s and cost_t is not None else None
    measurements.append(
        Measurement(
            metric="cost_ratio", observed=cost_ratio, source=cost_s, target=cost_t,
            detail=f"USD per 1k {source.unit}: target {_usd(cost_t)} vs source {_usd(cost_s)}"
            + (f"; per epoch {_usd(target.cost_per_epoch_usd)} vs {_usd(source.cost_per_epoch_usd)}"
               if target.cost_per_epoch_usd is not None else ""),
        )
    )  # fmt: skip
    result = judge(f"poc:{request.job.name}", measurements, bench_rules(request), request.confidence)
    return JobBenchComparison(
        job=request.job.name, source=source, target=target, throughput_ratio=ratio, cost_ratio=cost_ratio,
        verdict=result,
    )  # fmt: skip


def _fmt(spread: Spread) -> str:
    if spread.median is None:
        return "n/a"
    return f"{spread.median:.4g} ({spread.min:.4g}-{spread.max:.4g})"


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.6g}"


@activity.defn
def judge_job_bench(request: JudgeJobBenchInput) -> JobBenchComparison:
    """Control worker: medians with spread per side, cost per epoch and per 1k samples, one verdict."""
    return judge_bench(request)
