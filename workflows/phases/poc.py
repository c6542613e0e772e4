"""POC: copy everything to the target, then measure both sides the same way and judge them.

The copies are delta syncs (only chunks the target lacks cross), checkpoints are checked for
compatibility on the target's own worker, and the micro-suite and the operator's job run on each
environment in turn. A checkpoint that cannot load on the target rolls back; otherwise an operator
reads the verdict and approves.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.checkpoints.compat import CompatibilityInput, checkpoint_compatibility
    from activities.checkpoints.inspect import inspect_checkpoint
    from activities.checkpoints.models import InspectInput
    from activities.jobs import (
        CodeRootInput,
        JobBenchSide,
        JobSpec,
        JudgeJobBenchInput,
        judge_job_bench,
        record_code_root,
    )
    from activities.microsuite import BenchInput, run_benchmark_activity
    from activities.microsuite.judge import BenchTolerances, JudgeBenchInput, judge_bench_activity
    from activities.microsuite.poc import CompareBenchInput, compare_benchmarks
    from activities.stores.base import metadata_spec
    from workflows.phases.context import MigrationContext
    from workflows.phases.job_runs import run_job_on
    from workflows.phases.transfers import copy_workloads, move_sealed
    from workflows.plan import Environment
    from workflows.versions import BENCH_SUITE_JUDGE, CHECKPOINT_REPORTS


def price_per_hour(env: Environment) -> float:
    return env.compute.price_per_gpu_hour * max(env.compute.gpu_count, 1)


async def poc(ctx: MigrationContext) -> None:
    plan, state = ctx.plan, ctx.state
    state.poc.transfers = await copy_workloads(ctx, "poc")
    for checkpoint in ctx.encrypted():
        state.poc.sealed.append(await move_sealed(ctx, checkpoint))
    for job in plan.workloads.jobs:
        root = await ctx.on(plan.source_env, record_code_root,
                            CodeRootInput(store=plan.source_env.storage, prefix=job.code),
                            f"record the code root of {job.name}")  # fmt: skip
        state.poc.code_roots[job.name] = root.root
    if plan.workloads.checkpoints and workflow.patched(CHECKPOINT_REPORTS):
        await checkpoint_reports(ctx)
    await bench_suite(ctx)
    if plan.bench.job is not None:
        await bench_job(ctx, next(j for j in plan.workloads.jobs if j.name == plan.bench.job))
    blocked = [v for v in state.verdicts if v.subject.startswith("checkpoint:") and v.outcome == "fail"]
    if blocked:
        ctx.start_rollback(f"checkpoint compatibility: {blocked[0].summary}", by="skyshift:poc")
        ctx.raise_if_rollback()
    verdict = state.poc.judgement.verdict if state.poc.judgement else state.poc.comparison.verdict
    await ctx.gate("poc", f"POC verdict {verdict.outcome}: {verdict.summary}")


async def checkpoint_reports(ctx: MigrationContext) -> None:
    """Each checkpoint read again at the source (digests) and judged on the target's worker after the copy."""
    source, target = ctx.plan.source_env, ctx.plan.target_env
    for checkpoint in ctx.plan.workloads.checkpoints:
        inspection = await ctx.on(
            source, inspect_checkpoint,
            InspectInput(store=source.storage, path=checkpoint.path, environment=source.name),
            f"per-tensor digests of {checkpoint.name} at {source.name}",
        )  # fmt: skip
        report = await ctx.on(
            target, checkpoint_compatibility,
            CompatibilityInput(
                name=checkpoint.name, store=target.storage, path=checkpoint.path, source=inspection,
                environment=target.name, target_gpu_type=target.compute.gpu_type,
                target_gpu_count=target.compute.gpu_count, target_world_size=checkpoint.world_size,
                sealed=ctx.sealed_at_rest(checkpoint),
            ),
            f"does {checkpoint.name} load on {target.name}?",
        )  # fmt: skip
        ctx.state.poc.checkpoints.append(report)
        ctx.record_verdict(report.verdict)


