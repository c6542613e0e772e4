"""Shadow inference plan data: which requests, which comparator, which margins.

Part of the plan's shared types (`skyshift.spec`): an endpoint pair carries a `ShadowSpec`, and
the activities that run and judge the shadow phase read it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

#: Header on every request skyshift sends for comparison (sample or mirror), so endpoints can keep
#: shadow traffic out of the user metrics the cutover judges.
SHADOW_HEADER = "X-Skyshift-Shadow"
SHADOW_ID_HEADER = "X-Skyshift-Shadow-Id"
#: Where a request came from, and the three arms it is sent to (Diffy's primary, secondary, candidate).
ARMS = ("source", "source_again", "target")

_PATH = r"^$|^[^.\[\]]+(\[\d+\])*(\.[^.\[\]]+(\[\d+\])*)*$"


class _Comparator(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(
        "", pattern=_PATH, description="Where the compared output sits in the JSON response, e.g. outputs or "
        "choices[0].text; empty for the whole body"
    )  # fmt: skip


class JsonComparator(_Comparator):
    """Every leaf by its JSON path: numbers by absolute difference, anything else by equality."""

    kind: Literal["json"] = "json"
    ignore: list[str] = Field(
        default_factory=list,
        description="Leaf paths (or prefixes) never compared, e.g. served_by; * matches one key or index",
    )


class LogitsComparator(_Comparator):
    """A numeric array (rows x classes, or one row): max |Δ|, KL divergence of softmaxes, top-k agreement."""

    kind: Literal["logits"] = "logits"
    path: str = Field("outputs", pattern=_PATH, description="JSON path of the logits array")
    top_k: int = Field(1, ge=1, le=100, description="Rows agree when their k largest logits are the same set")


class TextComparator(_Comparator):
    """A string (or list of strings): exact-match rate and normalized edit distance."""

    kind: Literal["text"] = "text"
    path: str = Field("text", pattern=_PATH, description="JSON path of the text; empty compares the raw body")


def _shorthand(value: Any) -> Any:
    """`comparator: logits` in a plan means `comparator: {kind: logits}`."""
    return {"kind": value} if isinstance(value, str) else value


Comparator = Annotated[
    JsonComparator | LogitsComparator | TextComparator, Field(discriminator="kind"), BeforeValidator(_shorthand)
]


class ShadowSpec(BaseModel):
    """Shadow inference for one endpoint pair: the same requests to the source twice and the target once.

    The second source answer is the noise floor (Diffy's secondary): a target difference counts only
    where it beats what the source does to itself on the same request, by both margins.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: str | None = Field(
        None, description="Key of a JSON-lines file of request bodies in the source environment's storage"
    )
    path: str = Field("/v1/predict", pattern=r"^/", description="Request path (POST) on both deployments")
    max_requests: int = Field(200, ge=1, le=10_000, description="Use at most this many lines of the sample")
    mirror_percent: float = Field(
        0, ge=0, le=100, description="Share of live requests the router also sends to both sides (0 = none); "
        "their answers are compared and discarded, never returned to clients"
    )  # fmt: skip
    mirror_seconds: float = Field(
        60, gt=0, le=86_400, description="Longest time to collect mirrored requests (stops earlier at min_requests)"
    )
    comparator: Comparator = Field(default_factory=JsonComparator)
    relative_margin_pct: float = Field(
        20.0, ge=0, description="A target difference counts when it exceeds the floor by this much (Diffy: 20%)"
    )
    absolute_margin: float = Field(
        0.0003, ge=0, description="... and by at least this much in the output's own units (Diffy: 0.03%)"
    )
    min_requests: int = Field(50, ge=1, description="Fewer requests answered by all three arms is inconclusive")
    max_source_disagreement: float | None = Field(
        None, ge=0, description="A field whose source-vs-source difference (p95) exceeds this cannot be judged: "
        "inconclusive. None: any noise is absorbed by the floor"
    )  # fmt: skip
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once (each to all three arms)")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="Per call; a slower answer is an error")
    approval: bool = Field(False, description="Wait for an operator after the shadow verdict")

    @field_validator("requests")
    @classmethod
    def _relative_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split("/")
        if not value or value.startswith("/") or "\\" in value or ".." in parts or "\x00" in value:
            raise ValueError(f"'{value}' must be a key inside the source storage (no '..', no leading '/')")
        return value

    @model_validator(mode="after")
    def _some_traffic(self) -> ShadowSpec:
        if self.requests is None and self.mirror_percent == 0:
            raise ValueError("shadow needs requests (a JSON-lines sample) or mirror_percent > 0 (live traffic)")
        return self
