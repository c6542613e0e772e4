"""Live handoff of a production training run at cutover (plan `cutover.training: handoff`).

When the cutover begins, the migration starts the plan's resumable job as a production run on the
source (a TrainingRunWorkflow child that outlives the migration: it is the operator's training, not
the migration's). When the handoff stage is entered (default: the last), the run's way back (the
`hand_back_training` compensation) is registered *first*, then the run is asked to move to the
target, and the stage waits for the run's report of the move. A move the run had to hand back (its
first steps on the target left its own continuation) or could not make (SIGTERM ignored) fails the
cutover: the migration rolls back, and the run is already back on, or still on, the source.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.jobs import JobTolerances
    from activities.jobs.hand_back import HandBackInput, hand_back_training
    from workflows.phases.context import MigrationContext
    from workflows.plan import CONTROL_TASK_QUEUE, Stage
    from workflows.saga import Compensation
    from workflows.training_events import MoveRequest
    from workflows.training_run import TrainingRunInput, TrainingRunWorkflow
    from workflows.versions import TRAINING_HANDOFF


#: A hand-back is a whole move (SIGTERM, checkpoint, sync, resume, judged first steps): minutes, not seconds.
HAND_BACK_TIMEOUT = timedelta(hours=1)


def _handoff_stage(ctx: MigrationContext) -> str:
    spec = ctx.plan.cutover
    return spec.handoff_stage or spec.stages[-1].name


async def on_stage_entry(ctx: MigrationContext, stage: Stage) -> None:
    """At a cutover stage's entry: start the production run (first stage), hand it off (handoff stage)."""
    if ctx.plan.cutover.training != "handoff" or not workflow.patched(TRAINING_HANDOFF):
        return
    progress = ctx.state.training
    if progress.run_id is None:
        await _start(ctx)
    if stage.name == _handoff_stage(ctx) and not progress.move_requested:
        await _hand_off(ctx, stage)


async def _start(ctx: MigrationContext) -> None:
    plan, progress = ctx.plan, ctx.state.training
    resumable = [j for j in plan.workloads.jobs if j.resume is not None]
    job = next(j for j in resumable if j.name == (plan.cutover.training_job or resumable[0].name))
    run_id = f"{ctx.state.migration_id}-training-{job.name}"
    tolerances: JobTolerances = plan.parallel_run.jobs
    await workflow.start_child_workflow(
        TrainingRunWorkflow.run,
        TrainingRunInput(run_id=run_id, job=job, environments=[plan.source_env, plan.target_env], start_on=plan.source,
                         datasets={d.name: d.path for d in plan.workloads.datasets if d.name in job.uses},
                         code_root=ctx.state.poc.code_roots.get(job.name), watch_steps=plan.cutover.watch_steps,
                         tolerances=tolerances),
        id=run_id, parent_close_policy=ParentClosePolicy.ABANDON,
        static_summary=f"production run of {job.name}, started on {plan.source} at the cutover",
    )  # fmt: skip
    progress.run_id, progress.job, progress.environment = run_id, job.name, plan.source
    ctx.audit("skyshift", "training_started", f"{job.name}: production run {run_id} on {plan.source}")


async def _hand_off(ctx: MigrationContext, stage: Stage) -> None:
    plan, progress = ctx.plan, ctx.state.training
    ctx.register_undo(
        Compensation.of(
            hand_back_training,
            HandBackInput(run_id=progress.run_id, to=plan.source, reason="rollback: the run back to the source"),
            task_queue=CONTROL_TASK_QUEUE, summary=f"hand {progress.job}'s production run back to {plan.source}",
            timeout_s=HAND_BACK_TIMEOUT.total_seconds(),
        ),
        announce=f"hand {progress.job}'s production run back to {plan.source}",
    )  # fmt: skip
    seen = len(progress.events)
    progress.move_requested = True
    await workflow.get_external_workflow_handle(progress.run_id).signal(
        TrainingRunWorkflow.move,
        MoveRequest(to=plan.target, reason=f"cutover stage {stage.name}", by="skyshift:cutover"),
    )
    ctx.audit("skyshift", "training_handoff", f"{progress.job}: asked to move to {plan.target} at {stage.name}")
    await ctx.wait(lambda: len(progress.events) > seen, summary=f"{progress.job}: handoff to {plan.target}")
    event = progress.events[-1]
    ctx.audit("skyshift", f"training_{event.outcome}",
              f"{progress.job}: {event.kind} {event.origin} → {event.destination}, steps lost {event.steps_lost}, "
              f"SIGTERM → first step {event.seconds_to_first_step}s, {event.bytes_moved} bytes moved")  # fmt: skip
    ctx.show_details()
    if event.outcome == "ended_first":
        return  # the run finished on the source before it could move: nothing to hand off
    if event.outcome != "moved":
        ctx.start_rollback(f"training handoff of {progress.job}: {event.kind}: {event.summary}", by="skyshift:training")
        ctx.raise_if_rollback()
