"""Determinism guard: recorded demo histories must replay against today's MigrationWorkflow.

A change to the workflow that would break running migrations fails here; put it behind
`workflow.patched(...)` or record new histories (`temporal workflow show -o json`) for a new version.
Files are named `<scenario>@<workflow id>.json`: child workflow ids derive from the workflow id.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.migration import MigrationWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize("history", [WorkflowHistory.from_json(p.stem.split("@")[1], p.read_text()) for p in HISTORIES],
                         ids=[p.stem.split("@")[0] for p in HISTORIES])  # fmt: skip
async def test_recorded_demo_history_replays(history: WorkflowHistory):
    replayer = Replayer(workflows=[MigrationWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


def test_histories_cover_completion_and_rollback():
    assert {p.stem.split("@")[0] for p in HISTORIES} >= {"demo_ok", "demo_regression"}
