"""What a migration recorded, read back from its Temporal history: plan, final state, activity results, times.

The report re-measures nothing: every series it draws is a value some activity returned (and the
workflow recorded) at a known time. The history holds them all, in order, across continue-as-new runs,
and decodes with the same data converter the workers used (the payload codec included), so an
encrypted migration reports just as well for whoever holds the key.

Payloads decode as plain JSON values here; `build.py` reads the few fields it needs. That keeps the
report independent of the activity modules (and their imports) and tolerant of fields added later.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter, decode_search_attributes

from workflows.plan import MigrationPlan
from workflows.state import SA_PHASE, MigrationInput, MigrationState


class ActivityRecord(BaseModel):
    """One activity as the history tells it: what was asked, what came back, when."""

    activity: str
    scheduled_at: datetime
    closed_at: datetime | None = None
    input: Any = None
    result: Any = None
    status: str = "scheduled"  # completed | failed | timed_out | canceled


class ChildRecord(BaseModel):
    workflow: str
    closed_at: datetime
    result: Any = None


class PhaseMark(BaseModel):
    at: datetime
    phase: str


class Recorded(BaseModel):
    """Everything the report reads about one migration, decoded."""

    workflow_id: str
    run_ids: list[str]
    status: str = Field(description="COMPLETED, RUNNING, FAILED, CANCELED, TERMINATED, TIMED_OUT")
    started_at: datetime
    closed_at: datetime | None = None
    plan: MigrationPlan
    state: MigrationState | None = Field(None, description="The result, when the workflow completed")
    activities: list[ActivityRecord] = Field(default_factory=list)
    children: list[ChildRecord] = Field(default_factory=list)
    phases: list[PhaseMark] = Field(default_factory=list)

    def results(self, activity: str) -> list[ActivityRecord]:
        return [a for a in self.activities if a.activity == activity and a.status == "completed"]


def event_time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


_CLOSED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "COMPLETED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "FAILED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "CANCELED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "TERMINATED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "TIMED_OUT",
}
_ACTIVITY_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: ("completed", "activity_task_completed_event_attributes"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: ("failed", "activity_task_failed_event_attributes"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: ("timed_out", "activity_task_timed_out_event_attributes"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: ("canceled", "activity_task_canceled_event_attributes"),
}


async def _decode_one(converter: DataConverter, payloads: Sequence, hint: type | None = None) -> Any:
    if not payloads:
        return None
    [value] = await converter.decode(list(payloads[:1]), [hint] if hint else None)
    return value


async def read_runs(histories: Sequence[WorkflowHistory], converter: DataConverter) -> Recorded:
    """Decode a migration's runs (oldest first) into one Recorded."""
    recorded: Recorded | None = None
    scheduled: dict[tuple[int, int], ActivityRecord] = {}
    for run_index, history in enumerate(histories):
        for event in history.events:
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                attributes = event.workflow_execution_started_event_attributes
                if recorded is None:
                    request: MigrationInput = await _decode_one(converter, attributes.input.payloads, MigrationInput)
                    recorded = Recorded(
                        workflow_id=history.workflow_id, run_ids=[], status="RUNNING",
                        started_at=event_time(event), plan=request.plan,
                    )  # fmt: skip
                recorded.run_ids.append(history.run_id)
                _phase(recorded, event, attributes.search_attributes)
            elif recorded is None:
                raise ValueError(f"history of {history.workflow_id} does not begin with WorkflowExecutionStarted")
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attributes = event.activity_task_scheduled_event_attributes
                record = ActivityRecord(
                    activity=attributes.activity_type.name,
                    scheduled_at=event_time(event),
                    input=await _decode_one(converter, attributes.input.payloads),
                )
                scheduled[(run_index, event.event_id)] = record
                recorded.activities.append(record)
            elif kind in _ACTIVITY_CLOSED:
                status, field = _ACTIVITY_CLOSED[kind]
                attributes = getattr(event, field)
                record = scheduled.get((run_index, attributes.scheduled_event_id))
                if record is not None:
                    record.status, record.closed_at = status, event_time(event)
                    if status == "completed":
                        record.result = await _decode_one(converter, attributes.result.payloads)
            elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
                attributes = event.child_workflow_execution_completed_event_attributes
                recorded.children.append(
                    ChildRecord(
                        workflow=attributes.workflow_type.name,
                        closed_at=event_time(event),
                        result=await _decode_one(converter, attributes.result.payloads),
                    )
                )
            elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                _phase(recorded, event, event.upsert_workflow_search_attributes_event_attributes.search_attributes)
            elif kind in _CLOSED:
                recorded.status, recorded.closed_at = _CLOSED[kind], event_time(event)
                if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                    payloads = event.workflow_execution_completed_event_attributes.result.payloads
                    recorded.state = await _decode_one(converter, payloads, MigrationState)
    if recorded is None:
        raise ValueError("empty history")
    return recorded


def _phase(recorded: Recorded, event: HistoryEvent, attributes) -> None:
    values = decode_search_attributes(attributes).get(SA_PHASE.name)
    if values:
        recorded.phases.append(PhaseMark(at=event_time(event), phase=str(values[0])))


async def fetch_runs(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Every run of a workflow id, oldest first, following continue-as-new back from the latest run."""
    runs: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        runs.insert(0, history)
        started = history.events[0].workflow_execution_started_event_attributes if history.events else None
        run_id = started.continued_execution_run_id if started else None
        if not run_id:
            return runs


async def record(client: Client, workflow_id: str) -> Recorded:
    return await read_runs(await fetch_runs(client, workflow_id), client.data_converter)
