"""Traffic routers: set and read the weighted split between the source and target deployments.

Every router implements `set_weights(source, target)` and `current()`, both idempotent, so the
cutover and its compensations can call them any number of times. Today: skyshift's own weighted
HTTP proxy (`workers/router.py`). Route 53, Gateway API or Istio routers implement the same two
methods and register a `kind` in `ROUTERS`.
"""

from __future__ import annotations

import urllib.request
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator
from temporalio import activity


class RouterSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["http"] = Field("http", description="http: skyshift's weighted reverse proxy (admin API)")
    admin_url: str = Field(pattern=r"^https?://")


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

    def __init__(self, spec: RouterSpec, timeout: float = 5.0) -> None:
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


ROUTERS: dict[str, type] = {"http": HttpRouter}


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


@activity.defn
def read_traffic(spec: RouterSpec) -> Weights:
    return router_for(spec).current()
