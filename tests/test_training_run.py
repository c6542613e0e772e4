"""A production training run skyshift owns (TrainingRunWorkflow), moved mid-flight on the real stack.

Temporal's dev server, a worker per environment running the example job as a real subprocess, the
checkpoint and datasets moved by the delta engine's sync children. A broken resume is a switch only
the destination's worker process has (`TRAIN_RESUME_BREAK`), as a target image whose loader forgot
the dataloader's position would be. Nothing here waits on the clock: the move is sent once the job's
own heartbeat shows it running, and every expectation comes from what the run reports.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from activities.jobs import JobProgress
from activities.stores import open_store
from activities.stores.base import metadata_spec
from tests.conftest import running_workers
from tests.helpers import make_plan, seed, suffix
from workflows.plan import CONTROL_TASK_QUEUE
from workflows.training_run import MoveRequest, TrainingRunInput, TrainingRunWorkflow, checkpoint_prefix

pytestmark = pytest.mark.stack

#: Long enough that the move lands mid-run: the cancellation reaches the job within a heartbeat (≤ 8 s).
STEPS = 4000
WATCH = 10
TRAIN = Path(__file__).parents[1] / "examples/jobs/train/train.py"


def _plan(tmp_path: Path, steps: int = STEPS, **overrides):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    for url in (source, target):  # the job's code is synced by the migration before a production run starts
        open_store(url).put_bytes("jobs/train/train.py", TRAIN.read_bytes())
    return make_plan(suffix(), source, target, workloads={
        "datasets": [{"name": "corpus", "path": "datasets/corpus"}],
        "jobs": [{"name": "lm", "code": "jobs/train", "uses": ["corpus"], "timeout": "30m",
                  "command": ["python", "train.py", "--steps", str(steps), "--dataset", "corpus"],
                  "env": {"OMP_NUM_THREADS": "1", "TRAIN_DEVICE": "cpu"}, "resume": {"grace": "60s", "every": 500}}],
    }, **overrides)  # fmt: skip


async def _running(client, handle, timeout: float = 300) -> JobProgress:
    """The job's own heartbeat once it is stepping (as the Temporal UI shows it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for pending in (await handle.describe()).raw_description.pending_activities:
            if pending.heartbeat_details.payloads:
                (progress,) = await client.data_converter.decode(pending.heartbeat_details.payloads, [JobProgress])
                if progress.phase == "running" and progress.steps_logged >= 2:
                    return progress
        await asyncio.sleep(0.2)
    raise AssertionError("the production run never reported its second step")


@asynccontextmanager
async def _target_worker(client, env: str, tmp_path: Path, broken: str):
    """The destination's worker as a process of its own, with the switch only it has."""
    variables = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host,
                 "TRAIN_RESUME_BREAK": broken, "SKYSHIFT_CACHE_DIR": str(tmp_path / "target-cache")}  # fmt: skip
    worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.main", "--env", env, env=variables,
                                                  stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), timeout=60)


async def _move_once(client, plan, tmp_path: Path):
    job = plan.workloads.jobs[0]
    run = TrainingRunInput(run_id=f"run-{plan.name}", job=job, environments=plan.environments, start_on=plan.source,
                           datasets={"corpus": "datasets/corpus"}, watch_steps=WATCH)  # fmt: skip
    handle = await client.start_workflow(TrainingRunWorkflow.run, run, id=run.run_id, task_queue=CONTROL_TASK_QUEUE)
    await _running(client, handle)
    await handle.signal(TrainingRunWorkflow.move, MoveRequest(to=plan.target, reason="cutover stage 2", by="tester"))
    return run, await handle.result()


