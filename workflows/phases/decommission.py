"""Decommission: after the soak, a final delta sync, archives verified at the target, then the source released.

Always behind an operator's approval. Releasing the source is the point of no return: it is
recorded first, the undo list is forgotten, and only then is anything at the source deleted.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.transfer.archive import ArchiveInput, archive_workload, release_source, verify_archive
    from workflows.phases.context import MigrationContext
    from workflows.phases.transfers import copy_workloads, move_sealed


def archive_input(ctx: MigrationContext, name: str, path: str) -> ArchiveInput:
    return ArchiveInput(
        migration_id=ctx.state.migration_id,
        workload=name,
        path=path,
        source=ctx.plan.source_env.storage,
        target=ctx.plan.target_env.storage,
    )


async def decommission(ctx: MigrationContext) -> None:
    plan = ctx.plan
    await ctx.wait(lambda: False, timeout=plan.soak_period, summary="soak at 100% before decommission")
    await ctx.gate("decommission", "archive and release the source: the last steps cannot be undone")
    result = ctx.state.decommission
    result.final_sync = await copy_workloads(ctx, "final")
    for checkpoint in ctx.encrypted():
        await move_sealed(ctx, checkpoint)  # incremental: only chunks the sealed copy lacks are sent
    for name, path in ctx.workloads():
        request = archive_input(ctx, name, path)
        archived = await ctx.on(plan.source_env, archive_workload, request, f"archive {name}")
        result.archived_objects += archived.objects
        verified = await ctx.on(plan.target_env, verify_archive, request, f"verify {name} at target")
        result.verified_objects += verified.objects_verified
    if not plan.decommission.delete_source:
        ctx.audit("skyshift", "source_kept", "plan keeps the source copies (decommission.delete_source: false)")
        return
    ctx.state.point_of_no_return = True
    ctx.state.saga.forget()
    ctx.audit("skyshift", "point_of_no_return", "releasing source data; rollback is no longer possible")
    for name, path in ctx.workloads():
        released = await ctx.on(plan.source_env, release_source, archive_input(ctx, name, path),
                                f"release {name} at source")  # fmt: skip
        result.released.append(released)
