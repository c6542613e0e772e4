"""Traffic routers: set and read the weighted split between the source and target deployments.

Every router implements `set_weights(weights)` and `current()`, both idempotent, so the cutover
and its compensations can call them any number of times. Built: skyshift's weighted HTTP proxy
(`workers/router.py`) and AWS Route 53 weighted records. A Gateway API HTTPRoute, an Istio
VirtualService or a cloud load balancer is one more spec model (with its `kind`) and one class
with these two methods, registered in `ROUTERS`; nothing else changes.
"""

from __future__ import annotations

import urllib.request
from typing import Protocol

from pydantic import BaseModel, Field, model_validator
from temporalio import activity

from skyshift.spec.traffic import HttpRouterSpec, Route53RouterSpec, RouterSpec


class Weights(BaseModel):
    source: int = Field(ge=0, le=100)
    target: int = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _sum(self) -> Weights:
        if self.source + self.target != 100:
            raise ValueError(f"weights must add up to 100, got source={self.source} target={self.target}")
        return self


class RouteInput(BaseModel):
    router: RouterSpec
    target_percent: int = Field(ge=0, le=100)
    reason: str = ""


class Router(Protocol):
    def set_weights(self, weights: Weights) -> Weights: ...
    def current(self) -> Weights: ...


class HttpRouter:
    """Client of the embedded router's admin API: GET/PUT {admin_url}/-/weights."""

    def __init__(self, spec: HttpRouterSpec, timeout: float = 5.0) -> None:
        self.url = f"{spec.admin_url.rstrip('/')}/-/weights"
        self.timeout = timeout

    def _call(self, method: str, body: bytes | None = None) -> Weights:
        request = urllib.request.Request(
            self.url, data=body, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return Weights.model_validate_json(response.read())

    def set_weights(self, weights: Weights) -> Weights:
        return self._call("PUT", weights.model_dump_json().encode())

    def current(self) -> Weights:
        return self._call("GET")


class Route53Router:
    """Weighted routing through Route 53: the split is the two records' weights (set identifiers
    `skyshift-source` and `skyshift-target`), upserted together in one change batch."""

    IDS = {"source": "skyshift-source", "target": "skyshift-target"}

    def __init__(self, spec: Route53RouterSpec) -> None:
        from activities.aws import aws_client

        self.spec = spec
        self.client = aws_client("route53", spec.endpoint, spec.credentials)
        self.name = spec.record_name if spec.record_name.endswith(".") else spec.record_name + "."

    def set_weights(self, weights: Weights) -> Weights:
        values = {"source": self.spec.source_value, "target": self.spec.target_value}
        changes = [
            {
                "Action": "UPSERT",
                "ResourceRecordSet": {
                    "Name": self.name, "Type": self.spec.record_type, "SetIdentifier": self.IDS[side],
                    "Weight": getattr(weights, side), "TTL": self.spec.ttl,
                    "ResourceRecords": [{"Value": values[side]}],
                },
            }
            for side in ("source", "target")
        ]  # fmt: skip
        self.client.change_resource_record_sets(
            HostedZoneId=self.spec.hosted_zone_id,
            ChangeBatch={"Comment": f"skyshift: target {weights.target}%", "Changes": changes},
        )
        return weights

    def current(self) -> Weights:
        found: dict[str, int] = {}
        pages = self.client.get_paginator("list_resource_record_sets").paginate(
            HostedZoneId=self.spec.hosted_zone_id, StartRecordName=self.name, StartRecordType=self.spec.record_type
        )
        for page in pages:
            for record in page["ResourceRecordSets"]:
                if record["Name"] != self.name:
                    break
                for side, identifier in self.IDS.items():
                    if record.get("SetIdentifier") == identifier:
                        found[side] = int(record["Weight"])
        if set(found) != {"source", "target"}:
            return Weights(source=100, target=0)  # never routed: everything still resolves to the source
        return Weights(source=found["source"], target=found["target"])


ROUTERS: dict[str, type] = {"http": HttpRouter, "route53": Route53Router}


def router_for(spec: RouterSpec) -> Router:
    return ROUTERS[spec.kind](spec)


@activity.defn
def route_traffic(request: RouteInput) -> Weights:
    """Set the split and read it back; a router that reports other weights fails the attempt (retried)."""
    wanted = Weights(source=100 - request.target_percent, target=request.target_percent)
    router = router_for(request.router)
    router.set_weights(wanted)
    actual = router.current()
    if actual != wanted:
        raise RuntimeError(
            f"router at {request.router.admin_url} reports {actual.model_dump()} after setting {wanted.model_dump()}"
        )
    activity.logger.info("traffic now source=%d%% target=%d%% (%s)", actual.source, actual.target, request.reason)
    return actual
