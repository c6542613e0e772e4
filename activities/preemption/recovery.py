"""When a job is recovered elsewhere, as a pure decision: no false recoveries.

SkyPilot's managed jobs restarted a healthy job 24 times after 25 status timeouts (skypilot#10155):
a status probe that times out, a worker that does not answer, a slow metadata server are all
*silence*, and silence is not a preemption. Recovery starts only on evidence:

1. a provider notice of a kind the policy acts on (by default `preempt`);
2. the worker's own report that the job's machine is going or the job was lost with it;
3. the job's heartbeat timing out **and** the environment confirming the instance is gone.

A missed heartbeat with the instance running, or with nobody able to say, waits: the caller asks
again (and an operator can always force the move). Pure and deterministic: safe in workflow code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from activities.preemption.base import Notice, NoticeKind, Observation

Trigger = Literal["notice", "worker_report", "heartbeat_and_gone"]


class WorkerReport(BaseModel):
    """What the environment's own worker said about the job's machine."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["instance_stopping", "job_lost"] = Field(
        description="instance_stopping: the worker is being shut down by the provider; job_lost: the job's "
        "process died with its machine (e.g. killed by the provider's stop)"
    )
    detail: str = ""


class RecoveryEvidence(BaseModel):
    """Everything known about one running job's environment at the moment of deciding."""

    model_config = ConfigDict(frozen=True)

    notice: Notice | None = None
    worker_report: WorkerReport | None = None
    heartbeat_timed_out: bool = Field(False, description="The job's own heartbeat is overdue")
    instance: Literal["running", "gone", "unknown"] = Field(
        "unknown", description="What the environment says of the instance; unknown when it could not be asked"
    )
    status_timeouts: int = Field(0, ge=0, description="Status probes that got no answer: recorded, never a reason")
    unreachable_looks: int = Field(0, ge=0, description="Watcher looks with no readable answer: the same")

    def with_observation(self, observation: Observation) -> RecoveryEvidence:
        """Fold one watcher observation in: a notice, the instance gone, or one more silence."""
        update: dict = {}
        if observation.notice is not None:
            update["notice"] = observation.notice
        if observation.gone:
            update["instance"] = "gone"
        if not observation.reachable:
            update["unreachable_looks"] = self.unreachable_looks + 1
        return self.model_copy(update=update)


class RecoveryDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    recover: bool
    trigger: Trigger | None = None
    reason: str


def decide_recovery(evidence: RecoveryEvidence, act_on: tuple[NoticeKind, ...] = ("preempt",)) -> RecoveryDecision:
    """Recover on a notice, the worker's report, or a missed heartbeat the environment confirms; else wait."""
    silences = evidence.status_timeouts + evidence.unreachable_looks
    quiet = f" ({silences} unanswered status probes/looks are not evidence)" if silences else ""
    if evidence.notice is not None and evidence.notice.kind in act_on:
        notice = evidence.notice
        by = f", acting by {notice.deadline.isoformat()}" if notice.deadline else ""
        return RecoveryDecision(recover=True, trigger="notice", reason=f"{notice.provider} {notice.kind} notice{by}")
    if evidence.worker_report is not None:
        report = evidence.worker_report
        return RecoveryDecision(
            recover=True, trigger="worker_report", reason=f"the worker reported {report.kind}: {report.detail}".strip()
        )
    if evidence.heartbeat_timed_out and evidence.instance == "gone":
        return RecoveryDecision(
            recover=True,
            trigger="heartbeat_and_gone",
            reason="the job's heartbeat timed out and the environment confirms the instance is gone",
        )
    if evidence.heartbeat_timed_out:
        state = "is running" if evidence.instance == "running" else "could not be asked"
        return RecoveryDecision(
            recover=False,
            reason=f"the job's heartbeat timed out but the instance {state}: waiting, a missing heartbeat alone "
            f"is never a preemption{quiet}",
        )
    if evidence.notice is not None:
        return RecoveryDecision(
            recover=False, reason=f"{evidence.notice.provider} {evidence.notice.kind} notice: advice, not acted on"
        )
    return RecoveryDecision(recover=False, reason=f"no notice, no report, heartbeat on time{quiet}")
