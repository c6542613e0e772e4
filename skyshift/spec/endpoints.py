"""Plan data for an inference service on both sides and where its metrics come from."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from skyshift.spec.shadow import ShadowSpec


class EndpointPair(BaseModel):
    """One inference service deployed on both sides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    source_url: str = Field(pattern=r"^https?://", description="Base URL of the source deployment (serves /metrics)")
    target_url: str = Field(pattern=r"^https?://", description="Base URL of the target deployment (serves /metrics)")
    source_labels: str = Field("", description='PromQL label matchers for the source, e.g. job="chat",env="aws"')
    target_labels: str = Field("", description="PromQL label matchers for the target")
    shadow: ShadowSpec | None = Field(None, description="Shadow inference before cutover: requests, comparator")


class PromQueries(BaseModel):
    """PromQL templates; `{labels}` becomes the endpoint side's label matchers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: str = "sum(skyshift_requests_total{{{labels}}})"
    errors: str = "sum(skyshift_request_errors_total{{{labels}}})"
    buckets: str = "sum by (le) (skyshift_request_latency_seconds_bucket{{{labels}}})"
    count: str = "sum(skyshift_request_latency_seconds_count{{{labels}}})"
    sum: str = "sum(skyshift_request_latency_seconds_sum{{{labels}}})"


class ScrapeProvider(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["scrape"] = "scrape"


class PrometheusProvider(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["prometheus"]
    url: str = Field(pattern=r"^https?://", description="Prometheus server, e.g. http://prometheus:9090")
    queries: PromQueries = Field(default_factory=PromQueries)


MetricsProvider = Annotated[ScrapeProvider | PrometheusProvider, Field(discriminator="kind")]
