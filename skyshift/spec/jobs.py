"""What a plan says about the operator's jobs: the job itself, how its arms are compared, how it is costed."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from skyshift.spec.analysis import AnalysisRule

_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> Any:
    """`90s`, `30m`, `2h`, `1h30m`, seconds, ISO 8601 or a timedelta (the plan's own duration forms)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and not value.strip().upper().startswith("P"):
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"'{value}' is not a duration; write e.g. 90s, 30m, 2h or 1h30m")
        return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))
    return value


def _code_prefix(value: Any) -> Any:
    if isinstance(value, str):
        parts = value.strip("/").split("/")
        if value.startswith("/") or "\\" in value or "\x00" in value or ".." in parts or not value.strip("/"):
            raise ValueError(f"'{value}' must be a relative prefix inside the storage root (no '..', no leading '/')")
        return value.strip("/")
    return value


class ResumeSpec(BaseModel):
    """A job that follows the resume contract (plan `workloads.jobs[].resume`): it can be moved while it runs.

    SIGTERM asks it to checkpoint into SKYSHIFT_CHECKPOINT_DIR and exit 0 within `grace`; it resumes
    from SKYSHIFT_RESUME_FROM. The same move serves a handoff, a preemption and a failback.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    grace: Annotated[timedelta, BeforeValidator(_duration)] = Field(
        timedelta(seconds=120),
        description="From SIGTERM to a complete checkpoint and exit 0; SIGKILL after (120s: the AWS spot notice)",
    )
    every: int | None = Field(
        500, ge=1, description="Periodic checkpoint every this many steps (SKYSHIFT_CHECKPOINT_EVERY); null: none"
    )
    at: int | None = Field(
        None, ge=1, description="The parallel run's handoff arm sends SIGTERM once this step is logged (default: half)"
    )

    @field_validator("grace")
    @classmethod
    def _grace(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive, e.g. 120s (the time a job has to checkpoint after SIGTERM)")
        return value


class JobSpec(BaseModel):
    """One operator job (plan `workloads.jobs[]`): their code, run by each environment's worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    code: Annotated[str, BeforeValidator(_code_prefix)] = Field(
        description="A prefix in the source storage, synced to the target like a dataset; both sides run "
        "byte-identical code (its BLAKE3 root is recorded and verified)"
    )
    command: list[str] = Field(
        min_length=1,
        description="Run in the fetched code's directory; a leading `python`/`python3` is the worker's interpreter",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Added to the worker's own environment")
    uses: list[str] = Field(default_factory=list, description="Datasets the job reads, from its environment's copy")
    nproc_per_node: int = Field(1, ge=1, le=64, description="> 1: launched through torchrun (gloo on CPU, nccl on GPU)")
    gpus: int | None = Field(
        None, ge=0, description="GPUs the job occupies; default one per process where the worker has GPUs, else 0"
    )
    timeout: Annotated[timedelta, BeforeValidator(_duration)] = Field(
        timedelta(hours=2), description="The job is killed (its whole process group) after this long"
    )
    seed: int = Field(1234, description="SKYSHIFT_SEED, the same for every arm")
    warmup_steps: int | None = Field(
        None, ge=0, description="Steps excluded from throughput and step times; default 10% of the steps logged"
    )
    samples_per_epoch: int | None = Field(None, ge=1, description="For cost per epoch")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="For cost per epoch when samples_per_epoch is not given (x samples per step)"
    )
    resume: ResumeSpec | None = Field(
        None, description="The job follows the resume contract (SIGTERM → checkpoint → exit 0; SKYSHIFT_RESUME_FROM)"
    )
    fallback: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Environments a preempted run may resume on, in order of preference; the zone that just "
        "evicted it is skipped unless nothing else is listed",
    )

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the first word must name a program, e.g. [python, train.py]")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"'{key}' is not an environment variable name")
            if key.startswith("SKYSHIFT_"):
                raise ValueError(f"'{key}': SKYSHIFT_* variables are set by skyshift (the job contract)")
        return value

    @field_validator("uses")
    @classmethod
    def _uses(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"'{name}' is not a dataset name")
        return value

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"'{name}' is not an environment name")
        if repeated := sorted({name for name in value if value.count(name) > 1}):
            raise ValueError(f"each environment once; repeated: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if self.timeout <= timedelta(0):
            raise ValueError("timeout: must be positive")
        if self.resume is not None and self.resume.grace >= self.timeout:
            raise ValueError(
                f"resume.grace ({self.resume.grace}) must be shorter than the job's timeout ({self.timeout}): "
                "shorten the grace or raise the timeout"
            )
        return self


class JobTolerances(BaseModel):
    """How the three arms (source, source again, target) of a job are judged (plan: a job comparison)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    floor_margin: float = Field(
        2.0,
        ge=0,
        description="Target-vs-source divergence may reach the source-vs-source floor x (1 + margin). 2.0: three "
        "times the noise two source runs show (the largest difference over a run of two noisy runs varies: "
        "measured over 336 triples of the example job, target/floor exceeded 2x in 2.1% and never 3x)",
    )
    metric_tolerance: float = Field(
        1e-5,
        ge=0,
        description="Relative per-step divergence of a metric allowed whatever the floor (a deterministic source has "
        "a floor of 0)",
    )
    throughput_tolerance: float = Field(
        0.05, ge=0, lt=1, description="Allowed steady-state slowdown of the target, or the source-vs-source spread"
    )
    rtol: float = Field(1e-5, ge=0, description="Per-tensor relative tolerance of the final checkpoint")
    atol: float = Field(1e-7, ge=0, description="Per-tensor absolute tolerance of the final checkpoint")
    ignore_metrics: list[str] = Field(
        default_factory=lambda: ["time", "*_time", "*time_s", "*_per_s", "*_per_sec", "throughput*", "mem*"],
        description="Globs of metric fields not compared as series (timings differ by nature)",
    )
    rules: list[AnalysisRule] = Field(
        default_factory=list,
        description="Extra analysis rules, tried before the defaults (e.g. {metric: eval_*, compare: within_floor, "
        "threshold: 0.01, floor_margin: 1} or dry_run: true for a metric under observation)",
    )
    top_tensors: int = Field(5, ge=1, le=100, description="Tensors named in the verdict and the table")


class JobCostModel(BaseModel):
    """How the POC turns measured throughput into cost per epoch (plan: the benchmark job's costing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    egress_amortized_over_epochs: float = Field(
        100.0,
        gt=0,
        description="The migration's egress cost is spread over this many epochs of the job on the target "
        "(the source pays no migration egress)",
    )
