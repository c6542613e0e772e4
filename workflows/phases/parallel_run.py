"""Parallel run: the operator's own jobs on both clouds, the target judged against the source's own noise.

Each job runs as three arms — source, source again, target — with the same seed; a difference of the
target counts only where it beats the difference between the source and itself. A plan without jobs
trains the built-in seeded model on its first dataset instead.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.jobs import CompareJobArmsInput, JobSpec, compare_job_arms
    from activities.training import TrainInput, train_seeded
    from activities.validate import CompareTrainingInput, compare_training
    from workflows.phases.context import MigrationContext
    from workflows.phases.job_runs import run_job_on


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
    first = await run_job_on(ctx, job, source, "source")
    repeat = await run_job_on(ctx, job, source, "source-repeat")
    moved = await run_job_on(ctx, job, target, "target")
    comparison = await ctx.control(
        compare_job_arms,
        CompareJobArmsInput(job=job.name, source=first, source_repeat=repeat, target=moved,
                            tolerances=ctx.plan.parallel_run.jobs),
        f"{job.name}: three arms against the noise floor", timeout=timedelta(hours=1), long_running=True,
    )  # fmt: skip
    ctx.state.jobs.append(comparison)
    ctx.state.parallel_run = comparison.verdict
    ctx.record_verdict(comparison.verdict)
    ctx.fail_if(comparison.verdict, f"parallel run of {job.name}", by="skyshift:parallel_run")
