"""The report as data: what `report.json` holds and `report.html` shows, one pydantic model per part.

Every figure says where it came from (`basis`), so a budget owner can ask "why this number" and the
answer is in the file. Series are the recorded values, not resampled.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from activities.pricing import Effective
from workflows.state import AuditEntry

RiskLevel = Literal["low", "medium", "high", "unknown"]


class Figure(BaseModel):
    """A cost with its spread: median and range over the measurements it comes from."""

    median: float
    low: float
    high: float
    n: int = Field(description="How many measurements")
    unit: str
    basis: str = Field(description="How it was computed, from which recorded values")


class SideEconomics(BaseModel):
    environment: str
    price_per_hour_usd: float = Field(description="Plan: price per GPU hour x GPU count")
    per_1k_samples: Figure | None = None
    per_epoch: Figure | None = None
    per_1k_inferences: Figure | None = None
    effective: Effective | None = Field(
        None, description="(price + storage + amortized egress) ÷ measured useful throughput, each input sourced"
    )


class Savings(BaseModel):
    monthly_usd: float = Field(description="Run-rate saving per month for the same work, after the move")
    annual_run_rate_usd: float
    first_year_net_usd: float = Field(description="12 months of savings minus the one-off costs below")
    one_off_usd: float
    egress_usd: float
    double_running_usd: float = Field(description="The target's cost while both sides ran (parallel run, cutover)")
    double_running_hours: float
    payback_months: float | None = Field(None, description="One-off costs ÷ monthly saving; None if no saving")
    assumptions: list[str]


class Risk(BaseModel):
    name: str
    level: RiskLevel
    evidence: str = Field(description="The recorded numbers behind the level")
    source: str = Field(description="Where in the migration's record the evidence is")


class Convergence(BaseModel):
    """Time to reach the plan's target metric, when the migration's jobs report it."""

    arm: str
    seconds: float
    detail: str = ""


class Executive(BaseModel):
    outcome: str
    headline: str
    why: str | None = Field(None, description="For a migration that did not complete: the reason, first")
    source: SideEconomics
    target: SideEconomics
    savings: Savings | None = None
    convergence: list[Convergence] = Field(default_factory=list)
    risks: list[Risk] = Field(default_factory=list)


class CheckRow(BaseModel):
    metric: str
    outcome: str
    source: float | None = None
    target: float | None = None
    observed: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    effect_size: float | None = None
    dry_run: bool = False
    detail: str = ""


class VerdictRow(BaseModel):
    subject: str
    outcome: str
    summary: str
    at: datetime | None = Field(None, description="When the verdict was recorded (from the history)")
    query: str = Field("", description="Where the measured values came from: PromQL or scraped URLs")
    checks: list[CheckRow]


class Curve(BaseModel):
    arm: str
    environment: str
    values: list[float]
    steps: list[int] = Field(default_factory=list, description="The step of each value (default 1, 2, ...)")
    seconds: list[float] = Field(default_factory=list, description="Seconds since the arm's first step, if logged")
    job: str = ""
    source: str = Field("", description="Where the series was read: a store URL and key, checked against its BLAKE3")


class TrialPoint(BaseModel):
    side: str
    environment: str
    trial: int
    samples_per_s: float
    matmul_tflops: float | None = None
    kind: str = Field("micro-suite", description="micro-suite (the POC benchmark) or job:<name> (the operator's job)")
    unit: str = "samples"


class LatencyWindow(BaseModel):
    index: int
    stage: str
    endpoint: str
    at: datetime | None
    outcome: str
    source_ms: dict[str, float] = Field(description="p50/p95/p99 in ms of the window's source requests")
    target_ms: dict[str, float]
    source_requests: float
    target_requests: float


class TimePoint(BaseModel):
    at: datetime
    value: float
    label: str = ""


class Marker(BaseModel):
    at: datetime
    kind: Literal["gate", "approval", "rollback", "verdict_fail", "phase"]
    label: str


class Series(BaseModel):
    loss_curves: list[Curve] = Field(default_factory=list)
    throughput_trials: list[TrialPoint] = Field(default_factory=list)
    latency_windows: list[LatencyWindow] = Field(default_factory=list)
    traffic: list[TimePoint] = Field(default_factory=list)
    egress_bytes: list[TimePoint] = Field(default_factory=list)
    egress_usd: list[TimePoint] = Field(default_factory=list)
    markers: list[Marker] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="Series that could not be read, and why")


class StateFigures(BaseModel):
    """The migration state's own numbers, copied as they are (the report's figures must equal these)."""

    phase: str
    stage: str | None
    traffic_percent: int
    egress_bytes: int
    egress_cost_usd: float
    outcome: str | None
    outcome_reason: str
    source_cost_per_million_samples: float | None = None
    target_cost_per_million_samples: float | None = None
    throughput_ratio: float | None = None
    projected_egress_usd: float | None = None
    job_source_cost_per_epoch_usd: float | None = None
    job_target_cost_per_epoch_usd: float | None = None
    job_throughput_ratio: float | None = None
    data_transfer_amplification: float | None = Field(
        None, description="Bytes moved over the migration ÷ the bytes the assessment counted (1.0: each byte once)"
    )
    continuous_passes: int = 0
    continuous_bytes: int = 0
    final_sync_bytes: int = 0


class Report(BaseModel):
    schema_version: int = 1
    generated_at: datetime
    migration_id: str
    plan_name: str
    source: str
    target: str
    workflow_status: str
    started_at: datetime
    closed_at: datetime | None
    executive: Executive
    state: StateFigures
    series: Series
    verdicts: list[VerdictRow]
    audit: list[AuditEntry]
    sections: list[str] = Field(description="The sections this report has (absent data: no section)")
