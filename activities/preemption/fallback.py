"""Where a preempted job resumes: the plan's `jobs[].fallback`, never the zone just evicted.

Spot interruptions are correlated: most same-type, same-zone co-interruptions happen within minutes
of each other, so resuming in the zone that just evicted the job is a bad bet. `choose_fallback`
walks the plan's fallbacks in order and skips every zone with an eviction in the recent past (the
zone of the latest eviction always); when every allowed zone was evicted recently it takes the one
evicted longest ago, and only when nothing else is allowed does it go back to the zone just evicted,
saying so. Pure and deterministic (the caller passes `now`): safe in workflow code. A zone is the
environment's `region` as the plan writes it (write `us-east-1a` to tell zones apart).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

#: How long an evicted zone stays avoided when another is allowed.
AVOID_FOR = timedelta(hours=1)


class FallbackCandidate(BaseModel):
    model_config = ConfigDict(frozen=True)

    environment: str
    zone: str


class Eviction(BaseModel):
    model_config = ConfigDict(frozen=True)

    environment: str
    zone: str
    at: datetime


class FallbackChoice(BaseModel):
    model_config = ConfigDict(frozen=True)

    environment: str | None = Field(description="None when the plan names no fallback")
    zone: str | None = None
    reason: str
    avoided: list[str] = Field(default_factory=list, description="Zones skipped because of recent evictions")


def choose_fallback(
    candidates: list[FallbackCandidate], evictions: list[Eviction], now: datetime, avoid_for: timedelta = AVOID_FOR
) -> FallbackChoice:
    """The environment to resume on, from the plan's fallbacks (in order) and the job's eviction history."""
    if not candidates:
        return FallbackChoice(environment=None, reason="jobs[].fallback is empty: the plan names nowhere to resume")
    history = sorted(evictions, key=lambda e: e.at)
    last_evicted: dict[str, datetime] = {}
    for eviction in history:
        last_evicted[eviction.zone] = eviction.at
    latest_zone = history[-1].zone if history else None
    recent = {zone for zone, at in last_evicted.items() if now - at < avoid_for}
    if latest_zone is not None:
        recent.add(latest_zone)
    avoided = sorted(recent & {c.zone for c in candidates})
    for candidate in candidates:
        if candidate.zone not in recent:
            why = f"first fallback in a zone without an eviction in the last {avoid_for}"
            if avoided:
                why += f" (avoiding {', '.join(avoided)})"
            return FallbackChoice(environment=candidate.environment, zone=candidate.zone, reason=why, avoided=avoided)
    others = [c for c in candidates if c.zone != latest_zone]
    if others:
        oldest = min(others, key=lambda c: last_evicted[c.zone])
        return FallbackChoice(
            environment=oldest.environment,
            zone=oldest.zone,
            reason=f"every fallback zone was evicted recently; {oldest.zone} longest ago "
            f"({last_evicted[oldest.zone].isoformat()}), not {latest_zone}, which evicted the job last",
            avoided=avoided,
        )
    first = candidates[0]
    return FallbackChoice(
        environment=first.environment,
        zone=first.zone,
        reason=f"nothing else is allowed: every fallback is in {latest_zone}, the zone that evicted the job last",
        avoided=avoided,
    )
