"""MigrationPlan: the operator's input, validated completely before anything starts.

A plan names the environments (storage, compute facts, prices), the workloads to move, the
thresholds that judge the target, and the cutover stages. Everything a phase decides comes from
here, so a decision can always be traced back to a line of the plan.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from activities.checkpoints.kms import KeyRef
from activities.stores.base import StoreSpec, overlap
from skyshift.spec.endpoints import EndpointPair, MetricsProvider, ScrapeProvider
from skyshift.spec.jobs import JobCostModel, JobSpec, JobTolerances
from skyshift.spec.traffic import RouterSpec

CONTROL_TASK_QUEUE = "skyshift.control"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")

#: How big a plan may be once parsed. A real plan is a few hundred values a handful of levels deep;
#: these keep a hostile one (10,000 nested lists, an alias bomb, a self-containing alias) from
#: exhausting recursion, memory or time in the loader and in validation.
MAX_DEPTH = 32
MAX_NODES = 20_000
#: Integers beyond int64 cannot cross into other SDKs or the UI intact, and no plan number needs them.
MAX_INT = 2**63 - 1
#: The longest any plan duration may be (a stage, the soak, a deadline). Temporal timers allow more,
#: but no migration holds a stage for over a year, and a bound keeps timedelta arithmetic finite.
MAX_DURATION = timedelta(days=365)
#: Problems shown in one error; the rest are counted, so a hostile plan cannot flood the terminal.
MAX_PROBLEMS = 50


def task_queue_for(environment: str) -> str:
    """The task queue a worker started with `--env NAME` serves."""
    return f"skyshift.{environment}"


def parse_duration(value: Any) -> Any:
    """Accept `90s`, `30m`, `24h`, `7d`, `1h30m`, ISO 8601 (`PT24H`) or seconds; pass timedeltas through."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _seconds(value, value)
    if isinstance(value, str) and value.strip().upper().startswith("P"):
        return value.strip()  # ISO 8601 (how pydantic serializes timedeltas): pydantic parses it
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{shown(value)} is not a duration; write e.g. 90s, 30m, 24h, 7d or 1h30m")
        return _seconds(sum(float(n) * _UNIT_SECONDS[u] for n, u in parts), value)
    return value


def _seconds(total: float, written: Any) -> timedelta:
    # timedelta() raises OverflowError (not a validation error) past ~2.7 million years or on infinity.
    if not math.isfinite(total) or abs(total) > MAX_DURATION.total_seconds():
        raise ValueError(f"{shown(written)} is out of range: durations are at most {MAX_DURATION.days} days")
    return timedelta(seconds=total)


def duration_between(low: timedelta, high: timedelta = MAX_DURATION) -> Any:
    """A plan duration type bounded to [low, high]; `Duration` is [0, MAX_DURATION]."""

    def check(value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        if value < low:
            raise ValueError(f"must be at least {_spoken(low)}")
        if value > high:
            raise ValueError(f"must be at most {_spoken(high)}")
        return value

    return Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(check)]


def _spoken(value: timedelta) -> str:
    if value.days and value == timedelta(days=value.days):
        return f"{value.days} day{'s' if value.days != 1 else ''}"
    return f"{value.total_seconds():g} s"


Duration = duration_between(timedelta(0))
#: Each monitor window is a scrape activity and a timer in history: under a second would flood it;
#: over a day would leave a whole stage unjudged.
MonitorInterval = duration_between(timedelta(seconds=1), timedelta(days=1))
#: Each reverse-sync pass is a child workflow in history: at least a second apart, at most a day.
FailbackInterval = duration_between(timedelta(seconds=1), timedelta(days=1))
#: A wait for an operator: zero would decide before anyone could answer (a pause that pauses nothing).
OperatorWait = duration_between(timedelta(seconds=1))


