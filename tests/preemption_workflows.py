"""A workflow that runs the preemption watcher beside its own work and is woken by the watcher's
signal: the shape issue 20's notice → checkpoint → resume workflow will take (kept apart from the
tests: workflows beside test code fail sandbox validation)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.preemption.watch import (
        PREEMPTION_SIGNAL,
        PreemptionSignal,
        WatchPreemptionInput,
        WatchPreemptionResult,
        heartbeat_timeout_for,
        watch_preemption,
    )


@workflow.defn
class WatchBesideRunWorkflow:
    def __init__(self) -> None:
        self.notices: list[PreemptionSignal] = []

    @workflow.signal(name=PREEMPTION_SIGNAL)
    def preemption_notice(self, signal: PreemptionSignal) -> None:
        self.notices.append(signal)

    @workflow.run
    async def run(self, request: WatchPreemptionInput) -> PreemptionSignal:
        watch = workflow.start_activity(
            watch_preemption,
            request.model_copy(update={"signal_workflow_id": workflow.info().workflow_id}),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=heartbeat_timeout_for(request.watcher),
        )
        # Stands in for the training run: the workflow is busy until the watcher's signal wakes it.
        await workflow.wait_condition(lambda: bool(self.notices))
        await watch
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.notices[0]


@workflow.defn(name="watch-once")
class WatchOnceWorkflow:
    """Awaits the watcher itself: the simplest way a workflow learns of a notice. Cancelling the
    workflow (as when the run it guards ends) waits until the watcher has stopped."""

    @workflow.run
    async def run(self, request: WatchPreemptionInput) -> WatchPreemptionResult:
        return await workflow.execute_activity(
            watch_preemption,
            request,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=heartbeat_timeout_for(request.watcher),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
