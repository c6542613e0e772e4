"""Continuous sync: the target's datasets kept current from the POC to the final sync.

Between the POC's copy and decommission a migration runs for weeks (parallel run, shadow, a staged
cutover, the soak) while the source keeps changing; without this the final sync carries all of it
at once, on the day the source is released. With plan `sync: {every: 6h}` a loop runs beside the
phases and, every interval, delta-syncs the plan's datasets to the target as `DatasetSyncWorkflow`
children (only what changed since the last pass crosses), so the final sync carries one interval's
changes. Each pass is recorded (bytes, objects, lag; the newest `sync.keep`, with running totals).

The loop is durable the way the rest of the workflow is: its pass count and next due time live in
state, so after continue-as-new the workflow starts it again from there (and never continues as new
while a pass is in flight, which would orphan its children). It is stopped, cancelled *and waited
for*, before the final sync and before any undo, so no pass writes while the final sync or the
compensations run; a pass cancelled by a rollback has its writes undone by the same ledger the POC's
copy registered.

A plan does not name a job's checkpoint directory (a resumable job's checkpoints live under a
per-migration prefix in each environment's metadata store, moved by the handoff itself), so only the
datasets are kept current here.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from skyshift import metrics
    from workflows.phases.context import MigrationContext
    from workflows.phases.transfers import copy_workload, together
    from workflows.state import SyncPass
    from workflows.versions import CONTINUOUS_SYNC

#: Keys listed per pass in state (the pass's child keeps the full list).
LISTED = 10


def wanted(ctx: MigrationContext) -> bool:
    """The loop runs from the end of the POC until it is stopped, for plans that ask for it."""
    state = ctx.state
    return (
        ctx.plan.sync is not None
        and "poc" in state.completed_phases
        and state.sync.stopped_at is None
        and state.outcome is None
        and state.rollback_request is None
    )


def start(ctx: MigrationContext) -> None:
    """Start the loop if the plan asks and it is not running (first after the POC, again after continue-as-new)."""
    if ctx.sync_task is not None or not wanted(ctx) or not workflow.patched(CONTINUOUS_SYNC):
        return
    spec, sync = ctx.plan.sync, ctx.state.sync
    assert spec is not None
    if sync.started_at is None:
        sync.started_at = workflow.now()
        sync.next_due = sync.started_at + spec.every
        ctx.audit("skyshift", "continuous_sync_started",
                  f"datasets delta-synced to {ctx.plan.target} every {spec.every} until the final sync")  # fmt: skip
    ctx.sync_task = asyncio.ensure_future(loop(ctx))


async def stop(ctx: MigrationContext, why: str) -> None:
    """Cancel the loop (an in-flight pass stops its children) and wait until it has stopped."""
    task, sync = ctx.sync_task, ctx.state.sync
    if task is None:
        return
    ctx.sync_task = None
    if not task.done():
        task.cancel()
        await workflow.wait([task])
    sync.stopped_at, sync.stopped_for, sync.in_pass = workflow.now(), why, False
    ctx.audit("skyshift", "continuous_sync_stopped",
              f"{why}: {sync.passes_run} passes, {sync.objects} objects, {sync.bytes_sent} bytes")  # fmt: skip


async def loop(ctx: MigrationContext) -> None:
    spec, sync = ctx.plan.sync, ctx.state.sync
    assert spec is not None and sync.next_due is not None
    while True:
        wait = sync.next_due - workflow.now()
        try:
            if wait > timedelta(0):
                await workflow.sleep(wait, summary=f"continuous sync: pass {sync.passes_run + 1} due")
            await workflow.wait_condition(lambda: not ctx.state.paused)  # a paused migration moves no data
        except asyncio.CancelledError:
            return
        started = workflow.now()
        if not await run_pass(ctx):
            return
        sync.next_due = max(started + spec.every, workflow.now())


async def run_pass(ctx: MigrationContext) -> bool:
    """One pass over every dataset; False when it was cancelled (the loop is being stopped)."""
    spec, sync = ctx.plan.sync, ctx.state.sync
    assert spec is not None
    sync.passes_run += 1
    number, started = sync.passes_run, workflow.now()
    sync.in_pass = True
    record = SyncPass(number=number, at=started)
    try:
        results = await together([copy_workload(ctx, d.name, d.path, f"continuous-{number}")
                                  for d in ctx.plan.workloads.datasets])  # fmt: skip
        record.bytes_sent = sum(r.egress_bytes for r in results)
        record.objects = sum(r.totals.objects_changed for r in results)
        record.changed = [key for r in results for key in r.changed][:LISTED]
    except asyncio.CancelledError:
        record.outcome, record.detail = "cancelled", "stopped mid-pass (its writes are in the migration's ledger)"
    except Exception as error:  # a failed pass is retried at the next interval; the final sync catches up
        record.outcome, record.detail = "failed", str(error.__cause__ or error)
        ctx.audit("skyshift", "continuous_sync_failed", f"pass {number}: {record.detail}")
    finally:
        sync.in_pass = False
    record.seconds = record.lag_s = (workflow.now() - started).total_seconds()
    sync.bytes_sent += record.bytes_sent
    sync.objects += record.objects
    sync.passes = [*sync.passes, record][-spec.keep :]
    metrics.sync_pass(record.outcome, record.bytes_sent)
    ctx.show_details()
    return record.outcome != "cancelled"
