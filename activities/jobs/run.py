"""Run an operator's job on an environment's worker: fetch, launch, stream metrics, collect, clean up.

The job runs as its own process group (`start_new_session`), so a timeout, a cancellation or a
job that leaves children behind is ended as a whole: SIGTERM to the group, then SIGKILL after a
grace period, and the activity returns only once no process of the group is left. A job that
exits non-zero or times out is a *result* (status, exit code, stderr tail), not an activity
failure: retrying an operator's crashing job would only crash it again, and the comparison turns
the result into a verdict that names the environment.

A resumable job (plan `resume:`) gets SKYSHIFT_CHECKPOINT_DIR; `handoff_at_step` sends it SIGTERM
once that step is logged and gives it `resume.grace` to checkpoint and exit 0 (SIGKILL after: a
failed handoff, the run still on this environment); its newest checkpoint goes to the store
(`checkpoint_prefix`) in every case, so nothing already checkpointed is lost. `resume_from` starts
the job from a checkpoint in this environment's store (SKYSHIFT_RESUME_FROM).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.errors import fail_fast_on_permanent_errors
from activities.jobs.files import ArtifactRef, data_variable, dataset_path, fetch_code, put_artifact
from activities.jobs.resume import CheckpointRef, fetch_checkpoint, put_checkpoint
from activities.jobs.series import JobTiming, MetricsTail, Record, dump_series, timing
from activities.stores import StoreSpec, join_key, open_store
from skyshift.runtime import state_dir
from skyshift.spec.jobs import JobSpec

Arm = Literal["source", "source-repeat", "target", "bench", "handoff", "production"]
JobStatus = Literal["succeeded", "failed", "timed_out", "stopped", "checkpointed"]
Handoff = Literal["checkpointed", "ignored_sigterm", "no_checkpoint", "exited", "finished_first"]
PYTHONS = ("python", "python3")


class RunJobInput(BaseModel):
    job: JobSpec
    environment: str
    arm: Arm
    store: StoreSpec = Field(description="The environment's storage: the job's code and datasets are read there")
    datasets: dict[str, str] = Field(
        default_factory=dict, description="Dataset name -> its path in `store`, for every name in job.uses"
    )
    code_root: str | None = Field(None, description="The source's code root (record_code_root); None: not checked")
    artifacts: StoreSpec = Field(description="Where the series, output files and logs are written")
    artifact_prefix: str = Field(min_length=1, description="Key prefix of this run's artifacts, unique per run")
    stop_after_steps: int | None = Field(
        None, ge=1, description="Benchmarks: end the job, as a success, once this many steps are logged"
    )
    kill_grace_seconds: float = Field(10.0, ge=0, description="Between SIGTERM and SIGKILL of the process group")
    poll_seconds: float = Field(0.5, gt=0, le=30, description="How often the metrics file is read and heartbeated")
    stderr_lines: int = Field(20, ge=1, le=500)
    handoff_at_step: int | None = Field(
        None,
        ge=0,
        description="Resumable jobs: SIGTERM once this step is logged, then wait resume.grace for "
        "a checkpoint and exit 0",
    )
    checkpoints: StoreSpec | None = Field(
        None, description="The store `checkpoint_prefix` and `resume_from` lie in (default: `store`)"
    )
    checkpoint_prefix: str | None = Field(
        None, description="Resumable jobs: where in `checkpoints` the newest checkpoint is put when the job ends"
    )
    resume_from: str | None = Field(
        None, description="A prefix in `checkpoints` holding a complete checkpoint: the job resumes from it"
    )
    sigterm_on_cancel: bool = Field(
        False,
        description="Resumable jobs: a cancellation is a move, not an abort: SIGTERM, resume.grace to checkpoint, "
        "the checkpoint put under `checkpoint_prefix` and the result returned (a production run's move)",
    )


class JobProgress(BaseModel):
    """Heartbeat details: what the Temporal UI shows while a job runs."""

    phase: Literal["fetching", "running", "stopping", "collecting"]
    pid: int | None = Field(None, description="The job's process group id on the worker")
    steps_logged: int = 0
    last_step: int | None = None
    loss: float | None = None
    per_s: float | None = Field(None, description="Recent steps per second")
    elapsed_s: float = 0.0
    detail: str = Field("", description="While fetching: the object being downloaded")


class OutputFile(BaseModel):
    path: str = Field(description="Relative to SKYSHIFT_OUTPUT")
    ref: ArtifactRef


class JobResult(BaseModel):
    """One arm's run: references to its series and files, never the series itself (history stays small)."""

    job: str
    environment: str
    arm: Arm
    status: JobStatus
    exit_code: int | None = None
    detail: str = ""
    stderr_tail: list[str] = Field(default_factory=list)
    code_root: str
    device: str = "cpu"
    gpus_used: int = 0
    steps_logged: int = 0
    last_step: int | None = None
    last_loss: float | None = None
    bad_lines: int = 0
    first_bad_line: str | None = None
    timing: JobTiming = Field(default_factory=JobTiming)
    metrics: ArtifactRef | None = None
    outputs: list[OutputFile] = Field(default_factory=list)
    stdout: ArtifactRef | None = None
    stderr: ArtifactRef | None = None
    checkpoint: CheckpointRef | None = Field(None, description="The newest checkpoint, put in the store")
    resumed_from_step: int | None = Field(None, description="The checkpoint's step this run resumed from")
    handoff: Handoff | None = Field(None, description="How a requested SIGTERM ended")
    sigterm_at: float | None = Field(None, description="When SIGTERM was sent (seconds since the epoch)")
    first_step_at: float | None = Field(None, description="When the first step was logged (seconds since the epoch)")

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "stopped", "checkpointed")


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def build_command(job: JobSpec) -> list[str]:
    """The argv to launch: `python` is the worker's interpreter; nproc_per_node > 1 goes through torchrun."""
    program, *rest = job.command
    is_python = program in PYTHONS
    if job.nproc_per_node == 1:
        return [sys.executable, *rest] if is_python else list(job.command)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={job.nproc_per_node}"]
    return [*launch, *rest] if is_python else [*launch, "--no-python", *job.command]


