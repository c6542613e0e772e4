"""MigrationWorkflow: assess → poc → parallel_run → shadow → cutover → decommission, with a way back.

The workflow keeps what is its own: the order of the phases (`lifecycle`, DESIGN §3's table as
code), the operator's messages, and the undo that runs on every exit other than success. The work
of each phase is in `workflows/phases/`, done through one `MigrationContext` (gates, waits, audit,
verdicts, undo registration) that this class owns. Every step that changes the world registers its
compensation first; a forced rollback, a failing verdict, a failure or a cancellation runs them in
reverse until all have succeeded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.traffic import route_traffic
    from workflows.failures import failure_reason, was_cancelled
    from workflows.phases import continuous
    from workflows.phases.assess import assess
    from workflows.phases.context import MigrationContext, RollbackRequested, StopMigration
    from workflows.phases.cutover import cutover
    from workflows.phases.decommission import decommission
    from workflows.phases.failback import FailedBack, failback
    from workflows.phases.parallel_run import parallel_run
    from workflows.phases.poc import poc
    from workflows.phases.shadow import shadow, shadowed
    from workflows.plan import MigrationPlan
    from workflows.saga import Compensation, undo_name
    from workflows.state import (
        LEGACY_PHASES,
        SA_OUTCOME,
        SA_TRAFFIC,
        ApproveInput,
        FailbackInput,
        MigrationInput,
        MigrationState,
        OperatorInput,
        RollbackInput,
    )
    from workflows.training_events import RunEvent
    from workflows.versions import COMPENSATE_EVERY_EXIT, INTERRUPT_LONG_WORK


class Phase(NamedTuple):
    name: str
    work: Callable[[MigrationContext], Awaitable[None]]
    #: Asked when the phase's turn comes: a phase with nothing to do is not entered at all (no phase
    #: change in history or the UI).
    applies: Callable[[MigrationContext], bool] = lambda ctx: True


@workflow.defn
class MigrationWorkflow:
    @workflow.init
    def __init__(self, request: MigrationInput) -> None:
        state = request.resume or MigrationState(migration_id=workflow.info().workflow_id, plan_name=request.plan.name)
        if state.next_phase and not state.completed_phases:
            # State carried across continue-as-new by a worker that counted phases by index.
            state.completed_phases = list(LEGACY_PHASES[: state.next_phase])
        self.ctx = MigrationContext(request.plan, state)

    @property
    def plan(self) -> MigrationPlan:
        return self.ctx.plan

    @property
    def state(self) -> MigrationState:
        return self.ctx.state

    def lifecycle(self) -> list[Phase]:
        """The phases, in order: DESIGN §3's table as code."""
        return [
            Phase("assess", assess),
            Phase("poc", poc),
            Phase("parallel_run", parallel_run),
            Phase("shadow", shadow, applies=lambda ctx: bool(shadowed(ctx))),
            Phase("cutover", cutover),
            Phase("decommission", decommission),
            Phase("failback", failback, applies=lambda ctx: ctx.state.failback.closes_at is not None),
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: MigrationInput) -> MigrationState:
        ctx = self.ctx
        if request.resume is None:
            ctx.audit("skyshift", "started", f"plan {self.plan.name}: {self.plan.source} → {self.plan.target}")
        try:
            for phase, work, applies in self.lifecycle():
                if phase in self.state.completed_phases or not applies(ctx):
                    continue
                continuous.start(ctx)  # once the POC is done, and again after continue-as-new
                ctx.set_phase(phase)
                await ctx.checkpoint()
                await self._interruptible(work(ctx), phase)
                self.state.completed_phases.append(phase)
                self.state.next_phase = len(self.state.completed_phases)
            self._finish("completed", "all phases done")
        except RollbackRequested:
            request_ = self.state.rollback_request
            await self._undo("rolled_back", f"{request_.reason} (by {request_.by})" if request_ else "rollback")
        except StopMigration as stop:
            await self._undo("stopped", str(stop))
        except FailedBack as back:
            self._finish("failed_back", str(back))  # no undo: the target keeps its data for another attempt
        except asyncio.CancelledError:
            await self._undo("cancelled", "workflow cancelled")
            raise
        except Exception as error:
            if not workflow.patched(COMPENSATE_EVERY_EXIT):
                raise  # a history recorded before every exit compensated: replay it as it ran
            cancelled = was_cancelled(error)
            reason = failure_reason(error)
            await self._undo("cancelled" if cancelled else "failed", f"{self.state.phase}: {reason}")
            raise ApplicationError(
                f"migration {self.state.outcome} in {self.state.ended_in}: {reason}; "
                f"compensations run: {len(self.state.saga.completed)}, failed: {len(self.state.saga.failed)}",
                type="MigrationFailed",
                non_retryable=True,
            ) from None
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    async def _interruptible(self, work: Coroutine[Any, Any, None], phase: str) -> None:
        """Run a phase so that a rollback request or a cancel stops its in-flight work first.

        The phase runs as its own task. A rollback request cancels it and waits until its
        activities and children have *acknowledged* the cancellation (they use
        WAIT_CANCELLATION_COMPLETED), so no writer is still committing objects when the
        compensations start deleting them.
        """
        task = asyncio.ensure_future(work)
        try:
            await workflow.wait_condition(lambda: task.done() or self.state.rollback_request is not None)
        except asyncio.CancelledError:
            task.cancel()
            await workflow.wait([task])
            raise
        if not task.done():
            if not workflow.patched(INTERRUPT_LONG_WORK):
                await task  # recorded before interruption existed: the phase ran to its next wait point
                return
            self.ctx.audit("skyshift", "interrupting", f"{phase}: cancelling in-flight work before compensating")
            task.cancel()
            await workflow.wait([task])
            raise RollbackRequested()
        task.result()

    # -- operator messages ----------------------------------------------------------------------

    @workflow.query
    def status(self) -> MigrationState:
        return self.state

    @workflow.update
    def approve(self, request: ApproveInput) -> str:
        gate = self.state.pending_gate
        assert gate is not None  # guaranteed by the validator
        self.ctx.audit(request.by, "approved", f"{gate.stage}{': ' + request.note if request.note else ''}")
        self.state.pending_gate = None
        self.ctx.show_details()
        return gate.stage

    @approve.validator
    def _validate_approve(self, request: ApproveInput) -> None:
        gate = self.state.pending_gate
        if gate is None:
            raise ValueError(f"nothing is awaiting approval (phase {self.state.phase}); '{request.stage}' rejected")
        if gate.stage != request.stage:
            raise ValueError(f"'{request.stage}' is not awaiting approval; the pending gate is '{gate.stage}'")

    @workflow.signal
    def rollback(self, raw: Any) -> None:
        """Fire-and-forget form of `request_rollback`, for clients that only send signals.

        Taken raw and validated here: a malformed request from any Temporal client is audited as
        rejected instead of being dropped by the SDK with only a worker log line.
        """
        try:
            request = RollbackInput.model_validate(raw)
        except ValidationError as error:
            self.ctx.audit("unknown", "rollback_rejected", f"malformed rollback signal: {error.errors()[0]['msg']}")
            return
        if self._rollback_refusal() is not None:
            self.ctx.audit(request.by, "rollback_ignored", f"{request.reason}: {self._rollback_refusal()}")
            return
        self.ctx.start_rollback(request.reason, request.by)

    @workflow.update
    def request_rollback(self, request: RollbackInput) -> str:
        """Force a rollback; the caller learns at once whether it was accepted (the validator) and the phase."""
        self.ctx.start_rollback(request.reason, request.by)
        return self.state.phase

    @request_rollback.validator
    def _validate_rollback(self, request: RollbackInput) -> None:
        refusal = self._rollback_refusal()
        if refusal is not None:
            raise ValueError(f"rollback rejected: {refusal}")
        if not request.reason.strip():
            raise ValueError("reason: say why the migration is rolled back")

    def _rollback_refusal(self) -> str | None:
        if self.state.phase == "failback" and self.state.outcome is None:
            return (f"the migration has completed; until {self.state.failback.closes_at:%Y-%m-%d %H:%M} UTC the way "
                    f"back is `skyshift failback {self.state.migration_id} --reason ...`")  # fmt: skip
        if self.state.outcome is not None:
            return f"the migration already ended ({self.state.outcome})"
        if self.state.point_of_no_return:
            return "past the point of no return: the source is being released"
        if self.state.rollback_request is not None:
            return f"a rollback is already under way (requested by {self.state.rollback_request.by})"
        return None

    @workflow.update
    def skip_stage(self, request: OperatorInput) -> str:
        stage = self.state.stage or ""
        self.state.cutover.skip_requested = True
        self.ctx.audit(request.by, "skip_stage", f"{stage}{': ' + request.note if request.note else ''}")
        return stage

    @skip_stage.validator
    def _validate_skip(self, request: OperatorInput) -> None:
        self._require_cutover_stage("skip_stage")
        if self.state.cutover.stage_index >= len(self.plan.cutover.stages) - 1:
            raise ValueError("the last stage cannot be skipped: it is where the cutover ends")

    @workflow.update
    def promote(self, request: OperatorInput) -> str:
        self.state.cutover.promote_requested = True
        self.ctx.audit(
            request.by,
            "promote",
            f"to {self.plan.cutover.stages[-1].name}{': ' + request.note if request.note else ''}",
        )
        return self.plan.cutover.stages[-1].name

    @promote.validator
    def _validate_promote(self, request: OperatorInput) -> None:
        self._require_cutover_stage("promote")

    def _require_cutover_stage(self, action: str) -> None:
        if self.state.phase != "cutover" or self.state.outcome is not None:
            raise ValueError(f"{action} applies during cutover; the migration is in {self.state.phase}")

    @workflow.update
    async def failback(self, request: FailbackInput) -> str:
        """In the failback window: send traffic back to the source (answered once it is there), or rehearse it."""
        fb = self.state.failback
        if request.drill:
            fb.drill_requests += 1
            wanted = fb.drill_requests
            self.ctx.audit(request.by, "failback_drill_requested", request.reason)
            await workflow.wait_condition(lambda: fb.drills_done >= wanted or self.state.outcome is not None)
            drill = fb.drills[-1] if fb.drills_done >= wanted and fb.drills else None
            return f"drill {drill.outcome}: {drill.summary}" if drill else f"no drill: {self.state.outcome_reason}"
        fb.request, fb.requested_at = request, workflow.now()
        self.ctx.audit(request.by, "failback_requested", request.reason)
        self.ctx.show_details()
        await workflow.wait_condition(lambda: fb.traffic_back_s is not None or self.state.outcome is not None)
        if fb.traffic_back_s is None:
            return f"failback did not complete: {self.state.outcome_reason}"
        return f"traffic back on {self.plan.source} in {fb.traffic_back_s:.1f}s"

    @failback.validator
    def _validate_failback(self, request: FailbackInput) -> None:
        fb = self.state.failback
        if self.state.phase != "failback" or self.state.outcome is not None:
            if fb.closes_at is not None and self.state.outcome is not None:
                raise ValueError(
                    f"the failback window closed at {fb.closes_at:%Y-%m-%d %H:%M} UTC "
                    f"({self.state.outcome}): there is no way back to {self.plan.source} any more"
                )
            raise ValueError(f"failback applies in the window after the final sync; the migration is in "
                             f"{self.state.phase}: before completion use `skyshift rollback`")  # fmt: skip
        if fb.request is not None:
            raise ValueError(f"a failback is already under way (requested by {fb.request.by})")
        if not request.drill and not request.reason.strip():
            raise ValueError("reason: say why traffic goes back to the source")

    @workflow.signal
    def pause(self, request: OperatorInput) -> None:
        self.state.paused = True
        self.ctx.audit(request.by, "paused", request.note)
        self.ctx.show_details()

    @workflow.signal
    def resume(self, request: OperatorInput) -> None:
        self.state.paused = False
        self.ctx.audit(request.by, "resumed", request.note)
        self.ctx.show_details()

    @workflow.signal(name="training_run_event")
    def training_run_event(self, event: RunEvent) -> None:
        """The production run (cutover.training: handoff) reports a move it made; the cutover waits on it."""
        training = self.state.training
        training.events = [*training.events, event][-20:]
        training.environment = event.destination if event.outcome == "moved" else event.origin

    # -- the undo ------------------------------------------------------------------------------

    async def _undo(self, outcome: str, reason: str) -> None:
        """Compensate newest first, shielded from a cancellation of the workflow, then record the outcome."""
        self.state.ended_in = self.state.phase
        self.ctx.set_phase("rolling_back")
        self.state.pending_gate = None
        await asyncio.shield(asyncio.ensure_future(self._stop_then_compensate()))
        for failure in self.state.saga.failed:
            self.ctx.audit("skyshift", "compensation_failed", f"{failure.summary}: {failure.error}")
        if self.state.saga.failed:
            reason += f"; {len(self.state.saga.failed)} compensations failed and need an operator (see audit)"
        self._finish(outcome, reason)

    async def _stop_then_compensate(self) -> None:
        """A continuous-sync pass in flight is stopped and waited for first: no writer races the undo."""
        await continuous.stop(self.ctx, "undo")
        await self.state.saga.compensate(self._compensated)

    def _compensated(self, step: Compensation) -> None:
        if step.activity == undo_name(route_traffic):
            self.state.traffic_percent = 0
            workflow.upsert_search_attributes([SA_TRAFFIC.value_set(0)])
        self.ctx.audit("skyshift", "compensated", step.summary)

    def _finish(self, outcome: str, reason: str) -> None:
        self.state.outcome = outcome
        self.state.outcome_reason = reason
        self.ctx.set_phase("done")  # SkyshiftPhase holds what `status` shows; the outcome has its own attribute
        workflow.upsert_search_attributes([SA_OUTCOME.value_set(outcome)])
        self.ctx.audit("skyshift", outcome, reason)
        self.ctx.show_details()
