"""skyshift's own metrics: bytes sent, chunks reused, objects verified, verdicts by outcome, rollbacks.

Recorded through the Temporal runtime's meter of the current activity (`activity.metric_meter()`) or
workflow (`workflow.metric_meter()`, which records nothing while a workflow replays, so a worker
restart does not count a verdict twice). They appear on the worker's Prometheus endpoint beside the
SDK's own metrics (`skyshift worker --metrics-port`), with the activity or workflow type, task queue and
namespace as labels. Outside an activity or workflow (a unit test calling an activity's function) every
call is a no-op: metrics never make work fail.

Call from activities and workflows alike:

    from skyshift import metrics
    metrics.bytes_sent(n, source=env.name, target=target.name)
    metrics.verdict(verdict.outcome, subject=verdict.subject)
"""

from __future__ import annotations

from temporalio import activity, workflow
from temporalio.common import MetricMeter

#: Every skyshift metric: name (as Prometheus shows it, before the `_total` suffix), unit, what it counts.
METRICS: dict[str, tuple[str, str]] = {
    "skyshift_bytes_sent": ("By", "Bytes that crossed environments (egress), by source and target environment"),
    "skyshift_chunks_reused": ("1", "Chunks rebuilt from data the target already held instead of being sent"),
    "skyshift_objects_verified": ("1", "Objects whose BLAKE3 root was checked after writing or archiving"),
    "skyshift_verdicts": ("1", "Verdicts recorded, by outcome (pass/fail/inconclusive/error) and subject kind"),
    "skyshift_rollbacks": ("1", "Rollbacks started, by what triggered them (operator, analysis, deadline, ...)"),
    "skyshift_sync_passes": ("1", "Continuous-sync passes (plan sync:), by outcome (done, failed, cancelled)"),
    "skyshift_sync_pass_bytes": ("By", "Bytes sent to the target by continuous-sync passes (plan sync:)"),
}


def _meter() -> MetricMeter | None:
    if activity.in_activity():
        return activity.metric_meter()
    if workflow.in_workflow():
        return workflow.metric_meter()
    return None


def _add(name: str, value: int, **labels: str) -> None:
    if value <= 0:
        return
    meter = _meter()
    if meter is None:
        return
    unit, description = METRICS[name]
    meter.create_counter(name, description, unit).add(value, {k: v for k, v in labels.items() if v})


def bytes_sent(n: int, *, source: str = "", target: str = "") -> None:
    _add("skyshift_bytes_sent", n, source=source, target=target)


def chunks_reused(n: int) -> None:
    _add("skyshift_chunks_reused", n)


def objects_verified(n: int) -> None:
    _add("skyshift_objects_verified", n)


def verdict(outcome: str, *, subject: str = "") -> None:
    """One verdict; `subject` like `cutover:25pct` is labelled by its kind (`cutover`) to bound cardinality."""
    _add("skyshift_verdicts", 1, outcome=outcome, subject=subject.split(":", 1)[0])


def sync_pass(outcome: str, bytes_sent: int) -> None:
    """One continuous-sync pass: its rate and bytes show how current the target is kept and what it costs."""
    _add("skyshift_sync_passes", 1, outcome=outcome)
    _add("skyshift_sync_pass_bytes", bytes_sent)


def rollback(trigger: str) -> None:
    """`trigger` is who asked, without the detail: `skyshift:analysis` → `analysis`, an operator → `operator`."""
    kind = trigger.split(":", 1)[1] if trigger.startswith("skyshift:") else "operator"
    _add("skyshift_rollbacks", 1, trigger=kind)
