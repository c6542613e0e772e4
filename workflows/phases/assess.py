"""Assess: what the source holds, what moving it costs and takes, and whether it may move at all.

Stops (undoing nothing, since nothing was done) on a missing source, an unsafe checkpoint or a
residency breach; asks an operator when the projected egress exceeds the plan's budget.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.assess import (
        AssessInput,
        CheckpointFacts,
        EnvironmentFacts,
        InventoryInput,
        inventory_storage,
        project_assessment,
    )
    from activities.checkpoints.inspect import inspect_checkpoint
    from activities.checkpoints.models import InspectInput
    from workflows.phases.context import MigrationContext, StopMigration
    from workflows.plan import Environment
    from workflows.versions import CHECKPOINT_REPORTS, EMPTY_SOURCE_STOPS

#: Checkpoint errors that mean "never load this": the migration stops at assess, naming the file.
CHECKPOINT_REFUSALS = ("UnsafeCheckpointError", "MalformedCheckpointError", "UnsupportedCheckpointError")


def facts(env: Environment) -> EnvironmentFacts:
    return EnvironmentFacts(
        name=env.name,
        region=env.region,
        egress_per_gb_usd=env.egress_per_gb_usd,
        bandwidth_gbps=env.bandwidth_gbps,
        allowed_data_regions=env.allowed_data_regions,
        gpu_type=env.compute.gpu_type,
        gpu_count=env.compute.gpu_count,
    )


async def assess(ctx: MigrationContext) -> None:
    plan, source = ctx.plan, ctx.plan.source_env
    workloads = (
        [(d.name, "dataset", d.path) for d in plan.workloads.datasets]
        + [(c.name, "checkpoint", c.path) for c in plan.workloads.checkpoints]
        + [(j.name, "dataset", j.code) for j in plan.workloads.jobs]
    )  # a job's code moves like a dataset
    inventory = await ctx.on(
        source, inventory_storage, InventoryInput(store=source.storage, workloads=workloads),
        f"inventory {source.storage.url}",
    )  # fmt: skip
    empty = [w.name for w in inventory.workloads if w.objects == 0]
    if empty and workflow.patched(EMPTY_SOURCE_STOPS):
        raise StopMigration(
            f"no objects at {source.name} for {', '.join(empty)}: a missing source is never an empty dataset "
            "(check the workload paths and the storage URL)"
        )
    parameters = await inspect_checkpoints(ctx) if workflow.patched(CHECKPOINT_REPORTS) else {}
    report = await ctx.control(
        project_assessment,
        AssessInput(
            source=facts(source),
            target=facts(plan.target_env),
            checkpoints=[
                CheckpointFacts(name=c.name, parameters_billion=c.parameters_billion or parameters.get(c.name))
                for c in plan.workloads.checkpoints
            ],
            egress_budget_usd=plan.egress_budget_usd,
            inventory=inventory,
        ),
        "project egress, time, GPU fit and residency",
    )
    ctx.state.assessment = report
    ctx.show_details()
    if not report.residency_ok:
        raise StopMigration(f"data residency: {report.residency_detail}")
    if report.over_budget:
        await ctx.gate(
            "egress-budget",
            f"projected egress ${report.egress_cost_usd:,.2f} exceeds the budget ${plan.egress_budget_usd:,.2f}",
        )


async def inspect_checkpoints(ctx: MigrationContext) -> dict[str, float]:
    """Read every checkpoint's headers at the source, executing nothing: refuse what would run code."""
    source, parameters = ctx.plan.source_env, {}
    for checkpoint in ctx.plan.workloads.checkpoints:
        try:
            inspection = await ctx.on(
                source, inspect_checkpoint,
                InspectInput(store=source.storage, path=checkpoint.path, environment=source.name, digests=False),
                f"inspect {checkpoint.name} (headers, nothing executed)",
            )  # fmt: skip
        except ActivityError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type in CHECKPOINT_REFUSALS:
                raise StopMigration(f"checkpoint {checkpoint.name}: {cause.message}") from None
            raise
        parameters[checkpoint.name] = inspection.parameters / 1e9
    return parameters
