"""The parallel run on the real stack runs its job interleaved in time, three runs a side, and judges
throughput from all of them (one slow run on a busy host can no longer decide)."""

from __future__ import annotations

import pytest
from temporalio.api.enums.v1 import EventType

from activities.stores import open_store
from starters.operate import start_migration
from tests.conftest import running_workers
from tests.helpers import approve_gates, record_history, seed, suffix
from tests.test_lifecycle import JOB, _job_plan
from workflows.migration import MigrationWorkflow
from workflows.state import RollbackInput

pytestmark = pytest.mark.stack


async def test_job_runs_alternate_sides_and_throughput_is_judged_from_three_trials_each(client, tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    open_store(source).put_bytes("jobs/tiny-lm/train.py", JOB.read_bytes())
    plan = _job_plan(suffix(), source, target)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        state = await approve_gates(handle, lambda s: bool(s.jobs) or s.outcome is not None, timeout=300)
        if state.outcome is None:
            await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="test done", by="test"))
        await handle.result()
        await record_history(handle, "interleaved_trials")
    [comparison] = state.jobs
    throughput = comparison.throughput
    assert throughput is not None
    assert len(throughput.source_trials) == 3 and len(throughput.target_trials) == 3
    check = next(c for c in comparison.verdict.checks if c.metric == "throughput")
    assert check.outcome != "fail" or (check.confidence_interval and check.confidence_interval[0] > 0.05)
    sides = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name == "run_job":
                sides.append("target" if attributes.task_queue.name.endswith(plan.target) else "source")
    runs = sides[-6:]
    assert runs == ["source", "target"] * 3, sides
