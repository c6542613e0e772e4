"""Price quotes and the price book: every price with where it came from and when it was read.

A quote is one price for one thing (an instance-hour in a market, a GB leaving a region for a
destination, a GB-month stored), with its `source` and `as_of`. The book refuses, by name, prices
that are obviously wrong (≤ 0, spot above on-demand, far from every other quote of the same GPU) —
the failures SkyPilot's catalog published (an H100 at $0, skypilot#3615; a B200 at $0.01, #9156;
spot above on-demand, #4914) — and says which quotes are older than their source's limit wherever
a quote is used (live APIs 15 min, scraped pages 24 h, operator files their own `valid_until`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Kind = Literal["compute", "egress", "storage"]
Market = Literal["on_demand", "spot", "reserved"]
SourceKind = Literal["live", "scraped", "operator"]

#: How long a quote of each kind of source may be used before it is flagged stale.
FRESHNESS: dict[str, timedelta] = {"live": timedelta(minutes=15), "scraped": timedelta(hours=24)}
#: A quote more than this many times the median of the other quotes of its GPU (per GPU-hour) is refused.
OUTLIER_HIGH = 10.0
#: ... or less than the median divided by this: catches a B200 at $0.01 (skypilot#9156) while a deep
#: spot discount (rarely beyond 90 % off) still passes. Stricter than the issue asks; documented in README.
OUTLIER_LOW = 20.0

UNITS: dict[str, str] = {"compute": "hour", "egress": "GB", "storage": "GB-month"}


class PriceError(ValueError):
    """A price file or API answer that cannot be read: the message names the file, row or key."""


class Quote(BaseModel):
    """One price with its provenance. `usd` is per instance-hour, per GB, or per GB-month (`unit`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1)
    region: str = Field(min_length=1)
    kind: Kind
    usd: float = Field(allow_inf_nan=False)
    instance_type: str | None = None
    gpu: str | None = Field(None, description="GPU model, e.g. H100-80GB; None for CPU instances")
    gpu_count: int = Field(0, ge=0)
    gpu_memory_gb: float | None = Field(None, ge=0, description="Memory per GPU")
    market: Market | None = Field(None, description="compute only")
    term: str | None = Field(None, description="reserved: e.g. 1yr No Upfront")
    destination: str | None = Field(None, description="egress: internet, a region, or a provider")
    tier_start_gb: float = Field(0.0, ge=0, description="egress: the monthly volume this tier starts at")
    interruption_rate_per_hour: float | None = Field(None, ge=0, description="spot: expected preemptions per hour")
    source: str = Field(min_length=1, description="Where it was read: API + version, or file + row")
    source_kind: SourceKind
    as_of: datetime
    valid_until: datetime | None = Field(None, description="operator files: the date the operator vouches until")

    @model_validator(mode="after")
    def _shape(self) -> Quote:
        if self.kind == "compute" and (self.instance_type is None or self.market is None):
            raise ValueError("a compute quote needs instance_type and market")
        if self.kind == "egress" and self.destination is None:
            raise ValueError("an egress quote needs a destination")
        if self.as_of.tzinfo is None:
            raise ValueError("as_of needs a timezone (write it as 2026-12-01T00:00:00Z)")
        return self

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    @property
    def name(self) -> str:
        """How a refusal or a report names this quote."""
        what = {
            "compute": f"{self.instance_type} {self.market}{f' {self.term}' if self.term else ''}",
            "egress": f"egress to {self.destination} from {self.tier_start_gb:g} GB",
            "storage": "storage",
        }[self.kind]
        return f"{self.provider}/{self.region}/{what}"

    @property
    def per_gpu_hour(self) -> float | None:
        if self.kind != "compute" or not self.gpu or self.gpu_count <= 0:
            return None
        return self.usd / self.gpu_count

    def age(self, now: datetime) -> timedelta:
        return now - self.as_of

    def stale(self, now: datetime) -> bool:
        """Older than its source's limit: live 15 min, scraped 24 h, operator files past their own date."""
        if self.source_kind == "operator":
            return self.valid_until is not None and now > self.valid_until
        return self.age(now) > FRESHNESS[self.source_kind]

    def provenance(self, now: datetime) -> str:
        """`aws-price-list:AmazonEC2@... as of 2026-12-01 09:00Z (3.2 h old, STALE: scraped ≤ 24 h)`."""
        age = self.age(now).total_seconds()
        old = f"{age / 3600:.1f} h" if age >= 3600 else f"{age / 60:.0f} min"
        text = f"{self.source} as of {self.as_of:%Y-%m-%d %H:%MZ} ({old} old"
        if self.stale(now):
            limit = (
                f"valid until {self.valid_until:%Y-%m-%d}"
                if self.source_kind == "operator"
                else (f"{self.source_kind} ≤ {FRESHNESS[self.source_kind]}")
            )
            text += f", STALE: {limit}"
        return text + ")"


