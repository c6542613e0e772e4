"""MigrationContext: the one typed surface every phase works through.

The workflow owns it (plan, state) and the phases call it for what is the lifecycle's, not theirs:
gates and waits that a rollback ends, the audit log, verdicts, undo steps registered before a step
acts, and the way work is sent to an environment's worker. Keeping this in one place is what lets a
phase be a short module that reads like DESIGN §3, and a new phase (a handoff, a failback) need no
new plumbing in the workflow class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.analysis import Verdict
    from skyshift import metrics
    from workflows.plan import CONTROL_TASK_QUEUE, Checkpoint, Environment, MigrationPlan
    from workflows.saga import Compensation
    from workflows.state import (
        MAX_VERDICTS,
        SA_PHASE,
        SA_VERDICT,
        AuditEntry,
        Gate,
        MigrationInput,
        MigrationState,
        RollbackInput,
    )
    from workflows.versions import SEALED_AT_REST

QUICK = timedelta(minutes=5)
LONG = timedelta(hours=12)
#: A silent worker is presumed dead after this long, and a cancel reaches a running activity
#: through its next heartbeat: short enough that a rollback starts within ~30 s.
HEARTBEAT = timedelta(seconds=30)
#: In-flight work is cancelled and *waited for* before compensating, so no writer races the undo.
WAIT_CANCELLED = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


class RollbackRequested(Exception):
    """Raised inside a phase to leave it and run compensations."""


class StopMigration(Exception):
    """The plan may not proceed (e.g. residency breach): undo what was done, then stop."""


class MigrationContext:
    """The plan, the state, and the lifecycle's services to the phases."""

    def __init__(self, plan: MigrationPlan, state: MigrationState) -> None:
        self.plan = plan
        self.state = state
        #: The continuous sync's loop (workflows/phases/continuous.py), while it runs in this run.
        self.sync_task: asyncio.Task[None] | None = None

    # -- what the plan moves --------------------------------------------------------------------

    def workloads(self) -> list[tuple[str, str]]:
        """Every (name, path) the migration moves: datasets, checkpoints and the jobs' code."""
        w = self.plan.workloads
        return (
            [(d.name, d.path) for d in w.datasets]
            + [(c.name, c.path) for c in w.checkpoints]
            + [(j.name, j.code) for j in w.jobs]
        )

    def encrypted(self) -> list[Checkpoint]:
        return [c for c in self.plan.workloads.checkpoints if c.encryption is not None]

    def sealed_at_rest(self, checkpoint: Checkpoint) -> bool:
        """Kept sealed in the target store (plan `encryption.at_rest: sealed`); asked only of such plans."""
        encryption = checkpoint.encryption
        return encryption is not None and encryption.at_rest == "sealed" and workflow.patched(SEALED_AT_REST)

    def plain_workloads(self) -> list[tuple[str, str]]:
        """What the delta engine copies as is: everything but checkpoints moved sealed."""
        sealed = {c.name for c in self.encrypted()}
        return [(name, path) for name, path in self.workloads() if name not in sealed]

    # -- running work ---------------------------------------------------------------------------

    async def on(self, env: Environment, activity: Callable[..., Any], argument: Any, summary: str,
                 timeout: timedelta = LONG) -> Any:  # fmt: skip
        """Run work on an environment's worker: heartbeated, and cancelled only once it has stopped."""
        return await workflow.execute_activity(
            activity, argument, task_queue=env.task_queue, start_to_close_timeout=timeout,
            heartbeat_timeout=HEARTBEAT, cancellation_type=WAIT_CANCELLED, summary=summary,
        )  # fmt: skip

    async def control(self, activity: Callable[..., Any], argument: Any, summary: str,
                      timeout: timedelta = QUICK, long_running: bool = False) -> Any:  # fmt: skip
        """Run an analysis on the control queue; `long_running` ones heartbeat and stop before an undo."""
        if long_running:
            return await workflow.execute_activity(
                activity, argument, task_queue=CONTROL_TASK_QUEUE, start_to_close_timeout=timeout,
                heartbeat_timeout=HEARTBEAT, cancellation_type=WAIT_CANCELLED, summary=summary,
            )  # fmt: skip
        return await workflow.execute_activity(
            activity, argument, task_queue=CONTROL_TASK_QUEUE, start_to_close_timeout=timeout, summary=summary
        )

    def meter_egress(self, egress_bytes: int, cost_usd: float) -> None:
        self.state.egress_bytes += egress_bytes
        self.state.egress_cost_usd = round(self.state.egress_cost_usd + cost_usd, 6)

    # -- gates and waits ------------------------------------------------------------------------

    async def gate(self, stage: str, reason: str, deadline: timedelta | None = None) -> bool:
        """Wait for `approve(stage)` or a rollback; return False if the deadline passed unanswered."""
        self.state.pending_gate = Gate(stage=stage, reason=reason, opened_at=workflow.now())
        self.audit("skyshift", "awaiting_approval", f"{stage}: {reason}")
        self.show_details()
        try:
            await self.wait(lambda: self.state.pending_gate is None, timeout=deadline, summary=f"await {stage}")
            answered = self.state.pending_gate is None
        finally:
            self.state.pending_gate = None
        if not answered:
            self.audit("skyshift", "gate_expired", f"{stage}: nobody answered within {deadline}")
        return answered

    async def wait(
        self, done: Callable[[], bool], timeout: timedelta | None = None, summary: str | None = None
    ) -> None:
        """Wait for `done` (or time out); a rollback request always ends the wait by raising."""
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: done() or self.state.rollback_request is not None, timeout=timeout, timeout_summary=summary
            )
        self.raise_if_rollback()

    async def checkpoint(self) -> None:
        """Between steps: honour a pause (until resume) and a rollback request."""
        await self.wait(lambda: not self.state.paused)

    # -- rollback -------------------------------------------------------------------------------

    def start_rollback(self, reason: str, by: str) -> None:
        if self.state.rollback_request is None:
            self.state.rollback_request = RollbackInput(reason=reason, by=by)
            self.audit(by, "rollback_requested", reason)
            metrics.rollback(by)

    def raise_if_rollback(self) -> None:
        if self.state.rollback_request is not None:
            raise RollbackRequested()

    def fail_if(self, verdict: Verdict, what: str, by: str) -> None:
        """A failing verdict starts the rollback at once, naming what failed."""
        if verdict.outcome == "fail":
            self.start_rollback(f"{what}: {verdict.summary}", by=by)
            self.raise_if_rollback()

    def register_undo(self, step: Compensation, announce: str) -> None:
        """Record the undo of a step *before* the step acts; audited the first time it is registered."""
        if self.state.saga.register(step):
            self.audit("skyshift", "compensation_registered", announce)

    def continue_as_new_if_suggested(self) -> None:
        """Not while a continuous-sync pass is in flight: its children would be left without a parent."""
        if self.state.sync.in_pass:
            return
        if workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished():
            workflow.continue_as_new(MigrationInput(plan=self.plan, resume=self.state))

    # -- what operators see ---------------------------------------------------------------------

    def audit(self, actor: str, action: str, detail: str = "") -> None:
        self.state.audit.append(AuditEntry(at=workflow.now(), actor=actor, action=action, detail=detail))

    def record_verdict(self, verdict: Verdict) -> None:
        self.state.verdicts = [*self.state.verdicts, verdict][-MAX_VERDICTS:]
        metrics.verdict(verdict.outcome, subject=verdict.subject)
        workflow.upsert_search_attributes([SA_VERDICT.value_set(verdict.outcome)])
        self.show_details()

    def set_phase(self, phase: str) -> None:
        self.state.phase = phase
        workflow.upsert_search_attributes([SA_PHASE.value_set(phase)])
        self.show_details()

    def show_details(self) -> None:
        """What the Temporal UI shows as current details: phase, traffic, gate, last verdict, egress."""
        s = self.state
        lines = [f"**{self.plan.name}**: {self.plan.source} → {self.plan.target}", f"phase: **{s.phase}**"]
        if s.stage:
            lines.append(f"stage: {s.stage}, traffic to target: {s.traffic_percent}%")
        if s.pending_gate:
            lines.append(f"⏸ awaiting approval of **{s.pending_gate.stage}**: {s.pending_gate.reason}")
        if s.paused:
            lines.append("⏸ paused by an operator")
        if s.verdicts:
            lines.append(f"last verdict ({s.verdicts[-1].subject}): {s.verdicts[-1].outcome}: {s.verdicts[-1].summary}")
        if (run := s.training).run_id:
            lines.append(f"production run {run.job} on **{run.environment}**")
            for e in run.events[-2:]:
                lines.append(f"{e.kind} {e.origin} → {e.destination}: {e.outcome}; steps lost {e.steps_lost}, SIGTERM "
                             f"→ first step {e.seconds_to_first_step}s, {e.bytes_moved} bytes moved")  # fmt: skip
        lines.append(f"egress so far: {s.egress_bytes / 1e9:.3f} GB, ${s.egress_cost_usd:.4f}")
        if s.outcome:
            lines.append(f"outcome: **{s.outcome}**: {s.outcome_reason}")
        workflow.set_current_details("\n\n".join(lines))