def shown(value: Any, width: int = 80) -> str:
    """A value quoted for an error line: escaped (no terminal control codes) and cut to `width`."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."


class FieldError(ValueError):
    """A model validator's complaint about one of its nested fields: `where` extends the location
    pydantic reports, so the line reads `workloads.endpoints[0].target_url: ...`."""

    def __init__(self, where: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.where = where


class _Model(BaseModel):
    # allow_inf_nan=False: an infinite price or threshold would pass every check, then serialize as
    # null and leave the workflow unable to decode its own input.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _relative_path(value: Any) -> Any:
    """A workload path is a prefix inside an environment's storage: one spelling, never escaping it.

    `a/./b` and `a//b` are refused rather than normalized: object stores treat them as different
    keys from `a/b`, so the same data would be reached under two names. A trailing `/` only says
    "directory" and is dropped."""
    if not isinstance(value, str):
        return value
    path = value.removesuffix("/")
    segments = path.split("/")
    if not path:
        raise ValueError("must name a prefix inside the storage root, e.g. datasets/corpus")
    if value.startswith("/") or "\\" in value or _CONTROL.search(value):
        raise ValueError(
            f"{shown(value)} must be relative to the storage root: no leading '/', backslash or control characters"
        )
    if ".." in segments:
        raise ValueError(f"{shown(value)} must stay inside the storage root: '..' is not allowed")
    if "." in segments or "" in segments:
        raise ValueError(
            f"{shown(value)} has a '.' or empty segment; write the path once, as segments joined by single '/'"
        )
    return path


RelativePath = Annotated[str, BeforeValidator(_relative_path)]


def http_url_problem(url: str) -> str | None:
    """Why an endpoint, router or metrics URL is unusable as a base other paths are appended to, or None.

    Credentials are refused because the plan is stored in workflow history; dot and empty segments
    because servers normalize them, so `http://host/a/../admin` is not the URL it looks like."""
    if _CONTROL.search(url) or " " in url or "\\" in url:
        return f"{shown(url)} must not contain spaces, backslashes or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: it raises on a malformed or out-of-range one
    except ValueError as error:
        return f"{shown(url)} is not a URL: {error}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{shown(url)} must be http:// or https:// followed by a host, e.g. http://chat.internal:8000"
    if parts.username is not None or parts.password is not None:
        return f"{shown(url)} must not carry credentials: the plan is kept in workflow history"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"{shown(url)} must not have a query or fragment: skyshift appends paths to it"
    segments = parts.path.removesuffix("/").split("/")[1:]
    if any(unquote(segment) in ("", ".", "..") for segment in segments):
        return f"{shown(url)} has a '.', '..' or empty path segment; write the path as the server resolves it"
    return None


class ComputeSpec(_Model):
    gpu_type: str = Field(min_length=1, description="e.g. A100-80GB, H100-80GB, L40S, cpu")
    gpu_count: int = Field(ge=0, le=1024)
    price_per_gpu_hour: float = Field(
        ge=0,
        le=10_000,
        description="USD per GPU-hour (per instance-hour when gpu_count is 0); at most 10,000, "
        "~100x the dearest GPU-hour sold, so cost arithmetic stays finite",
    )


class Environment(_Model):
    name: str = Field(pattern=_NAME, description="Also names the worker's task queue: skyshift.<name>")
    provider: str = Field(pattern=_NAME, description="aws, gcp, azure, nebius, coreweave, onprem, ...")
    region: str = Field(min_length=1)
    storage: StoreSpec
    compute: ComputeSpec
    egress_per_gb_usd: float = Field(
        ge=0, le=100, description="Price of data leaving this environment, USD per GB; at most 100 (~500x list prices)"
    )
    bandwidth_gbps: float = Field(
        10.0,
        ge=0.001,
        le=100_000,
        description="Sustained egress bandwidth used for time projections; "
        "1 Mbit/s to 100 Tbit/s, so a projected transfer time is always a finite number",
    )
    allowed_data_regions: list[str] = Field(
        default_factory=list, description="Regions this environment's data may move to; empty allows any"
    )
    preemption: Literal["aws", "gcp", "azure", "k8s-label", "none"] = Field(
        "none",
        description="Where this environment's worker reads preemption notices: AWS IMDSv2, GCP metadata, Azure "
        "Scheduled Events, a Kubernetes node label (CoreWeave-style), or none",
    )
    preemption_address: str | None = Field(
        None,
        description="The metadata service's (or API server's) base URL, e.g. http://127.0.0.1:8169; "
        "default: the provider's own (SKYSHIFT_PREEMPTION_ADDRESS on the worker overrides that default)",
    )

    @model_validator(mode="after")
    def _check_endpoint(self) -> Environment:
        if self.storage.endpoint is not None and (problem := http_url_problem(self.storage.endpoint)):
            raise FieldError(("storage", "endpoint"), problem)
        if self.preemption_address is not None and (problem := http_url_problem(self.preemption_address)):
            raise FieldError(("preemption_address",), problem)
        return self

    @property
    def task_queue(self) -> str:
        return task_queue_for(self.name)


class Dataset(_Model):
    name: str = Field(pattern=_NAME)
    path: RelativePath


class CheckpointEncryption(KeyRef):
    """A checkpoint's key reference, and whether the target keeps it sealed at rest."""

    at_rest: Literal["plaintext", "sealed"] = Field(
        "plaintext",
        description="`sealed`: the target store keeps only the sealed repository; whatever loads it on the target "
        "decrypts into the worker's local scratch (deleted after use). `plaintext`: decrypted into the target store",
    )


