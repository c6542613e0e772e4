"""What a production training run reports: a move asked of it and each move it made (plain data).

Apart from `workflows/training_run.py` so that the migration's state, the CLI and the report can
hold a run's events without importing the workflow (and what it imports).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class MoveRequest(BaseModel):
    to: str = Field(description="The environment to move the run to (one of the run's environments)")
    reason: str = Field(min_length=1)
    by: str = "skyshift"
    kind: Literal["handoff", "preemption", "failback", "operator"] = "handoff"
    noticed_at: datetime | None = Field(None, description="A preemption: when the worker read the notice")


class RunEvent(BaseModel):
    """One move of the run, with what it cost: what operators see in status, the UI and the report."""

    kind: Literal["handoff", "hand_back", "failed_move", "preemption", "failback", "operator"]
    origin: str
    destination: str
    reason: str
    by: str
    at: datetime
    outcome: Literal["moved", "handed_back", "stayed", "ended_first"]
    checkpoint_step: int | None = None
    noticed_at: datetime | None = Field(None, description="A preemption: when the worker read the notice")
    sigterm_at: float | None = Field(None, description="When the origin's worker sent SIGTERM (epoch seconds)")
    steps_lost: int | None = Field(None, description="Steps the origin logged past the checkpoint it handed off")
    seconds_to_first_step: float | None = Field(
        None, description="SIGTERM on the origin → first step on the destination"
    )
    bytes_moved: int | None = Field(None, description="Bytes the delta syncs sent (checkpoint and datasets)")
    checkpoint_bytes: int | None = None
    verdict: str | None = Field(None, description="The continuity verdict's outcome (pass, fail, ...)")
    summary: str = ""


class TrainingProgress(BaseModel):
    """The migration's view of its production run (cutover.training: handoff)."""

    run_id: str | None = Field(None, description="The TrainingRunWorkflow's id, once started")
    job: str | None = None
    environment: str | None = Field(None, description="Where the run is, as of its last event")
    move_requested: bool = False
    events: list[RunEvent] = Field(default_factory=list)
