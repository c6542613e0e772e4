"""Continuity of a moved training run: does the resumed run continue the interrupted one?

Checkpoint loaders report success when they restored the weights, yet a run that restarts its
dataloader from zero, or loses its RNG or optimizer state, trains on differently from there
(Megatron-Bridge #5637, torchtitan #811, pytorch #146157). So the handoff arm (the source to the
checkpoint, the target from it) is held against the uninterrupted source arm, with the noise
floor of the source against itself, by the one judge (`activities.analysis.judge`):

- `steps_missing` / `steps_repeated`: the step numbers before and after the resume, vs the source's;
- `state_restored`: the first post-resume loss vs the uninterrupted run's at that step;
- every metric series from the resume on and the final tensors, exactly as the parallel run's arms.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field
from temporalio import activity

from activities.analysis import AnalysisRule, Measurement, judge
from activities.jobs.compare import (
    JobComparison,
    arm_measurement,
    arm_rows,
    default_rules,
    measure_outputs,
    measure_series,
    relative_divergence,
    summarize,
)
from activities.jobs.files import read_artifact
from activities.jobs.run import JobResult
from activities.jobs.series import Record, load_series
from skyshift.spec.jobs import JobTolerances

_SHOWN = 5  # steps named in a detail


class HandoffMeasures(BaseModel):
    """What the move itself cost: shown beside the verdict, never judged (dry run)."""

    checkpoint_bytes: int | None = Field(None, description="The checkpoint's size")
    bytes_moved: int | None = Field(None, description="Bytes the delta sync sent across environments")
    seconds_to_first_step: float | None = Field(
        None, description="From SIGTERM on the source to the first step logged on the target"
    )


class JudgeHandoffInput(BaseModel):
    job: str
    source: JobResult = Field(description="The uninterrupted source arm")
    source_repeat: JobResult = Field(description="The source again: the noise floor")
    before: JobResult = Field(description="The handoff arm on the source, up to SIGTERM and its checkpoint")
    after: JobResult | None = Field(
        None, description="The handoff arm on the target, resumed from that checkpoint (None: it never started)"
    )
    tolerances: JobTolerances = Field(default_factory=JobTolerances)
    measures: HandoffMeasures = Field(default_factory=HandoffMeasures)


class HandoffComparison(BaseModel):
    """The continuity verdict with the numbers it was judged on (small: history carries it)."""

    job: str
    comparison: JobComparison
    resumed_at_step: int | None = Field(None, description="The first step the target logged")
    checkpoint_step: int | None = None
    steps_missing: list[int] = Field(default_factory=list, description="The first few")
    steps_repeated: list[int] = Field(default_factory=list, description="The first few")
    measures: HandoffMeasures = Field(default_factory=HandoffMeasures)

    @property
    def outcome(self) -> str:
        return self.comparison.verdict.outcome


def continuity_rules(tolerances: JobTolerances) -> list[AnalysisRule]:
    t = tolerances
    return [
        *t.rules,
        AnalysisRule(metric="steps_missing", compare="at_most", threshold=0, unit=" steps"),
        AnalysisRule(metric="steps_repeated", compare="at_most", threshold=0, unit=" steps"),
        AnalysisRule(metric="resumed_from", compare="at_most", threshold=0, unit=" steps"),
        AnalysisRule(
            metric="state_restored", compare="within_floor", threshold=t.metric_tolerance, floor_margin=t.floor_margin
        ),
        AnalysisRule(metric="handoff:*", compare="at_least", threshold=0, dry_run=True),
        *default_rules(t),
    ]


def _steps(records: list[Record]) -> list[int]:
    return [int(r["step"]) for r in records]


def _named(steps: list[int]) -> str:
    more = f" and {len(steps) - _SHOWN} more" if len(steps) > _SHOWN else ""
    return ", ".join(map(str, steps[:_SHOWN])) + more


def measure_steps(
    source: list[Record], before: list[Record], after: list[Record]
) -> tuple[list[Measurement], list[int], list[int]]:
    """Step numbers: every step of the uninterrupted run exactly once across the two halves."""
    before_steps, after_steps = _steps(before), _steps(after)
    logged = before_steps + after_steps
    missing = sorted(set(_steps(source)) - set(logged))
    seen: set[int] = set()
    repeated = sorted({s for s in logged if s in seen or seen.add(s)})
    last_before = max(before_steps, default=None)
    first_after = min(after_steps, default=None)
    around = f"the source logged through step {last_before}, the target resumed at step {first_after}"
    return (
        [
            Measurement(
                metric="steps_missing", observed=len(missing), step=missing[0] if missing else None,
                detail=f"{around}; missing: {_named(missing)}" if missing else f"{around}; no step missing",
            ),
            Measurement(
                metric="steps_repeated", observed=len(repeated), step=repeated[0] if repeated else None,
                detail=f"{around}; logged twice: {_named(repeated)}" if repeated else f"{around}; no step repeated",
            ),
        ],
        missing,
        repeated,
    )  # fmt: skip


def measure_restored(source: list[Record], repeat: list[Record], after: list[Record]) -> Measurement:
    """The first post-resume loss against the uninterrupted run's at that step (floor: the source again)."""
    if not after:
        return Measurement(metric="state_restored", detail="the target logged no step after resuming")
    first = min(after, key=lambda r: r["step"])
    step = int(first["step"])
    s = {int(r["step"]): r for r in source}.get(step, {})
    r = {int(r["step"]): r for r in repeat}.get(step, {})
    if "loss" not in first or "loss" not in s:
        return Measurement(metric="state_restored", detail=f"no loss logged at step {step} by both runs")
    observed = relative_divergence(s["loss"], first["loss"])
    floor = relative_divergence(s["loss"], r["loss"]) if "loss" in r else None
    return Measurement(
        metric="state_restored", observed=observed, source=s["loss"], target=first["loss"], floor=floor,
        step=step if observed > 0 else None,
        detail=f"first loss after the resume, step {step}: {first['loss']:.7g} vs {s['loss']:.7g} uninterrupted "
        f"(relative difference {observed:.3g}; source vs source again {floor if floor is not None else math.nan:.3g})",
    )  # fmt: skip


