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
from datetime import timedelta
from pathlib import Path

import pytest

from activities.jobs import JobProgress
from activities.stores import open_store
from activities.stores.base import metadata_spec
from tests.conftest import running_workers
from tests.helpers import make_plan, record_history, seed, suffix
from workflows.plan import CONTROL_TASK_QUEUE
from workflows.training_run import MoveRequest, TrainingRunInput, TrainingRunWorkflow, checkpoint_prefix

pytestmark = pytest.mark.stack

#: Long enough that the move lands mid-run: the cancellation reaches the job within a heartbeat (≤ 8 s).
STEPS = 4000
WATCH = 10
#: The migration's job: the rollback's hand-back must reach the run on the target before it ends there
#: (a move's cancellation travels with the job's heartbeats, sent at most every 8 s: JOB_HEARTBEAT).
CUTOVER_STEPS = 6000
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
            if pending.activity_type.name == "run_job" and pending.heartbeat_details.payloads:
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


def test_cutover_training_is_plan_data_with_clear_errors(tmp_path):
    from tests.helpers import plan_data
    from workflows.plan import PlanError, parse_plan

    job = {"name": "ft", "code": "jobs/ft", "command": ["python", "t.py"], "timeout": "1h"}

    def plan(cutover: dict, resume: dict | None = {"grace": "60s"}) -> dict:  # noqa: B006 (read only)
        jobs = [{**job, **({"resume": resume} if resume is not None else {})}]
        workloads = {"datasets": [{"name": "corpus", "path": "datasets/corpus"}], "jobs": jobs}
        stages = [{"percent": 20, "duration": "1h"}, {"percent": 100}]
        return plan_data("r", "file:///tmp/src", "file:///tmp/dst", workloads=workloads,
                         cutover={"stages": stages, **cutover})  # fmt: skip

    parsed = parse_plan(plan({"training": "handoff"})).cutover
    assert (parsed.training, parsed.handoff_stage, parsed.watch_steps) == ("handoff", None, 10)
    assert parse_plan(plan({"training": "handoff", "handoff_stage": "20pct"})).cutover.handoff_stage == "20pct"
    with pytest.raises(PlanError, match=r"cutover\.training: handoff needs a resumable job: add `resume:`"):
        parse_plan(plan({"training": "handoff"}, resume=None))
    with pytest.raises(
        PlanError, match=r"cutover: handoff_stage: '50pct' is not a stage; name one of '20pct', '100pct'"
    ):
        parse_plan(plan({"training": "handoff", "handoff_stage": "50pct"}))
    with pytest.raises(PlanError, match=r"cutover\.training_job: 'other' is not a resumable job \(ft\)"):
        parse_plan(plan({"training": "handoff", "training_job": "other"}))
    with pytest.raises(PlanError, match=r"cutover\.training"):
        parse_plan(plan({"training": "live"}))


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


async def test_a_sigterm_ignored_past_grace_is_a_failed_move_and_the_run_stays_on_the_source(client, tmp_path):
    """The job ignores SIGTERM: killed after resume.grace, nothing synced or run on the target; the run goes on
    on the source from its newest periodic checkpoint, to the end."""
    from tests.handoff import worker_env

    plan = _plan(tmp_path)
    job = plan.workloads.jobs[0].model_copy(update={"resume": plan.workloads.jobs[0].resume.model_copy(
        update={"grace": timedelta(seconds=2), "every": 100})})  # fmt: skip
    plan = plan.model_copy(update={"workloads": plan.workloads.model_copy(update={"jobs": [job]})})
    with worker_env(TRAIN_RESUME_BREAK="sigterm"):  # the job's processes inherit the workers' environment
        async with running_workers(client, plan.source, plan.target):
            run, final = await _move_once(client, plan, tmp_path)
    assert final.status == "finished" and final.environment == plan.source and final.step == STEPS - 1, final.detail
    (event,) = final.events
    assert event.kind == "failed_move" and event.outcome == "stayed" and event.destination == plan.target
    assert "no exit within resume.grace (0:00:02) of SIGTERM: killed (SIGKILL)" in event.summary
    assert event.checkpoint_step is not None and (event.checkpoint_step + 1) % 100 == 0  # a periodic one
    assert event.steps_lost >= 0 and event.bytes_moved is None  # nothing crossed
    assert not open_store(metadata_spec(plan.target_env.storage)).exists(
        f"{checkpoint_prefix(run.run_id, 'lm')}/state.pt"
    )


