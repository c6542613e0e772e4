"""Decommission: a monitored soak, a final delta sync, archives verified at the target, then the way back.

Always behind an operator's approval. The soak judges the endpoints like a cutover stage. After the
final sync the failback window opens (workflows/phases/failback.py) and the source is released only
when it closes; plans recorded before the window existed release it here. Releasing the source is
the point of no return: it is recorded first, the undo list is forgotten, and only then is anything
at the source deleted.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.checkpoints.at_rest import verify_sealed_archive
    from activities.transfer.archive import ArchiveInput, archive_workload, release_source, verify_archive
    from workflows.phases import continuous
    from workflows.phases.context import MigrationContext
    from workflows.phases.cutover import StagedCutover
    from workflows.phases.transfers import copy_workloads, move_sealed
    from workflows.plan import Stage
    from workflows.versions import FAILBACK_WINDOW, MONITORED_SOAK


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
    await soak(ctx)
    await ctx.gate(
        "decommission",
        "final sync and archive, then release the source (once the failback window closes, "
        "if the plan has one): the last steps cannot be undone",
    )
    result = ctx.state.decommission
    await continuous.stop(ctx, "final sync")  # a pass in flight is cancelled and waited for; the final sync redoes it
    result.final_sync = await copy_workloads(ctx, "final")
    for checkpoint in ctx.encrypted():
        await move_sealed(ctx, checkpoint)  # incremental: only chunks the sealed copy lacks are sent
    sealed = {c.name for c in ctx.encrypted() if ctx.sealed_at_rest(c)}
    for name, path in ctx.workloads():
        request = archive_input(ctx, name, path)
        archived = await ctx.on(plan.source_env, archive_workload, request, f"archive {name}")
        result.archived_objects += archived.objects
        if name in sealed:  # kept sealed at rest: checked decrypted in the target worker's scratch
            verified = await ctx.on(plan.target_env, verify_sealed_archive, request, f"verify sealed {name} at target")
        else:
            verified = await ctx.on(plan.target_env, verify_archive, request, f"verify {name} at target")
        result.verified_objects += verified.objects_verified
    if workflow.patched(FAILBACK_WINDOW) and plan.decommission.failback_window > timedelta(0):
        fb = ctx.state.failback
        fb.opened_at = workflow.now()
        fb.closes_at = fb.opened_at + plan.decommission.failback_window
        ctx.audit("skyshift", "failback_window_opened",
                  f"until {fb.closes_at:%Y-%m-%d %H:%M} UTC; the source is kept until then")  # fmt: skip
        return  # the source is released when the window closes (workflows/phases/failback.py)
    await release(ctx)


async def soak(ctx: MigrationContext) -> None:
    """At 100% before decommission: the endpoints judged every interval like a stage; a breach rolls back."""
    plan = ctx.plan
    if plan.workloads.endpoints and workflow.patched(MONITORED_SOAK):
        ctx.state.stage = "soak"
        await StagedCutover(ctx).hold(Stage(percent=100, duration=plan.soak_period, name="soak"))
        return
    await ctx.wait(lambda: False, timeout=plan.soak_period, summary="soak at 100% before decommission")


async def release(ctx: MigrationContext) -> None:
    """The point of no return, last of all, and only if the plan deletes the source."""
    plan, result = ctx.plan, ctx.state.decommission
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