def judge_continuity(request: JudgeHandoffInput) -> HandoffComparison:
    tolerances = request.tolerances
    rules = continuity_rules(tolerances)
    arms = {"source": request.source, "source_repeat": request.source_repeat,
            "handoff_source": request.before, "handoff_target": request.after}  # fmt: skip
    arms = {name: arm for name, arm in arms.items() if arm is not None}
    measurements = [arm_measurement(name, arm) for name, arm in arms.items()]
    if request.after is None:
        kept = request.before.checkpoint
        where = f" from its checkpoint of step {kept.step}" if kept else " (no checkpoint was written)"
        measurements.append(
            Measurement(
                metric="arm:handoff_target", observed=1,
                detail=f"job {request.job} was not resumed elsewhere: the run stays on {request.before.environment}"
                + where,
            )
        )  # fmt: skip
    comparison = JobComparison(
        job=request.job,
        verdict=judge("", [], rules),
        arms=arm_rows(arms),
    )  # fmt: skip
    result = HandoffComparison(job=request.job, comparison=comparison, measures=request.measures)
    before_step = request.before.checkpoint.step if request.before.checkpoint else None
    result.checkpoint_step = before_step
    tensor_rows = []
    if request.after is not None and all(arm.ok for arm in arms.values()) and request.before.status == "checkpointed":
        series = {name: load_series(read_artifact(arm.metrics)) if arm.metrics else [] for name, arm in arms.items()}
        source, repeat, after = series["source"], series["source_repeat"], series["handoff_target"]
        result.resumed_at_step = min(_steps(after), default=None)
        resumed = request.after.resumed_from_step
        measurements.append(
            Measurement(
                metric="resumed_from", observed=0 if resumed == before_step else math.inf,
                detail=f"the target resumed from the checkpoint of step {resumed}; the source checkpointed step "
                f"{before_step}",
            )
        )  # fmt: skip
        found, result.steps_missing, result.steps_repeated = measure_steps(source, series["handoff_source"], after)
        measurements += found
        measurements.append(measure_restored(source, repeat, after))
        from_resume = result.resumed_at_step if result.resumed_at_step is not None else math.inf
        later = [
            [r for r in records if r["step"] >= from_resume] for records in (source, repeat)
        ]  # the series from the resume on
        series_measurements, comparison.metrics = measure_series(later[0], later[1], after, tolerances, rules)
        measurements += [m for m in series_measurements if m.metric != "missing_steps"]  # judged as steps_missing
        outputs = {"source": request.source, "source_repeat": request.source_repeat, "target": request.after}
        tensor_measurements, tensor_rows = measure_outputs(outputs, tolerances, rules)
        measurements += tensor_measurements
    elif request.before.status != "checkpointed" and request.before.ok:
        measurements.append(
            Measurement(metric="arm:handoff_source", observed=1,
                        detail=f"no handoff on {request.before.environment}: {request.before.detail}")
        )  # fmt: skip
    measurements += move_costs(result, request.before, request.after)
    judged = judge(f"handoff:{request.job}", measurements, rules)
    result.comparison = summarize(comparison, judged, tensor_rows, tolerances.top_tensors)
    return result


