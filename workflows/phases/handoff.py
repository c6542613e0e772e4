"""Moving a running job between environments: SIGTERM → checkpoint → delta sync → resume elsewhere.

One move for a handoff (the parallel run's fourth arm, a cutover), a preemption and a failback:
the origin's worker sends the job SIGTERM at a step and waits `resume.grace` for its checkpoint
(put in the origin's metadata store, outside the operator's data); a delta-sync child moves that
prefix to the destination's metadata store (only changed chunks cross; its undo is registered
first); the destination's worker resumes the job from it. A job that does not checkpoint in time
ends the move there: nothing is synced, nothing runs on the destination, and the run stays on the
origin with its newest checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow
from temporalio.workflow import ChildWorkflowCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.jobs import JobResult, JobSpec
    from activities.stores.base import metadata_spec
    from activities.transfer.ledger import LedgerInput, ledger_key, remove_created
    from workflows.phases.context import MigrationContext
    from workflows.phases.job_runs import run_job_on
    from workflows.plan import Environment
    from workflows.saga import Compensation
    from workflows.sync import DatasetSyncWorkflow, SyncInput, SyncResult


@dataclass
class Move:
    before: JobResult
    sync: SyncResult | None = None
    after: JobResult | None = None


def checkpoint_prefix(ctx: MigrationContext, job: JobSpec, arm: str) -> str:
    """The same prefix on both sides (in each environment's metadata store): the delta engine rebuilds
    the new checkpoint from the one the destination already holds."""
    return f"jobs/{ctx.state.migration_id}/{job.name}/{arm}-checkpoint"


async def move_checkpoint(ctx: MigrationContext, job: JobSpec, origin: Environment, destination: Environment,
                          prefix: str, arm: str) -> SyncResult:  # fmt: skip
    """The checkpoint prefix delta-synced origin → destination as a child workflow; its undo first."""
    source, target = metadata_spec(origin.storage), metadata_spec(destination.storage)
    ledger = ledger_key(ctx.state.migration_id, f"{job.name}-{arm}-checkpoint")
    ctx.register_undo(
        Compensation.of(
            remove_created, LedgerInput(target=target, ledger_key=ledger), task_queue=destination.task_queue,
            summary=f"delete {job.name}'s handed-off checkpoint at {destination.name}",
        ),
        announce=f"delete {job.name}'s handed-off checkpoint at {destination.name}",
    )  # fmt: skip
    result = await workflow.execute_child_workflow(
        DatasetSyncWorkflow.run,
        SyncInput(source=source, target=target, source_queue=origin.task_queue, target_queue=destination.task_queue,
                  path=prefix, egress_per_gb_usd=origin.egress_per_gb_usd, ledger_key=ledger),
        id=f"{ctx.state.migration_id}-{arm}-sync-{job.name}-checkpoint",
        static_summary=f"{job.name}'s checkpoint: {origin.name} → {destination.name}",
        cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
    )  # fmt: skip
    ctx.meter_egress(result.egress_bytes, result.egress_cost_usd)
    return result


async def hand_off(ctx: MigrationContext, job: JobSpec, origin: Environment, destination: Environment,
                   at_step: int, arm: str = "handoff") -> Move:  # fmt: skip
    """SIGTERM at `at_step` on `origin`, the checkpoint moved, resumed on `destination` to the end."""
    assert job.resume is not None
    prefix = checkpoint_prefix(ctx, job, arm)
    before = await run_job_on(ctx, job, origin, arm, checkpoints=metadata_spec(origin.storage),
                              handoff_at_step=at_step, checkpoint_prefix=prefix)  # fmt: skip
    if before.status != "checkpointed":
        ctx.audit("skyshift", "handoff_failed", f"{job.name} on {origin.name}: {before.detail}")
        return Move(before=before)
    synced = await move_checkpoint(ctx, job, origin, destination, prefix, arm)
    ctx.audit("skyshift", "handoff", f"{job.name}: step {before.checkpoint.step} checkpointed on {origin.name}, "
              f"{synced.egress_bytes} bytes sent to {destination.name}")  # fmt: skip
    # The resumed run checkpoints under the same prefix on its side: a later move (back) starts from there.
    after = await run_job_on(ctx, job, destination, arm, trial=1, checkpoints=metadata_spec(destination.storage),
                             resume_from=prefix, checkpoint_prefix=prefix)  # fmt: skip
    return Move(before=before, sync=synced, after=after)
