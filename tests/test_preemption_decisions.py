"""No false recoveries and no resuming in the zone just evicted: the pure decisions of issue 20."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from activities.preemption import Notice, Observation
from activities.preemption.fallback import Eviction, FallbackCandidate, choose_fallback
from activities.preemption.recovery import RecoveryEvidence, WorkerReport, decide_recovery

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def notice(kind: str = "preempt") -> Notice:
    return Notice(provider="aws", kind=kind, deadline=NOW + timedelta(minutes=2), seen_at=NOW, key=f"aws:{kind}")


def silence(count: int) -> list[Observation]:
    return [Observation(provider="aws", reachable=False, error="ReadTimeout", at=NOW) for _ in range(count)]


def test_twenty_five_status_timeouts_cause_no_recovery() -> None:
    evidence = RecoveryEvidence(heartbeat_timed_out=True)
    recoveries = 0
    for observation in silence(25):
        evidence = evidence.with_observation(observation).model_copy(
            update={"status_timeouts": evidence.status_timeouts + 1}
        )
        recoveries += decide_recovery(evidence).recover
    decision = decide_recovery(evidence)
    assert recoveries == 0
    assert "never a preemption" in decision.reason and "50 unanswered" in decision.reason


def test_a_missed_heartbeat_alone_waits_whatever_the_instance_says_short_of_gone() -> None:
    for instance in ("running", "unknown"):
        decision = decide_recovery(RecoveryEvidence(heartbeat_timed_out=True, instance=instance))
        assert not decision.recover, instance
    assert not decide_recovery(RecoveryEvidence(instance="gone")).recover, "gone without a missed heartbeat: not yet"


def test_recovery_starts_on_each_kind_of_evidence() -> None:
    by_notice = decide_recovery(RecoveryEvidence(notice=notice()))
    report = WorkerReport(kind="instance_stopping", detail="SIGTERM")
    by_report = decide_recovery(RecoveryEvidence(worker_report=report))
    by_confirmed = decide_recovery(RecoveryEvidence(heartbeat_timed_out=True, instance="gone"))
    assert (by_notice.trigger, by_report.trigger, by_confirmed.trigger) == (
        "notice",
        "worker_report",
        "heartbeat_and_gone",
    )
    assert all(d.recover for d in (by_notice, by_report, by_confirmed))
    assert "acting by 2026-12-03T12:02:00+00:00" in by_notice.reason


def test_a_rebalance_recommendation_is_advice_unless_the_policy_acts_on_it() -> None:
    assert not decide_recovery(RecoveryEvidence(notice=notice("rebalance"))).recover
    assert decide_recovery(RecoveryEvidence(notice=notice("rebalance")), act_on=("preempt", "rebalance")).recover


def test_an_observation_that_finds_the_instance_gone_confirms_a_missed_heartbeat() -> None:
    gone = Observation(provider="k8s-label", reachable=True, gone=True, at=NOW)
    evidence = RecoveryEvidence(heartbeat_timed_out=True).with_observation(gone)
    assert decide_recovery(evidence).trigger == "heartbeat_and_gone"


ZONES = [
    FallbackCandidate(environment="aws-use1a-spot", zone="us-east-1a"),
    FallbackCandidate(environment="aws-use1a-od", zone="us-east-1a"),
    FallbackCandidate(environment="aws-use1b-spot", zone="us-east-1b"),
    FallbackCandidate(environment="gcp-usc1-a", zone="us-central1-a"),
]


def test_two_notices_in_the_same_zone_in_a_row_send_the_second_resume_elsewhere() -> None:
    evictions = [
        Eviction(environment="aws-use1a-spot", zone="us-east-1a", at=NOW - timedelta(minutes=9)),
        Eviction(environment="aws-use1a-od", zone="us-east-1a", at=NOW - timedelta(minutes=2)),
    ]
    choice = choose_fallback(ZONES, evictions, now=NOW)
    assert choice.environment == "aws-use1b-spot"
    assert choice.avoided == ["us-east-1a"]


def test_the_zone_just_evicted_is_skipped_even_on_the_first_notice() -> None:
    evictions = [Eviction(environment="aws-use1a-spot", zone="us-east-1a", at=NOW)]
    assert choose_fallback(ZONES, evictions, now=NOW).environment == "aws-use1b-spot"
    assert choose_fallback(ZONES, [], now=NOW).environment == "aws-use1a-spot", "no history: the plan's order"


def test_when_every_zone_was_evicted_recently_the_oldest_eviction_wins_never_the_latest() -> None:
    evictions = [
        Eviction(environment="aws-use1b-spot", zone="us-east-1b", at=NOW - timedelta(minutes=20)),
        Eviction(environment="gcp-usc1-a", zone="us-central1-a", at=NOW - timedelta(minutes=10)),
        Eviction(environment="aws-use1a-spot", zone="us-east-1a", at=NOW - timedelta(minutes=1)),
    ]
    choice = choose_fallback(ZONES, evictions, now=NOW)
    assert choice.environment == "aws-use1b-spot" and "longest ago" in choice.reason
    # An hour later every zone but the latest is fair again, in the plan's order.
    later = choose_fallback(ZONES, evictions, now=NOW + timedelta(hours=2))
    assert later.environment == "aws-use1b-spot" and later.avoided == ["us-east-1a"]


def test_the_zone_just_evicted_only_when_nothing_else_is_allowed() -> None:
    only = ZONES[:2]
    evictions = [Eviction(environment="aws-use1a-spot", zone="us-east-1a", at=NOW)]
    choice = choose_fallback(only, evictions, now=NOW)
    assert choice.environment == "aws-use1a-spot" and choice.reason.startswith("nothing else is allowed")
    assert choose_fallback([], evictions, now=NOW).environment is None