def job_environment(request: RunJobInput, output: Path, metrics: Path, data: dict[str, Path], gpus: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **request.job.env}
    env |= {
        "SKYSHIFT_METRICS": str(metrics),
        "SKYSHIFT_OUTPUT": str(output),
        "SKYSHIFT_SEED": str(request.job.seed),
        "SKYSHIFT_ENVIRONMENT": request.environment,
        "SKYSHIFT_ARM": request.arm,
        "SKYSHIFT_DIST_BACKEND": "nccl" if gpus else "gloo",
    }
    for name in ("SKYSHIFT_CHECKPOINT_DIR", "SKYSHIFT_CHECKPOINT_EVERY", "SKYSHIFT_RESUME_FROM"):
        env.pop(name, None)  # only what this run is given
    if request.job.resume is not None:
        env["SKYSHIFT_CHECKPOINT_DIR"] = str(output.parent / "checkpoints")
        if request.job.resume.every:
            env["SKYSHIFT_CHECKPOINT_EVERY"] = str(request.job.resume.every)
    if request.resume_from is not None:
        env["SKYSHIFT_RESUME_FROM"] = str(output.parent / "resume")
    env |= {data_variable(name): str(path) for name, path in data.items()}
    return env


# -- the process group -------------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if fields[0] not in "ZX" and int(fields[2]) == pgid:
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_gone(process: subprocess.Popen, pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    try:
        process.wait(timeout=max(seconds, 0))
    except subprocess.TimeoutExpired:
        return False
    while group_alive(pgid):  # children the leader left behind
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def end_group(process: subprocess.Popen, pgid: int, grace: float) -> None:
    """SIGTERM the whole group, SIGKILL what is left after `grace`, and wait until none of it remains."""
    if process.poll() is not None and not group_alive(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(process, pgid, grace):
        return
    _signal_group(pgid, signal.SIGKILL)
    process.wait()
    _wait_gone(process, pgid, 30)


def _tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - 64 * 1024))
        text = stream.read().decode(errors="replace")
    return [line[-500:] for line in text.splitlines() if line.strip()][-lines:]  # history stays small


def _rate(records: list[dict]) -> float | None:
    recent = records[-10:]
    if len(recent) < 2 or recent[-1]["time"] <= recent[0]["time"]:
        return None
    return round((len(recent) - 1) / (recent[-1]["time"] - recent[0]["time"]), 3)


# -- the activity ------------------------------------------------------------------------------