class Checkpoint(_Model):
    name: str = Field(pattern=_NAME)
    path: RelativePath
    format: Literal["torch", "safetensors", "dcp"] = "torch"
    parameters_billion: float | None = Field(
        None, gt=0, le=100_000, description="Model size, if known; else read from files (at most 100 trillion)"
    )
    encryption: CheckpointEncryption | None = Field(
        None,
        description="Move it sealed under keys you control: chunks AEAD-sealed at the source, integrity checked and "
        "decrypted only by the target's worker (a KMS key id or file:///key; never key material)",
    )
    world_size: int | None = Field(
        None, ge=1, le=65_536, description="Ranks that will load it at the target (default: the target's GPU count)"
    )


class Workloads(_Model):
    datasets: list[Dataset] = Field(default_factory=list)
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    jobs: list[JobSpec] = Field(
        default_factory=list, description="The operator's own jobs, run on both sides in the parallel run"
    )
    endpoints: list[EndpointPair] = Field(default_factory=list)
    router: RouterSpec | None = None
    metrics: MetricsProvider = Field(default_factory=ScrapeProvider, description="Where endpoint metrics are read")

    @model_validator(mode="after")
    def _check(self) -> Workloads:
        names = [w.name for w in (*self.datasets, *self.checkpoints, *self.jobs, *self.endpoints)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"workload names must be unique; repeated: {', '.join(duplicates)}")
        if self.endpoints and self.router is None:
            raise ValueError("router: endpoints are listed, so a router is needed to shift their traffic")
        datasets = {d.name for d in self.datasets}
        for index, job in enumerate(self.jobs):
            for used in job.uses:
                if used not in datasets:
                    raise FieldError(("jobs", index, "uses"), f"'{used}' is not a dataset of this plan "
                                     f"({', '.join(sorted(datasets)) or 'none listed'})")  # fmt: skip
        for index, endpoint in enumerate(self.endpoints):
            mirrored = endpoint.shadow is not None and endpoint.shadow.mirror_percent > 0
            if mirrored and (self.router is None or self.router.kind != "http"):
                raise FieldError(("endpoints", index, "shadow", "mirror_percent"),
                                 "mirroring live traffic needs skyshift's http router (router.kind: http)")  # fmt: skip
        for where, url in self._urls():
            if problem := http_url_problem(url):
                raise FieldError(where, problem)
        return self

    def _urls(self) -> Iterator[tuple[tuple[int | str, ...], str]]:
        """Every URL skyshift will call, with where it is in the plan (these models live in activities/)."""
        for index, endpoint in enumerate(self.endpoints):
            yield ("endpoints", index, "source_url"), endpoint.source_url
            yield ("endpoints", index, "target_url"), endpoint.target_url
        if self.router is not None and self.router.kind == "http":
            yield ("router", "admin_url"), self.router.admin_url
        if self.metrics.kind == "prometheus":
            yield ("metrics", "url"), self.metrics.url


