"""A running job moved between two environments by the activities alone, as their workers would run them.

The handoff arm's steps, in order: the source's worker runs the job until a step and sends SIGTERM
(`run_job` with `handoff_at_step`), its checkpoint goes to the source's store; the delta engine moves
that prefix to the target (fingerprint on the source, apply on the target: `tests.engine`); the
target's worker resumes the job from it (`run_job` with `resume_from`). The workflow's handoff arm
calls the same activities on the two task queues.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel
from temporalio.testing import ActivityEnvironment

from activities.jobs import JobResult, JobSpec, RunJobInput, code_root, run_job
from activities.stores import StoreSpec, open_store
from activities.transfer.delta import Totals
from tests.engine import sync_specs


class Move(BaseModel):
    before: JobResult
    sync: Totals | None = None
    after: JobResult | None = None


@contextmanager
def worker_env(**variables: str) -> Iterator[None]:
    """The environment of the worker an arm runs on (a switch only that worker has)."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(job: JobSpec, store: StoreSpec, arm: str, environment: str, worker: dict[str, str] | None = None,
        datasets: dict[str, str] | None = None, **fields) -> JobResult:  # fmt: skip
    request = RunJobInput(
        job=job, environment=environment, arm=arm, store=store,
        datasets=datasets if datasets is not None else {name: f"datasets/{name}" for name in job.uses},
        code_root=code_root(open_store(store), job.code).root, artifacts=store,
        artifact_prefix=f".skyshift/jobs/{job.name}/{arm}-{uuid.uuid4().hex[:8]}", **fields,
    )  # fmt: skip
    with worker_env(**(worker or {})):
        return ActivityEnvironment().run(run_job, request)


def checkpoint_prefix(job: JobSpec) -> str:
    """One prefix per job, the same on both sides: the delta engine rebuilds from what the target holds."""
    return f"checkpoints/{job.name}-resume"


def hand_off(job: JobSpec, source: StoreSpec, target: StoreSpec, at_step: int, *,
             source_env: str = "aws-source", target_env: str = "gcp-target",
             target_worker: dict[str, str] | None = None) -> Move:  # fmt: skip
    """SIGTERM at `at_step` on the source, the checkpoint delta-synced, resumed on the target.

    A handoff that did not checkpoint stops there: the run stays on the source (its newest
    checkpoint in the source's store), nothing is synced and nothing runs on the target.
    """
    prefix = checkpoint_prefix(job)
    before = run(job, source, "handoff", source_env, handoff_at_step=at_step, checkpoint_prefix=prefix)
    if before.status != "checkpointed":
        return Move(before=before)
    totals, _, _ = sync_specs(source, target, prefix)
    after = run(job, target, "handoff", target_env, target_worker, resume_from=prefix)
    return Move(before=before, sync=totals, after=after)