async def test_a_spot_notice_moves_the_run_to_its_fallback_with_no_step_lost(client, tmp_path):
    """AWS's 2-minute notice on the fake IMDS: the watcher beside the job signals the run, which checkpoints and
    resumes on the plan's fallback; the first steps there continue the run's own continuation bit for bit."""
    from starters import fake_metadata

    imds = fake_metadata.start("aws")
    try:
        plan = _plan(tmp_path)
        source = plan.source_env.model_copy(update={"preemption": "aws", "preemption_address": imds.url})
        job = plan.workloads.jobs[0].model_copy(update={"fallback": [plan.target]})
        plan = plan.model_copy(update={"environments": [source, plan.target_env],
                                       "workloads": plan.workloads.model_copy(update={"jobs": [job]})})  # fmt: skip
        run = TrainingRunInput(run_id=f"run-{plan.name}", job=job, environments=plan.environments,
                               start_on=plan.source, datasets={"corpus": "datasets/corpus"},
                               watch_steps=WATCH)  # fmt: skip
        async with running_workers(client, plan.source, plan.target):
            handle = await client.start_workflow(TrainingRunWorkflow.run, run, id=run.run_id,
                                                 task_queue=CONTROL_TASK_QUEUE)  # fmt: skip
            await _running(client, handle)
            imds.schedule_in(0)  # the notice: the instance goes in two minutes
            final = await handle.result()
    finally:
        imds.shutdown()
        imds.server_close()
    assert final.status == "finished" and final.environment == plan.target and final.step == STEPS - 1, final.detail
    (event,) = final.events
    assert event.kind == "preemption" and event.outcome == "moved" and event.verdict == "pass", event.summary
    assert event.origin == plan.source and event.by == "aws notice" and "aws preempt notice" in event.reason
    assert event.steps_lost <= 1 and event.noticed_at is not None and event.seconds_to_first_step > 0
    assert [e.environment for e in final.evictions] == [plan.source]


# -- the live handoff at cutover (the real MigrationWorkflow) -----------------------------------


async def test_the_cutover_hands_the_production_run_to_the_target_and_a_rollback_hands_it_back(client, tmp_path):
    """cutover.training: handoff: the run starts on the source when the cutover begins and moves at the handoff
    stage (here the first: most of the run is left to train on the target), its hand-back registered first; a
    rollback runs that hand-back, which waits until the run trains on the source again."""
    from starters.operate import start_migration
    from starters.render import summary
    from tests.helpers import approve_gates
    from workflows.migration import MigrationWorkflow
    from workflows.state import RollbackInput

    plan = _plan(tmp_path, steps=CUTOVER_STEPS, cutover={
        "monitor_interval": "1s", "stages": [{"percent": 20, "duration": "2s"}, {"percent": 100, "duration": "1h"}],
        "training": "handoff", "handoff_stage": "20pct", "watch_steps": WATCH,
    }, parallel_run={"throughput_trials": 1,  # what is tested is the production run, not the arms' speed
                     "jobs": {"rules": [{"metric": "throughput", "compare": "at_most", "threshold": 0,
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
        await record_history(handle, "training_handoff_rollback")
        assert final.outcome == "rolled_back"
        assert any("production run back" in done for done in final.saga.completed)
        shown = summary(final)  # what `skyshift status` prints
        assert f"training: lm (run {state.training.run_id})" in shown
        assert f"handoff {plan.source} → {plan.target}: moved (verdict pass)" in shown and "steps lost 0" in shown
        run = await client.get_workflow_handle_for(TrainingRunWorkflow.run, state.training.run_id).result()
    assert [(e.kind, e.outcome) for e in run.events] == [("handoff", "moved"), ("failback", "moved")], run.events
    assert (run.environment, run.status, run.step) == (plan.source, "finished", CUTOVER_STEPS - 1)
