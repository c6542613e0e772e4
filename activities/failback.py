"""The failback drill: can traffic go back to the source *now*? Checked without moving any of it.

The GPU migration playbooks ask to verify the legacy side is still alive before relying on a
rollback; a drill does exactly that, on demand, while the failback window is open: the router
answers and reports its weights, every source endpoint still serves, and the reverse sync keeps the
source within the plan's recovery point. A drill that fails says which of these is broken, so the
operator fixes the way back before needing it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from temporalio import activity

from activities.analysis import Check, Verdict, verdict
from activities.metrics import ScrapeInput, scrape_endpoints
from activities.traffic import router_for
from skyshift.spec.endpoints import EndpointPair, MetricsProvider, ScrapeProvider
from skyshift.spec.traffic import RouterSpec


class DrillInput(BaseModel):
    router: RouterSpec | None = None
    endpoints: list[EndpointPair] = Field(default_factory=list)
    provider: MetricsProvider = Field(default_factory=ScrapeProvider)
    rpo_s: float | None = Field(None, description="Age of the newest target data not yet at the source; None: none")
    rpo_limit_s: float = Field(description="The reverse sync's interval: the recovery point the plan promises")


def drill_checks(request: DrillInput) -> list[Check]:
    checks: list[Check] = []
    if request.router is None:
        checks.append(Check(metric="router", outcome="pass", detail="no router in the plan: nothing to route back"))
    else:
        try:
            weights = router_for(request.router).current()
            checks.append(
                Check(
                    metric="router",
                    outcome="pass",
                    target=weights.target,
                    detail=f"answers; now source {weights.source}% / target {weights.target}%",
                )
            )
        except Exception as error:  # any failure to read the weights is the finding
            checks.append(Check(metric="router", outcome="fail", detail=f"did not answer: {error}"[:500]))
    if request.endpoints:
        for snapshot in scrape_endpoints(ScrapeInput(endpoints=request.endpoints, provider=request.provider)):
            side = snapshot.source
            checks.append(Check(
                metric=f"{snapshot.endpoint}.source_serves", outcome="pass" if side.ok else "fail",
                source=side.requests, detail=f"{side.url} answers" if side.ok else f"{side.url}: {side.error}",
            ))  # fmt: skip
    if request.rpo_s is None:
        checks.append(Check(metric="reverse_sync", outcome="pass", detail="the plan reverse-syncs nothing"))
    else:
        within = request.rpo_s <= request.rpo_limit_s
        checks.append(Check(
            metric="reverse_sync", outcome="pass" if within else "fail", observed=round(request.rpo_s, 3),
            threshold=request.rpo_limit_s,
            detail=f"the source is {request.rpo_s:.0f}s behind the target (allowed {request.rpo_limit_s:.0f}s)",
        ))  # fmt: skip
    return checks


@activity.defn
def failback_drill(request: DrillInput) -> Verdict:
    return verdict("failback_drill", drill_checks(request))
