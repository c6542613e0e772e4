"""Migrations outlive deploys: one started on the previous release's workers finishes on today's code.

The previous release (skyshift 0.1, `tests.baseline.BASELINE`) is extracted from git and run as real
worker processes: it starts a migration and takes it into the cutover. Those workers are stopped, today's
start, replay the whole history with today's workflow code (every change since sits behind
`workflow.patched`), and finish the migration. A change that is not patched fails here with a
non-determinism error long before it could strand a customer's migration.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from activities.stores import open_store
from tests.baseline import BaselineMissing, extract_baseline
from tests.conftest import ServingPair, running_workers
from tests.helpers import plan_data, seed, suffix
from workflows.plan import CONTROL_TASK_QUEUE
from workflows.state import ApproveInput, MigrationState

pytestmark = pytest.mark.stack


def baseline_tree(into: Path) -> Path:
    """The previous release's source, from this repository's history (skipped, saying why, when absent)."""
    try:
        return extract_baseline(into)
    except BaselineMissing as error:
        pytest.skip(str(error))


async def _status(handle) -> MigrationState:
    return await handle.query("status", result_type=MigrationState)


async def _until(handle, predicate, what: str, timeout: float = 300) -> MigrationState:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await _status(handle)
        if predicate(state):
            return state
        if state.pending_gate is not None:
            await handle.execute_update("approve", ApproveInput(stage=state.pending_gate.stage, by="tester"))
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: phase {state.phase}, gate {state.pending_gate}")
        await asyncio.sleep(0.2)


async def test_a_migration_started_on_the_previous_release_finishes_on_this_code(client, tmp_path, s3_bucket,
                                                                                 gcs_bucket):  # fmt: skip
    old = baseline_tree(tmp_path / "baseline")
    src, dst = f"s3://{s3_bucket}/ml", f"gs://{gcs_bucket}/ml"
    written = seed(src)
    serving = ServingPair()
    tag = suffix()
    # Raw plan data in the previous release's shape: today's defaults are not sent to yesterday's workers.
    workloads = {**serving.plan_workloads(), "datasets": [{"name": "corpus", "path": "datasets/corpus"}],
                 "checkpoints": [{"name": "model", "path": "checkpoints/model"}]}  # fmt: skip
    stages = [{"percent": 30, "duration": "4s"}, {"percent": 100}]
    plan = plan_data(tag, src, dst, workloads=workloads, cutover={"monitor_interval": "1s", "stages": stages},
                     # What is tested here is the upgrade; a latency blip on a busy CI machine must not roll it back.
                     thresholds={"min_samples": 20, "dry_run": ["latency"]})  # fmt: skip
    plan["bench"] = {"trials": 1, "matrix_size": 128, "device": "cpu"}  # 0.1's bench section
    env = {**os.environ, "PYTHONPATH": str(old), "TEMPORAL_ADDRESS": client.service_client.config.target_host,
           "SKYSHIFT_HOME": str(tmp_path / "old-home")}  # fmt: skip
    roles = [["--control"], ["--env", plan["source"]], ["--env", plan["target"]]]
    workers = [await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.main", *role, cwd=old, env=env,
                                                    stderr=subprocess.DEVNULL) for role in roles]  # fmt: skip
    try:
        handle = await client.start_workflow("MigrationWorkflow", {"plan": plan}, id=f"upgrade-{tag}",
                                             task_queue=CONTROL_TASK_QUEUE)  # fmt: skip
        await _until(handle, lambda s: s.phase == "cutover" and s.traffic_percent == 30, "the cutover, on 0.1")
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            await asyncio.wait_for(worker.wait(), timeout=60)
    try:
        async with running_workers(client, plan["source"], plan["target"]):
            final = await _until(handle, lambda s: s.outcome is not None, "the end, on this code")
            result = await handle.result()
    finally:
        serving.close()
    assert final.outcome == "completed", final.outcome_reason
    assert result["outcome"] == "completed"
    assert [e.action for e in final.audit].count("started") == 1, "one migration, continued, not restarted"
    target = open_store(dst)
    assert all(target.read_bytes(key) == data for key, data in written.items())
    history = await handle.fetch_history()
    markers = [e for e in history.events if e.HasField("marker_recorded_event_attributes")]
    assert markers == [], "the replayed 0.1 part took the old paths: no patch marker was recorded"