class Thresholds(_Model):
    """What judges the target. Each ceiling sits where the check would stop being able to fail."""

    latency_increase_pct: float = Field(
        15.0,
        ge=0,
        le=1000,
        description="The p50/p95 slowdown of target over source a cutover stage must catch (half of it is "
        "tolerated; one window whose p10, p25 and p50 are all beyond twice it rolls back at once when certain); "
        "at most 1000 "
        "(an 11x slower target): above that latency could never fail",
    )
    error_rate_increase_pp: float = Field(
        0.1,
        ge=0,
        le=100,
        description="The error-rate increase a stage must catch, percentage points of a rate that "
        "is 0-100 (half of it tolerated; one window beyond it rolls back at once when certain)",
    )
    stage_false_rollback_rate: float = Field(
        0.01,
        gt=0,
        le=0.2,
        description="Cutover: the probability that a stage of equal endpoints rolls back, "
        "bounded over the stage's whole duration (all endpoints and metrics together); at most 0.2",
    )
    load_match_tolerance: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Cutover: request rates within this share of each other count as the same load "
        "(a target is never compared with a source window at a lighter load)",
    )
    loss_divergence_pct: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="Allowed relative loss difference in the parallel run; at most 1000 "
        "(an 11x loss), above which any run would pass",
    )
    min_samples: int = Field(
        50,
        ge=1,
        le=1_000_000_000,
        description="Fewer requests a side in a window is inconclusive; at most a billion: no endpoint serves "
        "that in one window, so higher only means every window is inconclusive",
    )
    min_throughput_ratio: float = Field(
        0.8, gt=0, le=100, description="POC: target/source benchmark throughput floor; at most 100x"
    )
    max_cost_ratio: float = Field(
        1.0, gt=0, le=100, description="POC: target/source cost per unit of work ceiling; at most 100x"
    )
    inconclusive_limit: int = Field(
        3, ge=1, le=1000, description="Consecutive inconclusive windows before pausing (at most 1000)"
    )
    max_consecutive_errors: int = Field(
        3, ge=1, le=1000, description="Unreadable-metrics windows in a row that count as a fail (at most 1000)"
    )
    confidence: float = Field(0.98, gt=0.5, lt=1, description="Confidence of the statistical tests in verdicts")
    dry_run: list[Literal["latency", "error_rate"]] = Field(
        default_factory=list, description="Metrics judged and reported but never acted on"
    )


class Stage(_Model):
    percent: int = Field(ge=1, le=100, description="Share of traffic sent to the target")
    duration: Duration = Field(timedelta(0), description="How long to hold and monitor this stage")
    approval: bool = Field(False, description="Wait for an operator's approve before entering the stage")
    name: str = Field("", description="Defaults to '<percent>pct'")

    @model_validator(mode="after")
    def _default_name(self) -> Stage:
        if not self.name:
            object.__setattr__(self, "name", f"{self.percent}pct")
        return self


