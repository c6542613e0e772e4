"""The operator's jobs on a worker: real subprocesses (torch, torchrun/gloo), real stores, a real activity context.

`ActivityEnvironment` runs `run_job` as a worker would (heartbeats, cancellation raised into the
thread); nothing is mocked. A switch "only the target worker has" is an environment variable set
around that arm's run, as it would be in that worker's process.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities.analysis import AnalysisRule
from activities.jobs import (
    CompareJobArmsInput,
    JobProgress,
    JobResult,
    JobSpec,
    JobTolerances,
    RunJobInput,
    code_root,
    compare_job_arms,
    run_job,
)
from activities.jobs.files import read_artifact
from activities.jobs.run import group_alive
from activities.stores import StoreSpec, open_store

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "jobs"
HISTORY_EVENT_LIMIT = 256 * 1024


def stage(url: str, data_bytes: int = 60_000) -> StoreSpec:
    """A source cloud with the example jobs under jobs/ and a small corpus under datasets/corpus."""
    spec = StoreSpec(url=url)
    store = open_store(spec)
    for job in ("train", "counter"):
        for path in (EXAMPLES / job).glob("*.py"):
            store.put_file(f"jobs/{job}/{path.name}", path)
    store.put_bytes("datasets/corpus/part-000.bin", bytes(range(256)) * (data_bytes // 512))
    store.put_bytes("datasets/corpus/part-001.bin", os.urandom(data_bytes // 2))
    return spec


def train_job(steps: int = 40, **fields) -> JobSpec:
    return JobSpec(
        name="tiny", code="jobs/train", command=["python", "train.py", "--steps", str(steps)],
        env={"OMP_NUM_THREADS": "1"}, uses=["corpus"], seed=7, **fields,
    )  # fmt: skip


def hanging_job(**fields) -> JobSpec:
    """The dependency-free job, hanging at step 2 with a child process and SIGTERM ignored."""
    command = ["python", "count.py", "--steps", "12", "--hang-at", "2"]
    return JobSpec(name="hangs", code="jobs/counter", command=command, **fields)


@contextmanager
def worker_env(**variables: str) -> Iterator[None]:
    """The environment of the worker an arm runs on (e.g. only the target has TRAIN_SOFTMAX_FP16)."""
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


def run_arm(
    job: JobSpec, store: StoreSpec, arm: str, env: ActivityEnvironment | None = None, environment: str = "",
    worker: dict[str, str] | None = None, **fields,
) -> JobResult:  # fmt: skip
    environment = environment or ("gcp-target" if arm == "target" else "aws-source")
    request = RunJobInput(
        job=job, environment=environment, arm=arm, store=store, datasets={"corpus": "datasets/corpus"},
        code_root=code_root(open_store(store), job.code).root, artifacts=store,
        artifact_prefix=f".skyshift/jobs/{job.name}/{arm}-{uuid.uuid4().hex[:8]}", **fields,
    )  # fmt: skip
    with worker_env(**(worker or {})):
        return (env or ActivityEnvironment()).run(run_job, request)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> StoreSpec:
    return stage(f"file://{tmp_path_factory.mktemp('source-cloud')}")


def test_job_spec_is_plan_data_with_clear_errors():
    job = JobSpec.model_validate({"name": "resnet-ft", "code": "jobs/resnet", "command": ["python", "train.py"],
                                  "timeout": "1h30m", "uses": ["imagenet-shards"]})  # fmt: skip
    assert job.timeout == timedelta(hours=1, minutes=30) and job.nproc_per_node == 1
    with pytest.raises(ValueError, match=r"SKYSHIFT_SEED.*set by skyshift"):
        JobSpec(name="a", code="jobs/a", command=["python"], env={"SKYSHIFT_SEED": "1"})
    with pytest.raises(ValueError, match="relative prefix"):
        JobSpec(name="a", code="../elsewhere", command=["python"])
    with pytest.raises(ValueError, match="Extra inputs"):
        JobSpec.model_validate({"name": "a", "code": "jobs/a", "command": ["python"], "gpu": 1})


def test_a_job_runs_with_the_contract_and_returns_references(local_store):
    beats: list[JobProgress] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    result = run_arm(train_job(steps=12), local_store, "source", env)
    assert result.status == "succeeded" and result.steps_logged == 12 and result.last_step == 11
    assert [o.path for o in result.outputs] == ["model.safetensors"]
    series = [json.loads(line) for line in read_artifact(result.metrics).splitlines()]
    assert [r["step"] for r in series] == list(range(12)) and all(r["samples"] == 32 for r in series)
    assert result.timing.unit == "samples" and result.timing.steady_per_s > 0
    assert result.timing.time_to_first_step_s > 0 and result.timing.step_time_p95_s >= result.timing.step_time_p50_s
    running = [b for b in beats if b.phase == "running" and b.steps_logged]
    assert running and running[-1].loss == pytest.approx(result.last_loss)


def test_code_that_differs_from_the_source_is_refused(tmp_path):
    store = stage(f"file://{tmp_path / 'cloud'}")
    job = train_job()
    source_root = code_root(open_store(store), job.code).root
    open_store(store).put_bytes("jobs/train/train.py", b"print('not what the source ran')\n")
    request = RunJobInput(job=job, environment="gcp-target", arm="target", store=store,
                          datasets={"corpus": "datasets/corpus"}, code_root=source_root, artifacts=store,
                          artifact_prefix=".skyshift/jobs/x")  # fmt: skip
    with pytest.raises(ApplicationError, match="not the source's") as refused:
        ActivityEnvironment().run(run_job, request)
    assert refused.value.non_retryable


def test_a_hanging_job_is_killed_at_its_timeout_with_its_children(local_store):
    pids: list[int] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: details[0].pid and pids.append(details[0].pid)
    # The hang ignores SIGTERM and starts a child: SIGKILL after the grace must end both.
    result = run_arm(hanging_job(timeout="3s"), local_store, "target", env, kill_grace_seconds=0.5)
    assert result.status == "timed_out" and "killed at its timeout" in result.detail
    assert result.steps_logged == 2 and any("hanging at step 2" in line for line in result.stderr_tail)
    assert pids and not group_alive(pids[-1])


def test_cancelling_kills_the_whole_process_group(local_store):
    env, hanging = ActivityEnvironment(), threading.Event()
    seen: list[int] = []

    def on_heartbeat(progress: JobProgress) -> None:
        # Cancel once the job hangs with its child started: two live processes in its group.
        if progress.pid and progress.steps_logged >= 2 and _members(progress.pid) >= 2:
            seen.append(progress.pid)
            hanging.set()

    env.on_heartbeat = on_heartbeat
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_arm(hanging_job(), local_store, "target", env, kill_grace_seconds=0.5, poll_seconds=0.2)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    assert hanging.wait(timeout=120), "the job never reached its hang"
    env.cancel()
    thread.join(timeout=120)
    assert not thread.is_alive() and isinstance(outcome[0], CancelledError)
    assert not group_alive(seen[0]), "a process of the cancelled job is still running"


def _members(pgid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else None
        except OSError:
            continue
        if fields and fields[0] not in "ZX" and int(fields[2]) == pgid:
            count += 1
    return count


def test_two_process_torchrun_gloo_job_reads_its_data_from_s3(s3_bucket):
    store = stage(f"s3://{s3_bucket}/cloud")
    job = train_job(steps=6, nproc_per_node=2)
    result = run_arm(job, store, "source")
    assert result.status == "succeeded", result.stderr_tail
    series = [json.loads(line) for line in read_artifact(result.metrics).splitlines()]
    assert len(series) == 6 and all(r["samples"] == 2 * 32 for r in series)  # both ranks' batches, logged once
    assert [o.path for o in result.outputs] == ["model.safetensors"]
    assert result.code_root == code_root(open_store(store), job.code).root


def test_object_store_datasets_are_cached_per_worker_and_follow_the_store(s3_bucket):
    store = stage(f"s3://{s3_bucket}/cloud")
    job = JobSpec(name="reads", code="jobs/counter", command=["python", "count.py", "--steps", "3"], uses=["corpus"])

    def data_dir() -> Path:
        result = run_arm(job, store, "target")
        summary = json.loads(read_artifact(next(o.ref for o in result.outputs if o.path == "summary.json")))
        return Path(summary["data"]["SKYSHIFT_DATA_CORPUS"])

    first = data_dir()
    remote = open_store(store)
    assert {p.name: p.read_bytes() for p in first.iterdir() if not p.name.startswith(".")} == {
        name: remote.read_bytes(f"datasets/corpus/{name}") for name in ("part-000.bin", "part-001.bin")
    }
    unchanged = (first / "part-000.bin").stat().st_mtime_ns
    remote.put_bytes("datasets/corpus/part-001.bin", b"changed at the source")
    second = data_dir()
    assert second == first and (second / "part-001.bin").read_bytes() == b"changed at the source"
    assert (second / "part-000.bin").stat().st_mtime_ns == unchanged  # not downloaded again
    remote.remove("datasets/corpus/part-000.bin")
    assert not (data_dir() / "part-000.bin").exists()


def test_a_ten_thousand_step_job_keeps_history_small(tmp_path):
    store = stage(f"file://{tmp_path / 'cloud'}")
    job = JobSpec(name="long", code="jobs/counter", command=["python", "count.py", "--steps", "10000"])
    beats: list[JobProgress] = []
    arms = {}
    for arm in ("source", "source-repeat", "target"):
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *details: beats.append(details[0])
        arms[arm] = run_arm(job, store, arm, env)
    result = arms["target"]
    assert result.status == "succeeded" and result.steps_logged == 10_000
    assert len(read_artifact(result.metrics).splitlines()) == 10_000  # the series lies in the store
    assert len(result.model_dump_json()) < 8 * 1024
    assert max(len(b.model_dump_json()) for b in beats) < 1024
    # Throughput on two shared cores is noise: judged and reported (dry run), not acted on.
    tolerances = JobTolerances(rules=[AnalysisRule(metric="throughput", compare="within_floor", threshold=0.05,
                                                   dry_run=True)])  # fmt: skip
    request = CompareJobArmsInput(job="long", source=arms["source"], source_repeat=arms["source-repeat"],
                                  target=arms["target"], tolerances=tolerances)  # fmt: skip
    comparison = ActivityEnvironment().run(compare_job_arms, request)
    assert comparison.verdict.outcome == "pass", comparison.verdict.summary
    assert next(m for m in comparison.metrics if m.metric == "loss").divergence == 0.0
    for payload in (request, comparison):
        assert len(payload.model_dump_json()) < HISTORY_EVENT_LIMIT


@pytest.fixture(autouse=True)
def _no_leftover_scratch(isolated_state):
    yield
    jobs = Path(isolated_state) / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir()), "a job's scratch directory was left behind"
    shutil.rmtree(jobs, ignore_errors=True)
