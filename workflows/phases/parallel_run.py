"""Parallel run: the operator's own jobs on both clouds, the target judged against the source's own noise.

Each job runs as three arms — source, target, source again — with the same seed; a difference of the
target counts only where it beats the difference between the source and itself. Throughput is judged
from `parallel_run.throughput_trials` runs a side, interleaved in time (activities.trials). A resumable
job (plan `resume:`) has a fourth, `handoff`: the source to step k, SIGTERM, its checkpoint
delta-synced, the target resumes it to the end, judged for continuity against the uninterrupted
source. A plan without jobs trains the built-in seeded model on its first dataset instead.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.jobs import (
        CompareJobArmsInput,
        HandoffMeasures,
        JobResult,
        JobSpec,
        JudgeHandoffInput,
        compare_job_arms,
        judge_handoff,
    )
    from activities.training import CompareTrainingInput, TrainInput, compare_training, train_seeded
    from workflows.phases.context import MigrationContext
    from workflows.phases.handoff import hand_off
    from workflows.phases.job_runs import run_job_on
    from workflows.versions import HANDOFF_ARM, INTERLEAVED_TRIALS


async def parallel_run(ctx: MigrationContext) -> None:
    plan = ctx.plan
    if plan.workloads.jobs:
        for job in plan.workloads.jobs:
            await job_arms(ctx, job)
        return
    if not plan.workloads.datasets:
        ctx.audit("skyshift", "parallel_run_skipped", "the plan has no dataset to train on")
        return
    dataset, spec = plan.workloads.datasets[0], plan.parallel_run
    results = []
    for env in (plan.source_env, plan.target_env):
        # The target trains on exactly the object the source chose, read from its own copy.
        request = TrainInput(
            environment=env.name, store=env.storage, dataset_path=dataset.path,
            object_key=results[0].object_key if results else None,
            seed=spec.seed, steps=spec.steps, batch_size=spec.batch_size, sample_bytes=spec.sample_bytes,
        )  # fmt: skip
        summary = f"seeded training on {env.name}'s copy of {dataset.name}"
        results.append(await ctx.on(env, train_seeded, request, summary, timeout=timedelta(hours=2)))
    verdict = await ctx.control(
        compare_training,
        CompareTrainingInput(
            source=results[0], target=results[1], loss_divergence_pct=plan.thresholds.loss_divergence_pct
        ),
        "compare loss curves, gradient norms, final tensors",
    )
    ctx.state.parallel_run = verdict
    ctx.record_verdict(verdict)
    ctx.fail_if(verdict, "parallel run", by="skyshift:parallel_run")


async def job_arms(ctx: MigrationContext, job: JobSpec) -> None:
    """Source, source again, target: the target's differences count only where they beat the source's own."""
    source, target = ctx.plan.source_env, ctx.plan.target_env
    more_sources, more_targets = [], []
    if workflow.patched(INTERLEAVED_TRIALS):
        # Interleaved in time (source, target, source again, target, source, ...) so a busy minute on a shared
        # host hits both sides; the further runs count for throughput only (activities.trials).
        trials = ctx.plan.parallel_run.throughput_trials
        first = await run_job_on(ctx, job, source, "source")
        moved = await run_job_on(ctx, job, target, "target")
        repeat = await run_job_on(ctx, job, source, "source-repeat")
        for trial in range(1, trials):
            more_targets.append(await run_job_on(ctx, job, target, "target", trial))
            if 2 + len(more_sources) < trials:
                more_sources.append(await run_job_on(ctx, job, source, "source", trial))
    else:
        first = await run_job_on(ctx, job, source, "source")
        repeat = await run_job_on(ctx, job, source, "source-repeat")
        moved = await run_job_on(ctx, job, target, "target")
    comparison = await ctx.control(
        compare_job_arms,
        CompareJobArmsInput(job=job.name, source=first, source_repeat=repeat, target=moved,
                            tolerances=ctx.plan.parallel_run.jobs, source_trials=more_sources,
                            target_trials=more_targets),
        f"{job.name}: three arms against the noise floor", timeout=timedelta(hours=1), long_running=True,
    )  # fmt: skip
    ctx.state.jobs.append(comparison)
    ctx.state.parallel_run = comparison.verdict
    ctx.record_verdict(comparison.verdict)
    ctx.fail_if(comparison.verdict, f"parallel run of {job.name}", by="skyshift:parallel_run")
    if job.resume is not None and workflow.patched(HANDOFF_ARM):
        await handoff_arm(ctx, job, first, repeat)


def handoff_step(job: JobSpec, source: JobResult) -> int:
    """`resume.at`, or half of the steps the uninterrupted source logged."""
    assert job.resume is not None
    if job.resume.at is not None:
        return job.resume.at
    return max((source.last_step or 0) // 2, 0)


async def handoff_arm(ctx: MigrationContext, job: JobSpec, first: JobResult, repeat: JobResult) -> None:
    """The source to step k, SIGTERM, the checkpoint moved, the target to the end: judged for continuity."""
    source, target = ctx.plan.source_env, ctx.plan.target_env
    move = await hand_off(ctx, job, source, target, handoff_step(job, first))
    measures = HandoffMeasures(
        checkpoint_bytes=move.before.checkpoint.bytes if move.before.checkpoint else None,
        bytes_moved=move.sync.egress_bytes if move.sync else None,
    )
    result = await ctx.control(
        judge_handoff,
        JudgeHandoffInput(job=job.name, source=first, source_repeat=repeat, before=move.before, after=move.after,
                          tolerances=ctx.plan.parallel_run.jobs, measures=measures),
        f"{job.name}: handoff continuity against the uninterrupted source", timeout=timedelta(hours=1),
    )  # fmt: skip
    ctx.state.jobs.append(result.comparison)
    ctx.state.parallel_run = result.comparison.verdict
    ctx.record_verdict(result.comparison.verdict)
    ctx.fail_if(result.comparison.verdict, f"handoff of {job.name}", by="skyshift:parallel_run")
