"""The job activities through a real Temporal worker and server: payload sizes in history, cancellation.

The workflow here is the smallest caller of the activities (run the arms one after another,
compare them); the migration's own parallel run is the lead's and is tested with the workflow.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from pydantic import BaseModel
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

from activities.analysis import AnalysisRule
from activities.jobs import (
    CompareJobArmsInput,
    JobComparison,
    JobProgress,
    JobSpec,
    JobTolerances,
    RunJobInput,
    code_root,
    compare_job_arms,
    run_job,
)
from activities.jobs.run import group_alive
from activities.stores import StoreSpec, open_store
from tests.test_jobs import stage

HISTORY_EVENT_LIMIT = 256 * 1024


class ArmsInput(BaseModel):
    runs: list[RunJobInput]
    tolerances: JobTolerances


@workflow.defn(sandboxed=False)
class JobArmsWorkflow:
    @workflow.run
    async def run(self, request: ArmsInput) -> JobComparison | None:
        results = []
        for run in request.runs:  # arms that share a machine run one after the other
            results.append(
                await workflow.execute_activity(
                    run_job, run, start_to_close_timeout=timedelta(minutes=5), heartbeat_timeout=timedelta(seconds=3),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            )  # fmt: skip
        if len(results) < 3:
            return None
        source, repeat, target = results
        return await workflow.execute_activity(
            compare_job_arms,
            CompareJobArmsInput(job=source.job, source=source, source_repeat=repeat, target=target,
                                tolerances=request.tolerances),
            start_to_close_timeout=timedelta(minutes=2),
        )  # fmt: skip


def runs(job: JobSpec, store: StoreSpec, arms: tuple[str, ...]) -> list[RunJobInput]:
    root = code_root(open_store(store), job.code).root
    return [
        RunJobInput(
            job=job,
            environment="env",
            arm=arm,
            store=store,
            code_root=root,
            artifacts=store,
            artifact_prefix=f".skyshift/jobs/{uuid.uuid4().hex[:8]}/{arm}",
            poll_seconds=0.2,
            kill_grace_seconds=0.5,
        )
        for arm in arms
    ]


async def start(client: Client, request: ArmsInput):
    queue = f"jobs-{uuid.uuid4().hex[:8]}"
    worker = Worker(client, task_queue=queue, workflows=[JobArmsWorkflow], activities=[run_job, compare_job_arms],
                    activity_executor=ThreadPoolExecutor(4))  # fmt: skip
    handle = await client.start_workflow(JobArmsWorkflow.run, request, id=queue, task_queue=queue)
    return worker, handle


async def test_a_ten_thousand_step_job_keeps_every_history_event_small(client, tmp_path):
    store = stage(f"file://{tmp_path / 'cloud'}")
    job = JobSpec(name="long", code="jobs/counter", command=["python", "count.py", "--steps", "10000"])
    dry = [AnalysisRule(metric="throughput", compare="within_floor", threshold=0.05, dry_run=True)]
    worker, handle = await start(client, ArmsInput(runs=runs(job, store, ("source", "source-repeat", "target")),
                                                   tolerances=JobTolerances(rules=dry)))  # fmt: skip
    async with worker:
        comparison = await handle.result()
    assert comparison.verdict.outcome == "pass", comparison.verdict.summary
    assert [a.steps for a in comparison.arms] == [10_000] * 3
    sizes = [event.ByteSize() async for event in handle.fetch_history_events()]
    assert max(sizes) < HISTORY_EVENT_LIMIT / 16, f"largest history event {max(sizes)} bytes"


async def test_cancelling_the_workflow_ends_the_jobs_process_group(client, tmp_path):
    store = stage(f"file://{tmp_path / 'cloud'}")
    job = JobSpec(name="hangs", code="jobs/counter", command=["python", "count.py", "--steps", "9", "--hang-at", "2"])
    worker, handle = await start(client, ArmsInput(runs=runs(job, store, ("target",)), tolerances=JobTolerances()))
    async with worker:
        progress = await _running_job(client, handle)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    # WAIT_CANCELLATION_COMPLETED: the workflow ended only after the activity had ended the group.
    assert not group_alive(progress.pid), "a process of the cancelled job is still running"


async def _running_job(client: Client, handle, timeout: float = 120) -> JobProgress:
    """The job's heartbeat, once it is hanging with its child (as the Temporal UI shows it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for pending in (await handle.describe()).raw_description.pending_activities:
            if pending.heartbeat_details.payloads:
                details = await client.data_converter.decode(pending.heartbeat_details.payloads, [JobProgress])
                progress = details[0]
                if progress.pid and progress.steps_logged >= 2:
                    return progress
        await asyncio.sleep(0.2)
    raise AssertionError("the job never reported its second step")
