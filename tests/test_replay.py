"""Determinism guard: every recorded history must replay against today's code for the workflow it records.

A change to a workflow that would break running executions fails here; put it behind
`workflow.patched(...)` (ids in workflows/versions.py) and *add* a history recorded with the new
code (`temporal workflow show -o json`); histories are never re-recorded: each one stands for the
executions that were in flight on the code that wrote it. Files are `<scenario>@<workflow id>.json`;
the workflow type is read from the history's first event, so a sync history replays against
`DatasetSyncWorkflow` and a migration's against `MigrationWorkflow`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.migration import MigrationWorkflow
from workflows.sync import DatasetSyncWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
WORKFLOWS = {"MigrationWorkflow": MigrationWorkflow, "DatasetSyncWorkflow": DatasetSyncWorkflow}


def workflow_type(history: dict) -> str:
    """The workflow type a history records, from its first event (WorkflowExecutionStarted)."""
    return history["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]


def recorded(path: Path) -> tuple[str, WorkflowHistory]:
    data = json.loads(path.read_text())
    return workflow_type(data), WorkflowHistory.from_json(path.stem.split("@")[1], data)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem.split("@")[0] for p in HISTORIES])
async def test_recorded_history_replays_against_the_workflow_it_records(path: Path):
    name, history = recorded(path)
    assert name in WORKFLOWS, f"{path.name} records a {name}, which no replay test knows: add it to WORKFLOWS"
    replayer = Replayer(workflows=[WORKFLOWS[name]], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


def test_histories_cover_completion_rollback_every_exit_and_0_1_syncs():
    scenarios = {p.stem.split("@")[0]: recorded(p)[0] for p in HISTORIES}
    assert set(scenarios) >= {
        "demo_ok",  # 0.1: completed
        "demo_regression",  # 0.1: rolled back by a failing cutover window
        "demo_ok_jobs_shadow_sealed",  # jobs, checkpoint reports, sealed checkpoint, shadow phase, judged suite
        "demo_drift",  # the shadow phase fails and rolls back before traffic moves
        "failed_child",  # a child fails: siblings cancelled, compensated, workflow failed with an outcome
        "rollback_during_sync",  # a rollback interrupts the sync, waits for it, then compensates
        "sync_v1_continue_as_new",  # 0.1's DatasetSyncWorkflow (_run_v1): ranges, then continue-as-new
        "sync_v1",  # 0.1's DatasetSyncWorkflow (_run_v1): the continued run's last range, completed
        "failback_window_soak",  # monitored soak, failback window: reverse passes, a drill, a failback
        "training_handoff_rollback",  # cutover.training: the production run handed off, then handed back by a rollback
        "handoff_ok",  # a resumable job's handoff arm: SIGTERM, checkpoint synced, resumed, continuity passes
        "handoff_dataloader",  # the target resumes with its dataloader restarted: the handoff arm fails, rolls back
        "continuous_sync",  # sync every 6h (fast-forwarded) in the cutover, stopped before the final sync
        "sealed_at_rest",  # encryption.at_rest: sealed: never opened into the target store, checked in scratch
        "continuous_sync_rollback",  # a rollback mid-pass: the pass is stopped and waited for, then compensated
    }
    assert scenarios["sync_v1"] == scenarios["sync_v1_continue_as_new"] == "DatasetSyncWorkflow"
