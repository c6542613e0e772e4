"""Compensations: undo steps recorded as data before each world-changing step, run in reverse.

A step is an activity name, its task queue and its JSON argument, so the list survives
continue-as-new and replays byte-for-byte. Steps are built from the activity itself
(`Compensation.of(remove_created, LedgerInput(...))`), never from a string a rename could silently
break, and only activities declared in `UNDO_ACTIVITIES` may be used (a test checks that every one
of them is served by a worker). Undo activities are idempotent and retried without a limit (backed
off): a rollback is finished only when every compensation has succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.checkpoints.sealed import remove_sealed
    from activities.jobs.hand_back import hand_back_training
    from activities.shadow.runner import set_mirror
    from activities.traffic import route_traffic
    from activities.transfer.ledger import remove_created

UNDO_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=2), maximum_attempts=0
)

#: Every activity a compensation may call, under the name workers serve it by (the name histories
#: hold, which never changes). Each is idempotent: running it twice equals once. The names are data
#: here rather than read from the SDK's private activity definition; tests/test_trust.py checks each
#: against the activities the workers register.
UNDO_ACTIVITIES: dict[str, Callable[..., Any]] = {
    "remove_created": remove_created,
    "route_traffic": route_traffic,
    "remove_sealed": remove_sealed,
    "set_mirror": set_mirror,
    "hand_back_training": hand_back_training,
}


def undo_name(fn: Callable[..., Any]) -> str:
    """The name compensation `fn` is recorded and run under; only declared undo activities have one."""
    for name, declared in UNDO_ACTIVITIES.items():
        if declared is fn:
            return name
    raise TypeError(
        f"{getattr(fn, '__name__', fn)!r} is not declared in UNDO_ACTIVITIES: compensations must be idempotent"
    )


class Compensation(BaseModel):
    activity: str
    task_queue: str
    argument: dict[str, Any]
    summary: str
    timeout_s: float = 600

    @classmethod
    def of(cls, fn: Callable[..., Any], argument: BaseModel, *, task_queue: str, summary: str,
           timeout_s: float = 600) -> Compensation:  # fmt: skip
        """A compensation that calls activity `fn` with `argument`; `fn` must be a declared undo activity."""
        return cls(activity=undo_name(fn), task_queue=task_queue, argument=argument.model_dump(mode="json"),
                   summary=summary, timeout_s=timeout_s)  # fmt: skip


class CompensationFailure(BaseModel):
    summary: str
    error: str


class Saga(BaseModel):
    pending: list[Compensation] = Field(default_factory=list)
    completed: list[str] = Field(default_factory=list, description="Summaries of compensations that ran")
    failed: list[CompensationFailure] = Field(
        default_factory=list, description="Compensations that failed permanently; they stay in `pending`"
    )

    def register(self, step: Compensation) -> bool:
        """Record an undo step; registering the same step again is a no-op (steps are idempotent)."""
        if step in self.pending:
            return False
        self.pending.append(step)
        return True

    def forget(self) -> None:
        """Past the point of no return (source released) there is nothing left to undo."""
        self.pending.clear()

    async def compensate(self, on_done: Callable[[Compensation], None]) -> None:
        """Run pending steps newest first; each is removed only once it has succeeded.

        Transient failures are retried without a limit. A step that fails permanently (a
        non-retryable error: the undo itself cannot work, e.g. access to the target was revoked)
        is recorded in `failed`, kept in `pending` for an operator, and the older steps still run:
        one broken undo must not leave every other change in place.
        """
        for step in reversed(list(self.pending)):
            try:
                await workflow.execute_activity(
                    step.activity,
                    step.argument,
                    task_queue=step.task_queue,
                    start_to_close_timeout=timedelta(seconds=step.timeout_s),
                    retry_policy=UNDO_RETRY,
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=f"undo: {step.summary}",
                )
            except ActivityError as error:
                cause = error.cause
                message = cause.message if isinstance(cause, ApplicationError) else str(cause or error)
                self.failed.append(CompensationFailure(summary=step.summary, error=message))
                continue
            self.pending.remove(step)
            self.completed.append(step.summary)
            on_done(step)