async def test_a_production_run_moves_to_the_target_and_continues_there(client, tmp_path):
    plan = _plan(tmp_path)
    async with running_workers(client, plan.source, plan.target):
        run, final = await _move_once(client, plan, tmp_path)
    assert final.status == "finished", final.detail
    assert final.environment == plan.target and final.step == STEPS - 1  # every step, the last on the target
    (event,) = final.events
    assert event.kind == "handoff" and event.outcome == "moved" and event.verdict == "pass", event.summary
    assert (event.origin, event.destination, event.by) == (plan.source, plan.target, "tester")
    assert event.steps_lost == 0 and 0 < event.checkpoint_step < STEPS - WATCH
    assert event.seconds_to_first_step > 0 and event.bytes_moved > 0 and event.checkpoint_bytes > 0
    # The checkpoint the target resumed from is in both metadata stores under the run's one prefix.
    prefix = checkpoint_prefix(run.run_id, "lm")
    for env in plan.environments:
        assert open_store(metadata_spec(env.storage)).exists(f"{prefix}/state.pt"), env.name


async def test_a_broken_resume_on_the_target_hands_the_run_back(client, tmp_path):
    """The target restarts its dataloader from zero: the first steps there leave the run's own continuation
    at the first step after the checkpoint; the run resumes on the source from the very same checkpoint."""
    plan = _plan(tmp_path)
    async with _target_worker(client, plan.target, tmp_path, "dataloader"), running_workers(client, plan.source):
        _, final = await _move_once(client, plan, tmp_path)
    assert final.status == "finished", final.detail
    assert final.environment == plan.source and final.step == STEPS - 1  # back on the source, to the end
    (event,) = final.events
    assert event.kind == "hand_back" and event.outcome == "handed_back" and event.verdict == "fail"
    assert f"first diverging step {event.checkpoint_step + 1} (state_restored" in event.summary
    assert event.steps_lost == 0


# -- the live handoff at cutover (the real MigrationWorkflow) -----------------------------------


async def test_the_cutover_hands_the_production_run_to_the_target_and_a_rollback_hands_it_back(client, tmp_path):
    """cutover.training: handoff: the run starts on the source at the first stage, moves at the last (its
    hand-back registered first); a later rollback runs that hand-back: the run ends on the source."""
    from starters.operate import start_migration
    from starters.render import summary
    from tests.helpers import approve_gates
    from workflows.migration import MigrationWorkflow
    from workflows.state import RollbackInput

    plan = _plan(tmp_path, steps=3000, cutover={
        "monitor_interval": "1s", "stages": [{"percent": 20, "duration": "2s"}, {"percent": 100, "duration": "1h"}],
        "training": "handoff", "watch_steps": WATCH,
    }, parallel_run={"jobs": {"rules": [{"metric": "throughput", "compare": "at_most", "threshold": 0,
                                         "dry_run": True}]}})  # fmt: skip
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        state = await approve_gates(handle, lambda s: s.outcome is not None or s.training.events, timeout=900)
        assert state.outcome is None, state.outcome_reason
        (event,) = state.training.events
        assert event.kind == "handoff" and event.outcome == "moved" and event.verdict == "pass", event.summary
        assert state.training.environment == plan.target and event.steps_lost == 0 and event.bytes_moved > 0
        registered = [a.detail for a in state.audit if a.action == "compensation_registered"]
        asked = next(i for i, a in enumerate(state.audit) if a.action == "training_handoff")
        hand_back = next(i for i, a in enumerate(state.audit) if a.action == "compensation_registered"
                         and "production run back" in a.detail)  # fmt: skip
        assert hand_back < asked and any("production run back" in d for d in registered)  # the way back first
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="test over", by="tester"))
        final = await handle.result()
        assert final.outcome == "rolled_back"
        assert any("production run back" in done for done in final.saga.completed)
        shown = summary(final)  # what `skyshift status` prints
        assert f"training: lm (run {state.training.run_id})" in shown
        assert f"handoff {plan.source} → {plan.target}: moved (verdict pass)" in shown and "steps lost 0" in shown
        run = await client.get_workflow_handle(state.training.run_id).result(result_type=None)
    events = run["events"] if isinstance(run, dict) else run.events
    assert [(e["kind"], e["outcome"]) for e in events] == [("handoff", "moved"), ("failback", "moved")]
    assert (run["environment"], run["status"], run["step"]) == (plan.source, "finished", 2999)
