"""One run of the operator's job on an environment's worker: used by the POC benchmark and the arms."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.jobs import JobResult, JobSpec, RunJobInput, run_job
    from activities.stores.base import metadata_spec
    from workflows.phases.context import MigrationContext
    from workflows.plan import Environment


async def run_job_on(ctx: MigrationContext, job: JobSpec, env: Environment, arm: str, trial: int = 0) -> JobResult:
    """One run of the operator's job on `env`'s worker, reading that environment's copy of its data."""
    plan, state = ctx.plan, ctx.state
    datasets = {d.name: d.path for d in plan.workloads.datasets if d.name in job.uses}
    request = RunJobInput(
        job=job, environment=env.name, arm=arm, store=env.storage, datasets=datasets,
        code_root=state.poc.code_roots.get(job.name), artifacts=metadata_spec(env.storage),
        artifact_prefix=f"jobs/{state.migration_id}/{job.name}/{arm}-{trial}-{env.name}",
        stop_after_steps=plan.bench.job_steps if arm == "bench" else None,
    )  # fmt: skip
    return await ctx.on(env, run_job, request, f"{job.name} ({arm}) on {env.name}",
                        timeout=job.timeout + timedelta(minutes=30))  # fmt: skip
