"""Moving workloads to the target: a delta-sync child per workload, sealed checkpoints, side by side.

Shared by the POC (the first copy) and decommission (the final, incremental one). Every move
registers its undo before it starts, and egress is metered from what each move reports it sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from temporalio import workflow
from temporalio.workflow import ChildWorkflowCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.checkpoints.sealed import (
        OpenSealedInput,
        RemoveSealedInput,
        SealInput,
        SealResult,
        open_sealed,
        remove_sealed,
        seal_checkpoint,
    )
    from activities.transfer.ledger import LedgerInput, ledger_key, remove_created
    from workflows.phases.context import MigrationContext
    from workflows.plan import Checkpoint
    from workflows.saga import Compensation
    from workflows.sync import DatasetSyncWorkflow, SyncInput, SyncResult
    from workflows.versions import COMPENSATE_EVERY_EXIT


async def together(works: list[Coroutine[Any, Any, SyncResult]]) -> list[SyncResult]:
    """Run work side by side; when one fails, stop the others (and wait for them) before the undo."""
    tasks = [asyncio.ensure_future(work) for work in works]
    if not tasks:
        return []
    try:
        await workflow.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        # Cancelled from above (a rollback, a cancel): `wait` does not pass that on; stop each child and wait.
        for task in tasks:
            task.cancel()
        await workflow.wait(tasks)
        raise
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed and workflow.patched(COMPENSATE_EVERY_EXIT):
        for task in tasks:
            task.cancel()
        await workflow.wait(tasks)
        raise failed[0].exception()  # the failure, not the cancellations it caused
    return [await task for task in tasks]


async def copy_workloads(ctx: MigrationContext, phase: str) -> list[SyncResult]:
    """Every plain workload delta-synced to the target at once, as child workflows."""
    return await together([copy_workload(ctx, name, path, phase) for name, path in ctx.plain_workloads()])


async def copy_workload(ctx: MigrationContext, name: str, path: str, phase: str) -> SyncResult:
    """Delta-sync one workload to the target as a child workflow; its undo is registered first."""
    source, target = ctx.plan.source_env, ctx.plan.target_env
    ledger = ledger_key(ctx.state.migration_id, name)
    ctx.register_undo(
        Compensation.of(
            remove_created, LedgerInput(target=target.storage, ledger_key=ledger), task_queue=target.task_queue,
            summary=f"delete what the migration created for {name} at {target.name}",
        ),
        announce=f"delete {name} copies at {target.name}",
    )  # fmt: skip
    result = await workflow.execute_child_workflow(
        DatasetSyncWorkflow.run,
        SyncInput(source=source.storage, target=target.storage, source_queue=source.task_queue,
                  target_queue=target.task_queue, path=path, egress_per_gb_usd=source.egress_per_gb_usd,
                  ledger_key=ledger),
        id=f"{ctx.state.migration_id}-{phase}-sync-{name}",
        static_summary=f"sync {name}: {source.name} → {target.name}",
        cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
    )  # fmt: skip
    ctx.meter_egress(result.egress_bytes, result.egress_cost_usd)
    ctx.show_details()
    return result


async def move_sealed(ctx: MigrationContext, checkpoint: Checkpoint) -> SealResult:
    """Move a checkpoint sealed under the operator's key; only the target's worker decrypts it."""
    source, target = ctx.plan.source_env, ctx.plan.target_env
    ctx.register_undo(
        Compensation.of(remove_sealed, RemoveSealedInput(store=target.storage, sealed_path=checkpoint.path),
                        task_queue=target.task_queue,
                        summary=f"delete the sealed copy of {checkpoint.name} at {target.name}"),
        announce=f"delete the sealed copy of {checkpoint.name} at {target.name}",
    )  # fmt: skip
    assert checkpoint.encryption is not None
    sealed = await ctx.on(
        source, seal_checkpoint,
        SealInput(name=checkpoint.name, source=source.storage, source_path=checkpoint.path,
                  target=target.storage, target_path=checkpoint.path, key=checkpoint.encryption),
        f"seal {checkpoint.name} at {source.name} and send the chunks the target lacks",
    )  # fmt: skip
    ctx.meter_egress(sealed.bytes_sent, sealed.bytes_sent / 1e9 * source.egress_per_gb_usd)
    if ctx.sealed_at_rest(checkpoint):
        ctx.show_details()
        return sealed  # ciphertext at rest: only the target's worker decrypts it, into its scratch, when it loads it
    opened = await ctx.on(
        target, open_sealed,
        OpenSealedInput(name=checkpoint.name, store=target.storage, sealed_path=checkpoint.path,
                        destination_path=checkpoint.path),
        f"verify and decrypt {checkpoint.name} on {target.name}'s worker",
    )  # fmt: skip
    ctx.register_undo(
        Compensation.of(remove_sealed, RemoveSealedInput(store=target.storage, sealed_path=checkpoint.path,
                                                         written=opened.written),
                        task_queue=target.task_queue,
                        summary=f"delete the decrypted copy of {checkpoint.name} at {target.name}"),
        announce=f"delete the decrypted copy of {checkpoint.name} at {target.name}",
    )  # fmt: skip
    ctx.show_details()
    return sealed