@activity.defn
@fail_fast_on_permanent_errors
def run_job(request: RunJobInput) -> JobResult:
    started, job = time.time(), request.job
    if job.resume is None and (request.handoff_at_step is not None or request.resume_from is not None):
        raise ApplicationError(
            f"job {job.name}: a handoff or a resume needs a resumable job; add `resume:` to workloads.jobs "
            f"({job.name}) once the job follows the resume contract",
            non_retryable=True,
        )
    if (request.handoff_at_step is not None or request.sigterm_on_cancel) and not request.checkpoint_prefix:
        raise ApplicationError(f"job {job.name}: a handoff needs checkpoint_prefix (where its checkpoint goes)",
                               non_retryable=True)  # fmt: skip
    missing = [name for name in job.uses if name not in request.datasets]
    if missing:
        raise ApplicationError(
            f"job {job.name}: datasets {', '.join(missing)} are used but not given (RunJobInput.datasets)",
            non_retryable=True,
        )
    activity.heartbeat(JobProgress(phase="fetching"))
    (state_dir() / "jobs").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{job.name}-{request.arm}-", dir=state_dir() / "jobs"))
    try:
        store = open_store(request.store)
        code = fetch_code(store, job.code, scratch / "code", request.code_root)
        cache = Path(os.environ.get("SKYSHIFT_CACHE_DIR") or state_dir() / "cache") / "datasets"
        data = {name: dataset_path(store, request.datasets[name], cache, _fetching) for name in job.uses}
        gpus = visible_gpus()
        checkpoints = open_store(request.checkpoints) if request.checkpoints else store
        resumed = None
        if request.resume_from:
            resumed = fetch_checkpoint(checkpoints, request.resume_from, scratch / "resume")
        output, metrics = scratch / "output", scratch / "metrics.jsonl"
        output.mkdir()
        env = job_environment(request, output, metrics, data, gpus)
        result, records = _supervise(request, scratch, env, metrics, started)
        result.code_root = code.root
        result.resumed_from_step = resumed
        if job.resume is not None and request.checkpoint_prefix:
            result.checkpoint = put_checkpoint(checkpoints, scratch / "checkpoints", request.checkpoint_prefix)
        _judge_handoff(request, result)
        result.gpus_used = job.gpus if job.gpus is not None else min(job.nproc_per_node, gpus)
        result.device = "cuda" if gpus else "cpu"
        activity.heartbeat(JobProgress(phase="collecting", steps_logged=result.steps_logged))
        _collect(request, scratch, result, records)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fetching(key: str) -> None:
    activity.heartbeat(JobProgress(phase="fetching", detail=key))


def _supervise(
    request: RunJobInput, scratch: Path, env: dict, metrics: Path, started: float
) -> tuple[JobResult, list[Record]]:
    job, tail = request.job, MetricsTail(metrics)
    status: JobStatus | None = None
    cancelled, sigterm_at, handoff = False, None, None
    # Shielded: a cancellation raised into this thread must not land between starting the group
    # and ending it, or the job would outlive the activity. A move (`sigterm_on_cancel`) catches the
    # cancellation the shield raises at its end: the job has checkpointed, its result is returned.
    try:
        with activity.shield_thread_cancel_exception():
            with open(scratch / "stdout.log", "wb") as out, open(scratch / "stderr.log", "wb") as err:
                process = subprocess.Popen(
                    build_command(job), cwd=scratch / "code", env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True,
                )  # fmt: skip
            pgid = process.pid
            deadline = time.monotonic() + job.timeout.total_seconds()
            try:
                while True:
                    exited = process.poll() is not None
                    tail.read_new()
                    last = tail.records[-1] if tail.records else None
                    activity.heartbeat(
                        JobProgress(
                            phase="running", pid=pgid, steps_logged=len(tail.records),
                            last_step=int(last["step"]) if last else None, loss=last.get("loss") if last else None,
                            per_s=_rate(tail.records), elapsed_s=round(time.time() - started, 1),
                        )
                    )  # fmt: skip
                    if exited:
                        break
                    if sigterm_at is None and request.handoff_at_step is not None and last is not None:
                        if int(last["step"]) >= request.handoff_at_step:
                            sigterm_at = time.time()
                            _signal_group(pgid, signal.SIGTERM)
                            grace_end = time.monotonic() + job.resume.grace.total_seconds()
                    elif sigterm_at is not None and time.monotonic() >= grace_end:
                        status, handoff = "failed", "ignored_sigterm"
                        break
                    if request.stop_after_steps and len(tail.records) >= request.stop_after_steps:
                        status = "stopped"
                        break
                    if time.monotonic() >= deadline:
                        status = "timed_out"
                        break
                    moving = request.sigterm_on_cancel and job.resume is not None
                    if activity.is_cancelled() and sigterm_at is None:
                        if not moving:
                            cancelled = True
                            break
                        if last is not None:  # a move: checkpoint, then exit 0
                            sigterm_at = time.time()
                            _signal_group(pgid, signal.SIGTERM)
                            grace_end = time.monotonic() + job.resume.grace.total_seconds()
                            continue
                        # Not stepping yet: a job still importing has no SIGTERM handler and would die of it.
                    waiting = request.handoff_at_step is not None and sigterm_at is None
                    # Waiting to send SIGTERM: read the series often, so the signal lands near the step asked.
                    pause = min(request.poll_seconds, 0.02) if waiting else request.poll_seconds
                    if moving and activity.is_cancelled():
                        time.sleep(min(pause, 0.1))  # a move: SIGTERM at the first step, then the job's exit
                    else:
                        activity.wait_for_cancelled_sync(pause)
            finally:
                activity.heartbeat(JobProgress(phase="stopping", pid=pgid, steps_logged=len(tail.records)))
                end_group(process, pgid, 0 if handoff == "ignored_sigterm" else request.kill_grace_seconds)
    except CancelledError:
        if not (request.sigterm_on_cancel and job.resume is not None):
            raise  # a move's cancellation ends in a result: checkpointed, or what the job did first
    if cancelled:
        raise CancelledError(f"job {job.name} cancelled on {request.environment}; its process group was ended")
    tail.read_new(final=True)
    code = process.returncode
    if status is None:
        status = "succeeded" if code == 0 else "failed"
    if status == "succeeded":
        detail = f"exited 0 after {len(tail.records)} steps"
    elif status == "stopped":
        detail = f"stopped after {len(tail.records)} steps, as asked (stop_after_steps)"
    elif status == "timed_out":
        detail = f"killed at its timeout ({job.timeout}) after {len(tail.records)} steps"
    elif handoff == "ignored_sigterm":
        detail = (
            f"job {job.name}: no exit within resume.grace ({job.resume.grace}) of SIGTERM: killed (SIGKILL) "
            f"after {len(tail.records)} steps; the run stays on {request.environment}"
        )
    else:
        reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        detail = f"{reason} after {len(tail.records)} steps"
    last = max(tail.records, key=lambda r: r["step"]) if tail.records else None
    result = JobResult(
        job=job.name, environment=request.environment, arm=request.arm, status=status, exit_code=code, detail=detail,
        stderr_tail=_tail(scratch / "stderr.log", request.stderr_lines) if status in ("failed", "timed_out") else [],
        code_root="", steps_logged=len(tail.records), last_step=int(last["step"]) if last else None,
        last_loss=last.get("loss") if last else None, bad_lines=tail.bad_lines, first_bad_line=tail.first_bad,
        timing=timing(tail.records, started, time.time(), job.warmup_steps), handoff=handoff, sigterm_at=sigterm_at,
        first_step_at=min((r["time"] for r in tail.records), default=None),
    )  # fmt: skip
    return result, tail.records


