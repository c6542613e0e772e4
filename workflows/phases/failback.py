"""Failback window: after the final sync the way back stays open, kept current and rehearsable.

The case study skyshift is built from keeps "instant failback to the source for 30 days"; MGN's
finalize deletes the way back within 90 minutes. Here the migration stays open in `failback` for
`decommission.failback_window`: what the target writes (the plan's `reverse_sync` paths) is
delta-synced back to the source every `reverse_every`, so failing back loses at most one interval;
`skyshift failback ID --reason ...` sends traffic back to the source at once, then brings the newest
target data over; `--drill` checks the way back without moving anything. An operator may approve
closing the window early. Only when it closes is the source released (if the plan says so).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.workflow import ChildWorkflowCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.failback import DrillInput, failback_drill
    from activities.traffic import RouteInput, route_traffic
    from workflows.phases.context import MigrationContext
    from workflows.phases.decommission import release
    from workflows.state import SA_TRAFFIC, WINDOW_GATE, Gate, ReversePass
    from workflows.sync import DatasetSyncWorkflow, SyncInput

#: Reverse passes and drills kept in state (the audit log and history keep all of them).
KEPT = 20


class FailedBack(Exception):
    """Traffic went back to the source in the failback window: the migration ends `failed_back`."""


async def failback(ctx: MigrationContext) -> None:
    plan, state, fb = ctx.plan, ctx.state, ctx.state.failback
    spec = plan.decommission
    assert fb.opened_at is not None and fb.closes_at is not None  # set by decommission when it opened the window
    closes = fb.closes_at
    state.pending_gate = Gate(
        stage=WINDOW_GATE,
        reason=f"the way back to {plan.source} is open until {closes:%Y-%m-%d %H:%M} UTC: `skyshift failback "
        f"{state.migration_id} --reason ...` routes traffic back, `--drill` rehearses it; approve to close it now",
        opened_at=fb.opened_at,
    )
    ctx.show_details()

    def woken() -> bool:
        return fb.request is not None or state.pending_gate is None or fb.drill_requests > fb.drills_done

    while fb.request is None and state.pending_gate is not None and (now := workflow.now()) < closes:
        last = fb.passes[-1].at if fb.passes else fb.opened_at
        due = last + spec.reverse_every if spec.reverse_sync else closes
        await ctx.wait(woken, timeout=max(min(due, closes) - now, timedelta(seconds=1)),
                       summary="failback window: next reverse sync or close")  # fmt: skip
        if fb.request is not None:
            break
        if fb.drill_requests > fb.drills_done:
            await drill(ctx)
        elif spec.reverse_sync and workflow.now() >= due and workflow.now() < closes:
            await reverse_pass(ctx)
        ctx.continue_as_new_if_suggested()
    if fb.request is not None:
        state.pending_gate = None
        await fail_back(ctx)
    closed_early = state.pending_gate is None
    state.pending_gate = None
    fb.closed_by = "operator" if closed_early else "timer"
    ctx.audit(
        "skyshift",
        "failback_window_closed",
        "an operator closed it early" if closed_early else f"the window of {spec.failback_window} has passed",
    )
    await release(ctx)


async def drill(ctx: MigrationContext) -> None:
    """Rehearse: the router answers, every source endpoint serves, the source is within the recovery point."""
    plan, fb = ctx.plan, ctx.state.failback
    since = fb.passes[-1].at if fb.passes else None
    rpo = (workflow.now() - since).total_seconds() if since and plan.decommission.reverse_sync else None
    if plan.decommission.reverse_sync and since is None:
        rpo = (workflow.now() - fb.opened_at).total_seconds() if fb.opened_at else None
    limit = plan.decommission.reverse_every.total_seconds() * 2  # one interval plus one pass
    verdict = await ctx.control(
        failback_drill,
        DrillInput(router=plan.workloads.router, endpoints=plan.workloads.endpoints, provider=plan.workloads.metrics,
                   rpo_s=rpo, rpo_limit_s=limit),
        "failback drill: router, source endpoints, reverse-sync lag (nothing moved)",
    )  # fmt: skip
    fb.drills = [*fb.drills, verdict][-KEPT:]
    fb.drills_done += 1
    ctx.record_verdict(verdict)
    ctx.audit("skyshift", "failback_drill", f"{verdict.outcome}: {verdict.summary}")


async def reverse_pass(ctx: MigrationContext) -> None:
    """Every reverse-sync path, target → source, as delta-sync children (only what changed crosses)."""
    plan, state, fb = ctx.plan, ctx.state, ctx.state.failback
    source, target = plan.source_env, plan.target_env
    started = workflow.now()
    fb.passes_run += 1
    moved = objects = 0
    for n, path in enumerate(plan.decommission.reverse_sync):
        result = await workflow.execute_child_workflow(
            DatasetSyncWorkflow.run,
            SyncInput(source=target.storage, target=source.storage, source_queue=target.task_queue,
                      target_queue=source.task_queue, path=path, egress_per_gb_usd=target.egress_per_gb_usd),
            id=f"{state.migration_id}-reverse-{fb.passes_run}-{n}",
            static_summary=f"reverse sync {path}: {target.name} → {source.name}",
            cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
        )  # fmt: skip
        ctx.meter_egress(result.egress_bytes, result.egress_cost_usd)
        moved += result.egress_bytes
        objects += result.totals.objects_changed
    seconds = (workflow.now() - started).total_seconds()
    fb.reverse_bytes += moved
    fb.passes = [*fb.passes, ReversePass(at=started, bytes_sent=moved, objects=objects, seconds=seconds,
                                         rpo_s=seconds)][-KEPT:]  # fmt: skip
    ctx.show_details()


async def fail_back(ctx: MigrationContext) -> None:
    """Traffic first (the recovery time that users feel), then the newest target data to the source."""
    plan, state, fb = ctx.plan, ctx.state, ctx.state.failback
    assert fb.request is not None
    asked = fb.requested_at or workflow.now()
    if plan.workloads.router is not None:
        await ctx.control(
            route_traffic,
            RouteInput(router=plan.workloads.router, target_percent=0, reason=f"failback: {fb.request.reason}"),
            f"failback: route 100% to {plan.source}",
        )  # fmt: skip
    state.traffic_percent = 0
    workflow.upsert_search_attributes([SA_TRAFFIC.value_set(0)])
    fb.traffic_back_s = (workflow.now() - asked).total_seconds()
    ctx.audit(fb.request.by, "failed_back", f"traffic on {plan.source} {fb.traffic_back_s:.1f}s after the request")
    if plan.decommission.reverse_sync:
        await reverse_pass(ctx)
    raise FailedBack(f"{fb.request.reason} (by {fb.request.by}): traffic back on {plan.source} in "
                     f"{fb.traffic_back_s:.1f}s; the target keeps its data")  # fmt: skip
