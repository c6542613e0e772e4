"""Plan data for the traffic router that splits requests between the source and the target."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class HttpRouterSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["http"] = Field("http", description="http: skyshift's weighted reverse proxy (admin API)")
    admin_url: str = Field(pattern=r"^https?://")


class Route53RouterSpec(BaseModel):
    """Two weighted records of one name: one answers with the source, one with the target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["route53"]
    hosted_zone_id: str = Field(min_length=1)
    record_name: str = Field(min_length=1, description="e.g. api.example.com.")
    record_type: Literal["A", "AAAA", "CNAME"] = "CNAME"
    source_value: str = Field(min_length=1, description="Where the source record points (IP or host name)")
    target_value: str = Field(min_length=1)
    ttl: int = Field(60, ge=1, le=86400, description="Low TTLs make weight changes take effect quickly")
    credentials: str | None = Field(None, description="AWS profile name, resolved by the control worker")
    endpoint: str | None = None


RouterSpec = Annotated[HttpRouterSpec | Route53RouterSpec, Field(discriminator="kind")]