def _judge_handoff(request: RunJobInput, result: JobResult) -> None:
    """A requested handoff ends checkpointed only with exit 0 and a checkpoint of a step it logged."""
    if (request.handoff_at_step is None and result.sigterm_at is None) or result.handoff == "ignored_sigterm":
        return
    if result.sigterm_at is None:
        result.handoff = "finished_first"
        result.detail += f"; it ended before step {request.handoff_at_step} was logged: no SIGTERM sent"
    elif result.status != "succeeded":
        result.handoff = "exited"
        result.detail += " after SIGTERM (a resumable job exits 0 once it has checkpointed)"
    elif result.checkpoint is None or result.checkpoint.step != result.last_step:
        result.status, result.handoff = "failed", "no_checkpoint"
        found = "no checkpoint" if result.checkpoint is None else f"a checkpoint of step {result.checkpoint.step}"
        result.detail = (
            f"exited 0 after SIGTERM with {found}, not of its last logged step {result.last_step}: "
            "a resumable job checkpoints the step it finished before it exits"
        )
    else:
        result.status, result.handoff = "checkpointed", "checkpointed"
        waited = time.time() - result.sigterm_at
        result.detail = (
            f"checkpointed step {result.checkpoint.step} ({result.checkpoint.bytes} bytes) and exited 0 "
            f"within {waited:.1f}s of SIGTERM"
        )


def _collect(request: RunJobInput, scratch: Path, result: JobResult, records: list[Record]) -> None:
    """Series, output files and logs to the artifact store; the result keeps their references."""
    store, prefix = open_store(request.artifacts), request.artifact_prefix
    dump_series(records, scratch / "series.jsonl")
    result.metrics = put_artifact(store, join_key(prefix, "metrics.jsonl"), scratch / "series.jsonl")
    result.stdout = put_artifact(store, join_key(prefix, "stdout.log"), scratch / "stdout.log")
    result.stderr = put_artifact(store, join_key(prefix, "stderr.log"), scratch / "stderr.log")
    output = scratch / "output"
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        relative = path.relative_to(output).as_posix()
        ref = put_artifact(store, join_key(prefix, "output", relative), path)
        result.outputs.append(OutputFile(path=relative, ref=ref))