class CutoverSpec(_Model):
    stages: list[Stage] = Field(
        default_factory=lambda: [
            Stage(percent=5, duration=timedelta(hours=24)),
            Stage(percent=25, duration=timedelta(hours=48)),
            Stage(percent=50, duration=timedelta(hours=72)),
            Stage(percent=100),
        ]
    )
    monitor_interval: MonitorInterval = Field(
        timedelta(minutes=5), description="How often both sides are measured; 1 s to 1 day"
    )
    inconclusive_deadline: OperatorWait = Field(
        timedelta(hours=1), description="How long a pause for inconclusive windows waits for an operator (≥ 1 s)"
    )
    on_deadline: Literal["rollback", "continue"] = Field("rollback", description="What happens when nobody answers")
    training: Literal["none", "handoff"] = Field(
        "none",
        description="handoff: a production run of the resumable job starts on the source when the cutover begins "
        "and is moved to the target (SIGTERM, checkpoint, delta sync, resume, judged) at `handoff_stage`",
    )
    handoff_stage: str | None = Field(None, description="The stage whose entry hands the run off (default: the last)")
    training_job: str | None = Field(None, description="Which resumable job is the production run (default: the first)")
    watch_steps: int = Field(10, ge=1, le=100_000, description="Steps after the handoff judged for continuity")

    @model_validator(mode="after")
    def _check(self) -> CutoverSpec:
        if self.handoff_stage is not None and self.handoff_stage not in [s.name for s in self.stages]:
            raise ValueError(
                f"handoff_stage: {self.handoff_stage!r} is not a stage; name one of "
                + ", ".join(repr(s.name) for s in self.stages)
            )
        if not self.stages:
            raise ValueError("stages: at least one stage is needed, ending at 100")
        for index, (previous, stage) in enumerate(zip(self.stages, self.stages[1:], strict=False), start=1):
            if stage.percent <= previous.percent:
                raise ValueError(
                    f"stages[{index}].percent: {stage.percent} must be above the previous stage's {previous.percent}"
                )
        if self.stages[-1].percent != 100:
            raise ValueError(f"stages[{len(self.stages) - 1}].percent: the last stage must reach 100")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("stages: stage names must be unique")
        return self


class BenchSpec(_Model):
    trials: int = Field(3, ge=1, le=50, description="Each environment runs the suite this many times; medians compared")
    matrix_size: int = Field(1024, ge=64, le=16384)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seconds_per_test: float = Field(0.5, gt=0, le=60, description="Timed duration of each micro-benchmark per trial")
    sustained_seconds: float | None = Field(
        None, gt=0, le=3600, description="Length of the sustained run (default 60 s on GPU, 2 s on CPU)"
    )
    allreduce_processes: int | None = Field(
        None, ge=0, le=1024, description="All-reduce ranks (default: every GPU when there are several; 0: skip)"
    )
    min_ceiling_fraction: float = Field(
        0.5, ge=0, le=1, description="A target figure below this share of its datasheet peak is flagged"
    )
    max_sustained_drop_pct: float = Field(10.0, ge=0, le=100, description="Burst-to-sustained drop allowed")
    job: str | None = Field(None, description="One of workloads.jobs, benchmarked on both sides (the POC on your job)")
    job_steps: int = Field(50, ge=1, le=10_000_000, description="Steps each benchmark trial of the job runs")
    cost: JobCostModel = Field(default_factory=JobCostModel, description="How the migration's egress is amortized")


