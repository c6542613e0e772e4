"""The way back for a production training run: the compensation a cutover registers before a handoff.

A migration that hands its production run (TrainingRunWorkflow) to the target registers this undo
first. On a rollback it asks the run to move back to the source, through the run's own `move`
signal: the same SIGTERM → checkpoint → delta sync → resume → judge as the handoff, and waits until
the run runs on the source. Idempotent: a run already on the source, finished or gone is left alone;
a run in the middle of a move is asked once that move has ended.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

#: How often the run's status is read while it moves back (a query: cheap, answered from its state).
POLL_SECONDS = 1.0


class HandBackInput(BaseModel):
    run_id: str = Field(description="The TrainingRunWorkflow's id")
    to: str = Field(description="The environment to hand the run back to (the source)")
    reason: str


@activity.defn
async def hand_back_training(request: HandBackInput) -> str:
    """Move the production run back to `to` and return once it runs there (or no longer runs at all).

    Waiting matters: the compensations after this one delete what the migration put on the target
    (the job's code, its datasets), which must not happen under a run still training there.
    """
    handle = activity.client().get_workflow_handle(request.run_id)
    asked_at: int | None = None  # how many events the run had when it was asked
    while True:
        try:
            state = await handle.query("status", result_type=dict)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return f"{request.run_id}: no such run; nothing to hand back"
            raise
        status, where, events = state.get("status"), state.get("environment"), state.get("events") or []
        settled = status == "running" and not state.get("pending_move")
        if status in ("finished", "failed"):
            return f"{request.run_id} is {status} on {where}: nothing to hand back"
        if settled and where == request.to:
            return f"{request.run_id} runs on {request.to}"
        if settled and asked_at is not None and len(events) > asked_at:
            last = events[-1]
            raise ApplicationError(
                f"{request.run_id} could not be moved back to {request.to}: {last.get('outcome')}: "
                f"{last.get('summary')}; it still runs on {where}",
                type="HandBackFailed",
                non_retryable=True,
            )
        if settled and asked_at is None:
            asked_at = len(events)
            await handle.signal("move", {"to": request.to, "reason": request.reason, "by": "skyshift:rollback",
                                         "kind": "failback"})  # fmt: skip
        activity.heartbeat(f"{request.run_id}: {status} on {where}")
        await asyncio.sleep(POLL_SECONDS)