class Refusal(BaseModel):
    quote: str = Field(description="The quote's name: provider/region/what")
    source: str
    reason: str


class PriceBook(BaseModel):
    """The quotes that passed the checks, and the ones refused with their reason."""

    quotes: list[Quote] = Field(default_factory=list)
    refused: list[Refusal] = Field(default_factory=list)

    @classmethod
    def build(cls, quotes: list[Quote]) -> PriceBook:
        kept, refused = screen(quotes)
        return cls(quotes=kept, refused=refused)

    def merged(self, other: PriceBook) -> PriceBook:
        """Both books' quotes screened together (the median test needs all of a GPU's quotes)."""
        book = PriceBook.build([*self.quotes, *other.quotes])
        return PriceBook(quotes=book.quotes, refused=[*self.refused, *other.refused, *book.refused])

    def compute(self, provider: str | None = None, region: str | None = None) -> list[Quote]:
        return [
            q
            for q in self.quotes
            if q.kind == "compute" and provider in (None, q.provider) and region in (None, q.region)
        ]

    def egress(self, provider: str, region: str, destination: str, month_gb: float = 0.0) -> Quote | None:
        """The egress tier that applies to a transfer at `month_gb` of this month's volume."""
        tiers = [
            q
            for q in self.quotes
            if q.kind == "egress"
            and q.provider == provider
            and q.region == region
            and q.destination == destination
            and q.tier_start_gb <= month_gb
        ]
        return max(tiers, key=lambda q: q.tier_start_gb, default=None)

    def storage(self, provider: str, region: str) -> Quote | None:
        found = [q for q in self.quotes if q.kind == "storage" and q.provider == provider and q.region == region]
        return min(found, key=lambda q: q.usd, default=None)

    def stale(self, now: datetime | None = None) -> list[Quote]:
        now = now or datetime.now(UTC)
        return [q for q in self.quotes if q.stale(now)]


def screen(quotes: list[Quote]) -> tuple[list[Quote], list[Refusal]]:
    """Keep the plausible quotes; refuse the others by name with the numbers that condemn them."""
    refused: dict[int, str] = {}
    for i, q in enumerate(quotes):
        if q.usd < 0 or (q.usd == 0 and q.kind != "egress"):  # a free egress tier (in-region, first GB) is real
            refused[i] = f"price ${q.usd:g} per {q.unit} is not above zero"
    on_demand: dict[tuple, float] = {}
    for i, q in enumerate(quotes):
        if q.kind == "compute" and q.market == "on_demand" and i not in refused:
            key = (q.provider, q.region, q.instance_type)
            on_demand[key] = min(on_demand.get(key, q.usd), q.usd)
    for i, q in enumerate(quotes):
        if q.kind == "compute" and q.market == "spot" and i not in refused:
            ceiling = on_demand.get((q.provider, q.region, q.instance_type))
            if ceiling is not None and q.usd > ceiling:
                refused[i] = f"spot ${q.usd:g}/h is above on-demand ${ceiling:g}/h for the same instance"
    by_gpu: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(quotes):
        if q.per_gpu_hour is not None and i not in refused:
            by_gpu[q.gpu.lower()].append(i)
    for members in by_gpu.values():
        prices = [quotes[i].per_gpu_hour for i in members]
        for position, i in enumerate(members):
            others = prices[:position] + prices[position + 1 :]
            if not others:
                continue
            median = statistics.median(others)
            price = prices[position]
            if price > OUTLIER_HIGH * median:
                refused[i] = (
                    f"${price:g} per GPU-hour is more than {OUTLIER_HIGH:g}x the median ${median:g} "
                    f"of {len(others)} other {quotes[i].gpu} quote(s)"
                )
            elif price * OUTLIER_LOW < median:
                refused[i] = (
                    f"${price:g} per GPU-hour is less than 1/{OUTLIER_LOW:g} of the median ${median:g} "
                    f"of {len(others)} other {quotes[i].gpu} quote(s)"
                )
    kept = [q for i, q in enumerate(quotes) if i not in refused]
    refusals = [
        Refusal(quote=quotes[i].name, source=quotes[i].source, reason=why) for i, why in sorted(refused.items())
    ]
    return kept, refusals