class ParallelRunSpec(_Model):
    jobs: JobTolerances = Field(
        default_factory=JobTolerances, description="How the job arms are compared (noise-floor margin, tolerances)"
    )
    seed: int = 1234
    throughput_trials: int = Field(
        3,
        ge=1,
        le=20,
        description="Runs of each job a side, interleaved in time, that its throughput is judged "
        "from (fewer than 3: a slower target is at most inconclusive)",
    )
    steps: int = Field(60, ge=5, le=100_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    sample_bytes: int = Field(
        1 << 20, ge=4096, le=1 << 30, description="Bytes of the first dataset both sides train on (held in memory)"
    )


class DecommissionSpec(_Model):
    delete_source: bool = Field(
        False, description="Delete the source copies once the failback window has closed (irreversible)"
    )
    failback_window: Duration = Field(
        timedelta(days=30),
        description="After the final sync the migration stays open this long: `skyshift failback` routes traffic "
        "back to the source, `--drill` rehearses it; the source is released only when it closes (0s: at once)",
    )
    reverse_sync: list[RelativePath] = Field(
        default_factory=list,
        description="Paths the target writes (checkpoints, job outputs) delta-synced back to the source during the "
        "failback window, so failing back loses at most one interval; never a path a workload moves",
    )
    reverse_every: FailbackInterval = Field(
        timedelta(minutes=15), description="How often the reverse sync runs in the failback window (the RPO bound)"
    )


#: Continuous sync passes: at least a second apart (tests, demos), at most a week (a target a week stale
#: is what the final sync alone would give).
SyncInterval = duration_between(timedelta(seconds=1), timedelta(days=7))


class ContinuousSyncSpec(_Model):
    """Plan `sync:`: keep the target's datasets current from the POC to the final sync (off when absent)."""

    every: SyncInterval = Field(
        description="How often the datasets are delta-synced to the target between the POC and the final sync, "
        "e.g. 6h; 1 s to 7 days"
    )
    keep: int = Field(20, ge=1, le=500, description="Passes kept in state (newest); the counts cover all of them")


class MigrationPlan(_Model):
    name: str = Field(pattern=_NAME)
    source: str = Field(description="Name of the environment migrated from")
    target: str = Field(description="Name of the environment migrated to")
    environments: list[Environment] = Field(min_length=2)
    workloads: Workloads = Field(default_factory=Workloads)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    cutover: CutoverSpec = Field(default_factory=CutoverSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    parallel_run: ParallelRunSpec = Field(default_factory=ParallelRunSpec)
    decommission: DecommissionSpec = Field(default_factory=DecommissionSpec)
    egress_budget_usd: float = Field(
        ge=0, le=1e9, description="Projected egress above this needs an operator's approval; at most 1e9 USD"
    )
    soak_period: Duration = Field(timedelta(days=7), description="Wait at 100% before decommissioning")
    sync: ContinuousSyncSpec | None = Field(
        None,
        description="Continuous delta sync of the datasets while the parallel run, shadow, cutover and soak "
        "go on, so the final sync is small (off when absent)",
    )

    @model_validator(mode="after")
    def _check(self) -> MigrationPlan:
        names = [e.name for e in self.environments]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise ValueError(f"environments[{index}].name: '{name}' is used twice")
        for field in ("source", "target"):
            if getattr(self, field) not in names:
                raise ValueError(
                    f"{field}: '{getattr(self, field)}' is not one of the environments ({', '.join(names)})"
                )
        if self.source == self.target:
            raise ValueError("target: must differ from source")
        jobs = [j.name for j in self.workloads.jobs]
        if self.bench.job is not None and self.bench.job not in jobs:
            raise FieldError(("bench", "job"), f"'{self.bench.job}' is not one of workloads.jobs ({', '.join(jobs)})")
        for index, job in enumerate(self.workloads.jobs):
            for unknown in [f for f in job.fallback if f not in names]:
                raise FieldError(("workloads", "jobs", index, "fallback"),
                                 f"'{unknown}' is not one of the environments ({', '.join(names)})")  # fmt: skip
        if self.sync is not None and not self.workloads.datasets:
            raise FieldError(("sync",), "the plan has no workloads.datasets to keep current: remove `sync:` or add one")
        if self.cutover.training == "handoff":
            resumable = [j.name for j in self.workloads.jobs if j.resume is not None]
            if not resumable:
                raise FieldError(("cutover", "training"), "handoff needs a resumable job: add `resume:` to one of "
                                 "workloads.jobs (its job must follow the resume contract)")  # fmt: skip
            if self.cutover.training_job is not None and self.cutover.training_job not in resumable:
                raise FieldError(("cutover", "training_job"), f"'{self.cutover.training_job}' is not a resumable job "
                                 f"({', '.join(resumable)})")  # fmt: skip
        if (why := overlap(self.source_env.storage, self.target_env.storage, resolve=False)) is not None:
            raise FieldError(("environments",), f"the source and target storage overlap ({why})")
        moved = [(d.name, d.path) for d in self.workloads.datasets] + [
            (c.name, c.path) for c in self.workloads.checkpoints
        ]
        moved += [(j.name, j.code) for j in self.workloads.jobs]
        for index, path in enumerate(self.decommission.reverse_sync):
            for name, workload in moved:
                if path == workload or path.startswith(workload + "/") or workload.startswith(path + "/"):
                    raise FieldError(("decommission", "reverse_sync", index),
                                     f"'{path}' overlaps workload '{name}' ({workload}): the reverse sync writes to "
                                     "the source, so it may only carry what the target produced")  # fmt: skip
        return self

    def environment(self, name: str) -> Environment:
        return next(e for e in self.environments if e.name == name)

    @property
    def source_env(self) -> Environment:
        return self.environment(self.source)

    @property
    def target_env(self) -> Environment:
        return self.environment(self.target)


class PlanError(ValueError):
    """A plan that failed validation; `problems` are lines of the form `field.path: what is wrong`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        super().__init__(f"{source}: invalid plan\n" + "\n".join(f"  {p}" for p in lines))


def field_path(loc: tuple[Any, ...]) -> str:
    """`("environments", 1, "region")` → `environments[1].region`; odd keys are quoted, never printed raw."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _SIMPLE_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{shown(part, 40)}]"
    return text


def describe_validation_error(error: ValidationError) -> list[str]:
    """Turn pydantic's errors into `environments[1].region: message` lines."""
    problems = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            loc += cause.where
        message = item["msg"].removeprefix("Value error, ")
        where = field_path(loc)
        problems.append(f"{where}: {message}" if where else message)
    return problems


def _values(data: Any) -> Iterator[tuple[tuple[Any, ...], Any, int]]:
    """(path, value, depth) of every value in parsed data, in document order, without recursion."""
    stack: list[tuple[tuple[Any, ...], Any, int]] = [((), data, 1)]
    while stack:
        path, value, depth = stack.pop()
        yield path, value, depth
        if isinstance(value, dict):
            children = list(value.items())
        elif isinstance(value, list | tuple | set | frozenset):
            children = list(enumerate(value))
        else:
            continue
        if depth < MAX_DEPTH:
            stack.extend(((*path, key), child, depth + 1) for key, child in reversed(children))


def number_problems(path: tuple[Any, ...], value: Any) -> str | None:
    """Infinity and NaN (`.inf`, `1e309`) would pass `ge=0` checks and serialize as null; huge integers
    would not survive other SDKs."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{field_path(path) or 'plan'}: {value} is not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return f"{field_path(path) or 'plan'}: {shown(value, 40)} is out of range (at most {MAX_INT:,})"
    return None


def data_problems(data: Any) -> list[str]:
    """What parsed plan data must not reach validation with: too deep, too many values, numbers that
    are not finite. Checked on the data, before any model, so models embedded from activities/ are
    covered too, and every line names the path of the bad value."""
    problems: list[str] = []
    for count, (path, value, depth) in enumerate(_values(data), start=1):
        if count > MAX_NODES:
            problems.append(f"the plan has more than {MAX_NODES:,} values; a plan this large is not a plan")
            break
        if depth >= MAX_DEPTH and isinstance(value, dict | list | tuple | set | frozenset) and value:
            problems.append(f"{field_path(path)}: nested deeper than {MAX_DEPTH} levels")
        elif problem := number_problems(path, value):
            problems.append(problem)
    return problems


def parse_plan(data: Any, source: str = "plan") -> MigrationPlan:
    """Validate plan data (already parsed from YAML/JSON); raise PlanError naming each bad field."""
    if not isinstance(data, dict):
        raise PlanError(source, [f"the plan must be a mapping of fields, not {type(data).__name__}"])
    if problems := data_problems(data):
        raise PlanError(source, problems)
    try:
        plan = MigrationPlan.model_validate(data)
    except ValidationError as error:
        raise PlanError(source, describe_validation_error(error)) from None
    # Models from activities/ may turn a string such as "1e309" into an infinite float themselves.
    dumped = [number_problems(path, value) for path, value, _ in _values(plan.model_dump())]
    if problems := [p for p in dumped if p]:
        raise PlanError(source, problems)
    return plan
