"""Compensations: undo steps recorded as data before each world-changing step, run in reverse.

A step is an activity name, its task queue and its JSON argument, so the list survives
continue-as-new and replays byte-for-byte. Undo activities are idempotent and retried without a
limit (backed off): a rollback is finished only when every compensation has succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

UNDO_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=2), maximum_attempts=0
)


class Compensation(BaseModel):
    activity: str
    task_queue: str
    argument: dict[str, Any]
    summary: str
    timeout_s: float = 600


class Saga(BaseModel):
    pending: list[Compensation] = Field(default_factory=list)
    completed: list[str] = Field(default_factory=list, description="Summaries of compensations that ran")

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
        """Run pending steps newest first; each is removed only once it has succeeded."""
        while self.pending:
            step = self.pending[-1]
            await workflow.execute_activity(
                step.activity,
                step.argument,
                task_queue=step.task_queue,
                start_to_close_timeout=timedelta(seconds=step.timeout_s),
                retry_policy=UNDO_RETRY,
                summary=f"undo: {step.summary}",
            )
            self.pending.pop()
            self.completed.append(step.summary)
            on_done(step)
