"""A check as plan data: `{metric, compare, threshold, dry_run}`, the rows `activities.analysis.judge` applies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: How an observed value is judged; the meaning of each is `activities.analysis.COMPARISONS`.
Comparison = Literal["at_most", "at_least", "within_floor", "significant_increase", "beyond_uncertainty"]


class AnalysisRule(BaseModel):
    """One check as data. The first rule whose `metric` matches a measurement judges it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(min_length=1, description="A measurement name or a glob: loss, eval_*, tensor:*, *.latency")
    compare: Comparison = Field(description="How the observed value is judged; see COMPARISONS")
    threshold: float = Field(description="The allowed value (within_floor: allowed whatever the floor)")
    floor_margin: float = Field(
        0.0, ge=0, description="within_floor: how far above the source-vs-source floor the target may go (1.0 = 2x)"
    )
    dry_run: bool = Field(False, description="Judged and reported, never acted on")
    on_breach: Literal["fail", "inconclusive"] = Field(
        "fail", description="What a breach means: 'inconclusive' for rules about having enough data"
    )
    unit: str = Field("", description="Shown after numbers in explanations: '%', ' pp', ' samples'")