async def bench_suite(ctx: MigrationContext) -> None:
    """The built-in micro-suite on each side, one after the other (an idle host each), then judged."""
    plan, poc_state = ctx.plan, ctx.state.poc
    bench = plan.bench
    for env, results in ((plan.source_env, poc_state.source_bench), (plan.target_env, poc_state.target_bench)):
        request = BenchInput(
            environment=env.name, trials=bench.trials, matrix_size=bench.matrix_size, device=bench.device,
            seconds_per_test=bench.seconds_per_test, sustained_seconds=bench.sustained_seconds,
            allreduce_processes=bench.allreduce_processes,
            telemetry_url=metadata_spec(env.storage).url + f"/bench/{ctx.state.migration_id}",
        )  # fmt: skip
        summary = f"benchmark on {env.name} ({bench.trials} trials)"
        results.append(await ctx.on(env, run_benchmark_activity, request, summary, timeout=timedelta(hours=1)))
    thresholds = plan.thresholds
    prices = (price_per_hour(plan.source_env), price_per_hour(plan.target_env))
    if workflow.patched(BENCH_SUITE_JUDGE):
        judgement = await ctx.control(
            judge_bench_activity,
            JudgeBenchInput(
                source=poc_state.source_bench, target=poc_state.target_bench,
                tolerances=BenchTolerances(
                    min_throughput_ratio=thresholds.min_throughput_ratio,
                    latency_increase_pct=thresholds.latency_increase_pct,
                    min_ceiling_fraction=bench.min_ceiling_fraction,
                    max_sustained_drop_pct=bench.max_sustained_drop_pct,
                ),
                source_name=plan.source, target_name=plan.target, source_price_per_hour=prices[0],
                target_price_per_hour=prices[1], max_cost_ratio=thresholds.max_cost_ratio,
            ),
            "micro-suite side by side, against datasheet ceilings; environment matrix",
        )  # fmt: skip
        poc_state.judgement, poc_state.comparison = judgement, judgement.comparison
        ctx.record_verdict(judgement.verdict)
        return
    comparison = await ctx.control(
        compare_benchmarks,
        CompareBenchInput(
            source=poc_state.source_bench, target=poc_state.target_bench,
            source_price_per_hour=prices[0], target_price_per_hour=prices[1],
            min_throughput_ratio=thresholds.min_throughput_ratio, max_cost_ratio=thresholds.max_cost_ratio,
        ),
        "compare benchmarks and cost per unit of work",
    )  # fmt: skip
    poc_state.comparison = comparison
    ctx.record_verdict(comparison.verdict)


async def bench_job(ctx: MigrationContext, job: JobSpec) -> None:
    """The operator's job for `bench.job_steps` steps, `trials` times on each side: speed and cost per epoch."""
    plan = ctx.plan
    trials = {}
    for env in (plan.source_env, plan.target_env):
        trials[env.name] = [await run_job_on(ctx, job, env, "bench", trial) for trial in range(plan.bench.trials)]
    comparison = await ctx.control(
        judge_job_bench,
        JudgeJobBenchInput(
            job=job,
            source=JobBenchSide(environment=plan.source, trials=trials[plan.source],
                                price_per_gpu_hour=plan.source_env.compute.price_per_gpu_hour),
            target=JobBenchSide(environment=plan.target, trials=trials[plan.target],
                                price_per_gpu_hour=plan.target_env.compute.price_per_gpu_hour,
                                egress_usd=ctx.state.egress_cost_usd),
            cost=plan.bench.cost, min_throughput_ratio=plan.thresholds.min_throughput_ratio,
            max_cost_ratio=plan.thresholds.max_cost_ratio, confidence=plan.thresholds.confidence,
        ),
        f"{job.name}: samples/s, step time, cost per epoch on both sides",
    )  # fmt: skip
    ctx.state.poc.job_bench = comparison
    ctx.record_verdict(comparison.verdict)
