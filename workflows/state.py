"""Migration state and operator messages: what `status` returns and what survives continue-as-new."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import SearchAttributeKey

from workflows.plan import MigrationPlan
from workflows.saga import Saga
from workflows.sync import SyncResult
from workflows.training_events import TrainingProgress

with workflow.unsafe.imports_passed_through():
    from activities.analysis import Verdict
    from activities.assess import AssessReport
    from activities.checkpoints.compat import CompatibilityReport
    from activities.checkpoints.sealed import SealResult
    from activities.jobs import JobBenchComparison, JobComparison
    from activities.metrics import EndpointSnapshot
    from activities.microsuite import BenchResult
    from activities.microsuite.judge import PocJudgement
    from activities.microsuite.poc import PocComparison
    from activities.sequential import SignEvidence
    from activities.shadow.runner import ShadowResult
    from activities.transfer.archive import ReleaseResult
    from activities.windows import LoadBaseline, SideWindow

#: The lifecycle, in order (MigrationWorkflow.lifecycle() runs these); `status` shows the same words.
#: `shadow` runs only when an endpoint has a `shadow` section; `failback` (the window after the final
#: sync in which the way back stays open) only when the plan's `decommission.failback_window` is not 0.
PHASES = ("assess", "poc", "parallel_run", "shadow", "cutover", "decommission", "failback")
#: The phase list of workers that counted phases by index (`next_phase`), to resume their state.
LEGACY_PHASES = ("assess", "poc", "parallel_run", "cutover", "decommission")
Phase = Literal[
    "pending", "assess", "poc", "parallel_run", "shadow", "cutover", "decommission", "failback", "rolling_back", "done"
]
#: `failed_back`: after completion, an operator sent traffic (and work) back to the source in the window.
Outcome = Literal["completed", "rolled_back", "stopped", "cancelled", "failed", "failed_back"]

#: The gate of the failback window: approving it closes the window early (and releases the source if the plan says so).
WINDOW_GATE = "failback-window"

SA_PHASE = SearchAttributeKey.for_keyword("SkyshiftPhase")
SA_TRAFFIC = SearchAttributeKey.for_int("SkyshiftTrafficPercent")
SA_VERDICT = SearchAttributeKey.for_keyword("SkyshiftVerdict")
SA_OUTCOME = SearchAttributeKey.for_keyword("SkyshiftOutcome")
SEARCH_ATTRIBUTES = (SA_PHASE, SA_TRAFFIC, SA_VERDICT, SA_OUTCOME)
#: Verdicts kept in state; older ones remain in the audit log and history.
MAX_VERDICTS = 20


class ApproveInput(BaseModel):
    stage: str = Field(description="The gate awaiting approval, as `status` shows it")
    by: str = "operator"
    note: str = ""


class RollbackInput(BaseModel):
    reason: str
    by: str = "operator"


class OperatorInput(BaseModel):
    by: str = "operator"
    note: str = ""


class FailbackInput(BaseModel):
    reason: str = ""
    by: str = "operator"
    drill: bool = Field(False, description="Rehearse: check the way back works, move nothing")


class AuditEntry(BaseModel):
    at: datetime
    actor: str
    action: str
    detail: str = ""


class Gate(BaseModel):
    stage: str
    reason: str
    opened_at: datetime


class CutoverProgress(BaseModel):
    stage_index: int = 0
    stage_elapsed_s: float = 0
    entered: bool = Field(False, description="Current stage's approval given and weights set")
    previous: list[EndpointSnapshot] = Field(default_factory=list)
    inconclusive_streak: int = 0
    error_streak: int = 0
    skip_requested: bool = False
    promote_requested: bool = False
    baselines: dict[str, SideWindow] = Field(default_factory=dict, description="Source's last full window")
    evidence: dict[str, SignEvidence] = Field(
        default_factory=dict, description="This stage's sequential evidence per '<endpoint>.<metric>' (counters)"
    )
    library: dict[str, list[LoadBaseline]] = Field(
        default_factory=dict, description="Per endpoint, the source's windows by load level (a few summaries)"
    )


class PocResult(BaseModel):
    transfers: list[SyncResult] = Field(default_factory=list)
    sealed: list[SealResult] = Field(default_factory=list, description="Checkpoints moved encrypted")
    checkpoints: list[CompatibilityReport] = Field(default_factory=list, description="Per checkpoint, at the target")
    code_roots: dict[str, str] = Field(default_factory=dict, description="Job name → BLAKE3 root of its code")
    source_bench: list[BenchResult] = Field(default_factory=list)
    target_bench: list[BenchResult] = Field(default_factory=list)
    comparison: PocComparison | None = None
    judgement: PocJudgement | None = Field(None, description="The micro-suite side by side, ceilings, compatibility")
    job_bench: JobBenchComparison | None = Field(None, description="The operator's job benchmarked on both sides")


class DecommissionResult(BaseModel):
    final_sync: list[SyncResult] = Field(default_factory=list)
    archived_objects: int = 0
    verified_objects: int = 0
    released: list[ReleaseResult] = Field(default_factory=list)


class ReversePass(BaseModel):
    """One pass of the reverse sync (target → source) in the failback window."""

    at: datetime
    bytes_sent: int = 0
    objects: int = 0
    seconds: float = 0
    rpo_s: float = Field(0, description="Age of the newest target data not yet at the source when the pass ended")


class SyncPass(BaseModel):
    """One pass of the continuous sync (source → target) between the POC and the final sync."""

    number: int
    at: datetime = Field(description="When the pass started: the target holds the source as of then")
    bytes_sent: int = 0
    objects: int = Field(0, description="Objects written at the target (new or changed at the source)")
    seconds: float = 0
    lag_s: float = Field(0, description="How far the target trailed the source when the pass ended (its duration)")
    outcome: Literal["done", "failed", "cancelled"] = "done"
    detail: str = ""
    changed: list[str] = Field(default_factory=list, description="Keys written (first few)")


class ContinuousSyncState(BaseModel):
    """Plan `sync:`: a durable loop carried across continue-as-new by its pass count and next due time."""

    started_at: datetime | None = None
    next_due: datetime | None = None
    passes_run: int = 0
    passes: list[SyncPass] = Field(default_factory=list, description="Newest `sync.keep` passes")
    bytes_sent: int = Field(0, description="Over every pass")
    objects: int = Field(0, description="Over every pass")
    in_pass: bool = False
    stopped_at: datetime | None = None
    stopped_for: str | None = Field(None, description="Why it stopped: the final sync, or an undo")


class FailbackState(BaseModel):
    opened_at: datetime | None = None
    closes_at: datetime | None = Field(None, description="When the way back closes and the source may be released")
    request: FailbackInput | None = Field(None, description="The failback an operator asked for")
    requested_at: datetime | None = None
    drill_requests: int = 0
    drills_done: int = 0
    drills: list[Verdict] = Field(default_factory=list, description="Rehearsals, newest last")
    passes: list[ReversePass] = Field(default_factory=list, description="Reverse sync passes (newest 20)")
    passes_run: int = 0
    reverse_bytes: int = 0
    traffic_back_s: float | None = Field(None, description="Failback request → 100% of traffic on the source")
    closed_by: str | None = Field(None, description="'timer', or who approved closing it early")


class MigrationState(BaseModel):
    migration_id: str
    plan_name: str
    phase: Phase = "pending"
    next_phase: int = Field(0, description="Phases completed (kept for state written by older workers)")
    completed_phases: list[str] = Field(default_factory=list, description="Phases that ran to the end, in order")
    stage: str | None = None
    traffic_percent: int = 0
    paused: bool = False
    pending_gate: Gate | None = None
    rollback_request: RollbackInput | None = None
    point_of_no_return: bool = False
    assessment: AssessReport | None = None
    poc: PocResult = Field(default_factory=PocResult)
    parallel_run: Verdict | None = None
    jobs: list[JobComparison] = Field(default_factory=list, description="Parallel run: each job's three-arm comparison")
    shadow: list[ShadowResult] = Field(default_factory=list, description="Shadow phase: each endpoint's comparison")
    cutover: CutoverProgress = Field(default_factory=CutoverProgress)
    decommission: DecommissionResult = Field(default_factory=DecommissionResult)
    failback: FailbackState = Field(default_factory=FailbackState)
    sync: ContinuousSyncState = Field(default_factory=ContinuousSyncState)
    training: TrainingProgress = Field(default_factory=TrainingProgress, description="cutover.training: handoff")
    verdicts: list[Verdict] = Field(default_factory=list)
    egress_bytes: int = 0
    egress_cost_usd: float = 0
    saga: Saga = Field(default_factory=Saga)
    audit: list[AuditEntry] = Field(default_factory=list)
    outcome: Outcome | None = None
    outcome_reason: str = ""
    ended_in: str | None = Field(None, description="The phase the migration was in when it stopped or failed")

    @property
    def in_failback_window(self) -> bool:
        """Done in an operator's sense: completed, with the way back still open (`skyshift failback`)."""
        return self.phase == "failback" and self.outcome is None

    def data_transfer_amplification(self) -> float | None:
        """Bytes moved over the migration ÷ the dataset bytes the assessment counted (None before it)."""
        if self.assessment is None or self.assessment.total_bytes <= 0:
            return None
        return self.egress_bytes / self.assessment.total_bytes


class MigrationInput(BaseModel):
    plan: MigrationPlan
    resume: MigrationState | None = Field(None, description="Carried across continue-as-new")
