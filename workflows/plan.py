"""MigrationPlan: the operator's input, validated completely before anything starts.

A plan names the environments (storage, compute facts, prices), the workloads to move, the
thresholds that judge the target, and the cutover stages. Everything a phase decides comes from
here, so a decision can always be traced back to a line of the plan.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from activities.metrics import EndpointPair, MetricsProvider, ScrapeProvider
from activities.stores.base import StoreSpec
from activities.traffic import RouterSpec

CONTROL_TASK_QUEUE = "skyshift.control"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"


def task_queue_for(environment: str) -> str:
    """The task queue a worker started with `--env NAME` serves."""
    return f"skyshift.{environment}"


def parse_duration(value: Any) -> Any:
    """Accept `90s`, `30m`, `24h`, `7d`, `1h30m`, ISO 8601 (`PT24H`) or seconds; pass timedeltas through."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and value.strip().upper().startswith("P"):
        return value.strip()  # ISO 8601 (how pydantic serializes timedeltas): pydantic parses it
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"'{value}' is not a duration; write e.g. 90s, 30m, 24h, 7d or 1h30m")
        return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_path(value: str) -> str:
    """A workload path is a prefix inside an environment's storage; it may not escape it."""
    if not isinstance(value, str):
        return value
    parts = value.strip("/").split("/")
    if value.startswith("/") or "\\" in value or "\x00" in value or ".." in parts:
        raise ValueError(f"'{value}' must be a relative path inside the storage root (no '..', no leading '/')")
    return value.strip("/")


RelativePath = Annotated[str, BeforeValidator(_relative_path)]


class ComputeSpec(_Model):
    gpu_type: str = Field(min_length=1, description="e.g. A100-80GB, H100-80GB, L40S, cpu")
    gpu_count: int = Field(ge=0, le=1024)
    price_per_gpu_hour: float = Field(ge=0, description="USD per GPU-hour (per instance-hour when gpu_count is 0)")


class Environment(_Model):
    name: str = Field(pattern=_NAME, description="Also names the worker's task queue: skyshift.<name>")
    provider: str = Field(pattern=_NAME, description="aws, gcp, azure, nebius, coreweave, onprem, ...")
    region: str = Field(min_length=1)
    storage: StoreSpec
    compute: ComputeSpec
    egress_per_gb_usd: float = Field(ge=0, description="Price of data leaving this environment, USD per GB")
    bandwidth_gbps: float = Field(10.0, gt=0, description="Sustained egress bandwidth used for time projections")
    allowed_data_regions: list[str] = Field(
        default_factory=list, description="Regions this environment's data may move to; empty allows any"
    )

    @property
    def task_queue(self) -> str:
        return task_queue_for(self.name)


class Dataset(_Model):
    name: str = Field(pattern=_NAME)
    path: RelativePath


class Checkpoint(_Model):
    name: str = Field(pattern=_NAME)
    path: RelativePath
    format: Literal["torch", "safetensors"] = "torch"
    parameters_billion: float | None = Field(None, gt=0, description="Model size, if known; else read from files")


class Workloads(_Model):
    datasets: list[Dataset] = Field(default_factory=list)
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    endpoints: list[EndpointPair] = Field(default_factory=list)
    router: RouterSpec | None = None
    metrics: MetricsProvider = Field(default_factory=ScrapeProvider, description="Where endpoint metrics are read")

    @model_validator(mode="after")
    def _check(self) -> Workloads:
        names = [w.name for w in (*self.datasets, *self.checkpoints, *self.endpoints)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"workload names must be unique; repeated: {', '.join(duplicates)}")
        if self.endpoints and self.router is None:
            raise ValueError("router: endpoints are listed, so a router is needed to shift their traffic")
        return self


class Thresholds(_Model):
    latency_increase_pct: float = Field(15.0, ge=0, description="Allowed p50/p95/p99 increase of target over source")
    error_rate_increase_pp: float = Field(0.1, ge=0, description="Allowed error-rate increase, percentage points")
    loss_divergence_pct: float = Field(1.0, ge=0, description="Allowed relative loss difference in the parallel run")
    min_samples: int = Field(50, ge=1, description="Fewer requests a side in a window is inconclusive")
    min_throughput_ratio: float = Field(0.8, gt=0, description="POC: target/source benchmark throughput floor")
    max_cost_ratio: float = Field(1.0, gt=0, description="POC: target/source cost per unit of work ceiling")
    inconclusive_limit: int = Field(3, ge=1, description="Consecutive inconclusive windows before pausing")
    max_consecutive_errors: int = Field(3, ge=1, description="Unreadable-metrics windows in a row that count as a fail")
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
        if self.duration < timedelta(0):
            raise ValueError("duration must not be negative")
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
    monitor_interval: Duration = Field(timedelta(minutes=5), description="How often both sides are measured")
    inconclusive_deadline: Duration = Field(
        timedelta(hours=1), description="How long a pause for inconclusive windows waits for an operator"
    )
    on_deadline: Literal["rollback", "continue"] = Field("rollback", description="What happens when nobody answers")

    @model_validator(mode="after")
    def _check(self) -> CutoverSpec:
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
        if self.monitor_interval <= timedelta(0):
            raise ValueError("monitor_interval: must be positive")
        return self


class BenchSpec(_Model):
    trials: int = Field(3, ge=1, le=50, description="Each environment runs the suite this many times; medians compared")
    matrix_size: int = Field(1024, ge=64, le=16384)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ParallelRunSpec(_Model):
    seed: int = 1234
    steps: int = Field(60, ge=5, le=100_000)
    batch_size: int = Field(64, ge=1)
    sample_bytes: int = Field(1 << 20, ge=4096, description="Bytes of the first dataset both sides train on")


class DecommissionSpec(_Model):
    delete_source: bool = Field(False, description="Delete the source copies after archiving (irreversible)")


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
    egress_budget_usd: float = Field(ge=0, description="Projected egress above this needs an operator's approval")
    soak_period: Duration = Field(timedelta(days=7), description="Wait at 100% before decommissioning")

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
        if self.soak_period < timedelta(0):
            raise ValueError("soak_period: must not be negative")
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
        super().__init__(f"{source}: invalid plan\n" + "\n".join(f"  {p}" for p in problems))


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_validation_error(error: ValidationError) -> list[str]:
    """Turn pydantic's errors into `environments[1].region: message` lines."""
    problems = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = item["msg"].removeprefix("Value error, ")
        where = _location(loc)
        problems.append(f"{where}: {message}" if where else message)
    return problems


def parse_plan(data: Any, source: str = "plan") -> MigrationPlan:
    """Validate plan data (already parsed from YAML/JSON); raise PlanError naming each bad field."""
    if not isinstance(data, dict):
        raise PlanError(source, [f"the plan must be a mapping of fields, not {type(data).__name__}"])
    try:
        return MigrationPlan.model_validate(data)
    except ValidationError as error:
        raise PlanError(source, describe_validation_error(error)) from None
