"""The way back for a production training run: the compensation a cutover registers before a handoff.

A migration that hands its production run (TrainingRunWorkflow) to the target registers this undo
first. On a rollback it asks the run to move back to the source, through the run's own `move`
signal: the same SIGTERM → checkpoint → delta sync → resume → judge as the handoff. Idempotent: a
run already on the source, finished or gone is left alone; a run in the middle of a move is asked
again once that move has ended (a retryable failure, retried by the saga's policy).
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode


class HandBackInput(BaseModel):
    run_id: str = Field(description="The TrainingRunWorkflow's id")
    to: str = Field(description="The environment to hand the run back to (the source)")
    reason: str


@activity.defn
async def hand_back_training(request: HandBackInput) -> str:
    """Move the production run back to `to` unless it is there already (or no longer running)."""
    handle = activity.client().get_workflow_handle(request.run_id)
    try:
        state = await handle.query("status", result_type=dict)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return f"{request.run_id}: no such run; nothing to hand back"
        raise
    if state.get("status") == "moving" or state.get("pending_move"):
        raise ApplicationError(f"{request.run_id} is moving; asked again once the move has ended", type="RunMoving")
    if state.get("status") != "running":
        return f"{request.run_id} is {state.get('status')} on {state.get('environment')}: nothing to hand back"
    if state.get("environment") == request.to:
        return f"{request.run_id} is on {request.to} already"
    await handle.signal("move", {"to": request.to, "reason": request.reason, "by": "skyshift:rollback",
                                 "kind": "failback"})  # fmt: skip
    return f"{request.run_id}: asked to move back to {request.to}"