def move_costs(result: HandoffComparison, before: JobResult, after: JobResult | None) -> list[Measurement]:
    """What the move cost (checkpoint size, bytes moved, SIGTERM → first step), reported beside the verdict;
    the time to the first step is filled in from the two runs when the caller did not measure it."""
    m = result.measures
    if m.seconds_to_first_step is None and before.sigterm_at and after and after.first_step_at:
        m = result.measures = m.model_copy(
            update={"seconds_to_first_step": round(after.first_step_at - before.sigterm_at, 3)}
        )
    return [
        Measurement(metric=f"handoff:{name}", observed=value, detail=f"{name} {value:.4g}")
        for name, value in (("checkpoint_bytes", m.checkpoint_bytes), ("bytes_moved", m.bytes_moved),
                            ("seconds_to_first_step", m.seconds_to_first_step))
        if value is not None
    ]  # fmt: skip


@activity.defn
def judge_handoff(request: JudgeHandoffInput) -> HandoffComparison:
    """Control worker: the handoff arm against the uninterrupted source, by reference, with the source floor."""
    return judge_continuity(request)


# -- a production run's move: the first steps on the destination against the run's own continuation --


class JudgeMoveInput(BaseModel):
    """A production run moved mid-flight: there is no uninterrupted twin, so the reference is the run's
    own continuation: the origin resumed from the same checkpoint for the same steps, twice (the floor)."""

    job: str
    before: JobResult = Field(description="The run on the origin, up to SIGTERM and its checkpoint")
    after: JobResult | None = Field(None, description="The first steps on the destination (None: never started)")
    reference: JobResult = Field(description="The origin from the same checkpoint for watch_steps steps")
    reference_repeat: JobResult = Field(description="The same again: the floor")
    watch_steps: int = Field(ge=1, description="Steps after the checkpoint's that are judged")
    tolerances: JobTolerances = Field(default_factory=JobTolerances)
    measures: HandoffMeasures = Field(default_factory=HandoffMeasures)


def _watched(records: list[Record], first: int, last: int) -> list[Record]:
    return [r for r in records if first <= int(r["step"]) <= last]


def judge_moved_run(request: JudgeMoveInput) -> HandoffComparison:
    """The first `watch_steps` steps after a move, by the continuity checks and the same judge.

    Steps missing or repeated, the resume's step, the first post-resume loss and every metric over
    the watched steps are held against the origin's own continuation with the origin-again floor;
    throughput after vs before the move is shown (dry run: a shared host varies by 25-65%).
    """
    rules = continuity_rules(request.tolerances)
    arms = {"origin": request.before, "reference": request.reference, "reference_repeat": request.reference_repeat,
            "destination": request.after}  # fmt: skip
    arms = {name: arm for name, arm in arms.items() if arm is not None}
    measurements = [arm_measurement(name, arm) for name, arm in arms.items()]
    comparison = JobComparison(
        job=request.job,
        verdict=judge("", [], rules),
        arms=arm_rows(arms),
    )  # fmt: skip
    result = HandoffComparison(job=request.job, comparison=comparison, measures=request.measures)
    step = request.before.checkpoint.step if request.before.checkpoint else None
    result.checkpoint_step = step
    if request.after is None:
        measurements.append(Measurement(metric="arm:destination", observed=1,
                                        detail=f"job {request.job} did not resume elsewhere: the run stays on "
                                        f"{request.before.environment}"))  # fmt: skip
    elif step is not None and all(arm.ok for arm in arms.values()):
        series = {name: load_series(read_artifact(arm.metrics)) if arm.metrics else [] for name, arm in arms.items()}
        first, last = step + 1, step + request.watch_steps
        reference, repeat, after = (_watched(series[n], first, last) for n in ("reference", "reference_repeat",
                                                                                 "destination"))  # fmt: skip
        result.resumed_at_step = min(_steps(after), default=None)
        resumed = request.after.resumed_from_step
        measurements.append(
            Measurement(metric="resumed_from", observed=0 if resumed == step else math.inf,
                        detail=f"the destination resumed from the checkpoint of step {resumed}; the origin "
                        f"checkpointed step {step}")
        )  # fmt: skip
        found, result.steps_missing, result.steps_repeated = measure_steps(reference, series["origin"], after)
        measurements += found
        measurements.append(measure_restored(reference, repeat, after))
        series_measurements, comparison.metrics = measure_series(reference, repeat, after, request.tolerances, rules)
        measurements += [m for m in series_measurements if m.metric != "missing_steps"]
        before_rate, after_rate = request.before.timing.steady_per_s, request.after.timing.steady_per_s
        if before_rate and after_rate:
            ratio = round(after_rate / before_rate, 3)
            detail = f"steps/s after the move {after_rate:.3g} vs before {before_rate:.3g}"
            measurements.append(Measurement(metric="handoff:throughput_ratio", observed=ratio, detail=detail))
    measurements += move_costs(result, request.before, request.after)
    judged = judge(f"move:{request.job}", measurements, rules)
    result.comparison = summarize(comparison, judged, [], request.tolerances.top_tensors)
    return result


@activity.defn
def judge_move(request: JudgeMoveInput) -> HandoffComparison:
    """Control worker: a production run's first steps after a move against its own continuation."""
    return judge_moved_run(request)
