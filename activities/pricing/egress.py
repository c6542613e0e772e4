"""Egress priced by tier for the bytes that will really cross: a dry run's delta, not the dataset's size.

Providers bill egress by the month's cumulative volume in tiers (AWS: first 10 TB, next 40 TB, ...);
a move that starts mid-month at 30 TB pays the 30 TB tier's price. The bytes are what a dry run says
would be sent (chunks the target lacks), so a target that already holds most of a dataset is not
billed for all of it. Pure: the workflow's budget gate (out of this module) compares this, then the
metered bytes, with the plan's budget.
"""

from __future__ import annotations

from pydantic import BaseModel

from activities.pricing.quotes import PriceBook, PriceError


class EgressProjection(BaseModel):
    bytes_to_send: int
    dataset_bytes: int
    usd: float
    tiers: list[str]
    source: str


def project_egress(book: PriceBook, provider: str, region: str, destination: str, bytes_to_send: int,
                   dataset_bytes: int, month_to_date_gb: float = 0.0) -> EgressProjection:  # fmt: skip
    """USD to send `bytes_to_send` (a dry run's delta) starting at `month_to_date_gb` of this month's volume."""
    tiers = sorted((q for q in book.quotes if q.kind == "egress" and q.provider == provider and q.region == region
                    and q.destination == destination), key=lambda q: q.tier_start_gb)  # fmt: skip
    if not tiers:
        raise PriceError(f"no egress quote for {provider}/{region} → {destination}: add one to a price file")
    start, remaining, usd, used = month_to_date_gb, bytes_to_send / 1e9, 0.0, []
    for index, tier in enumerate(tiers):
        end = tiers[index + 1].tier_start_gb if index + 1 < len(tiers) else float("inf")
        if remaining <= 0 or start >= end:
            continue
        begin = max(start, tier.tier_start_gb)
        amount = min(remaining, end - begin)
        usd += amount * tier.usd
        used.append(f"{amount:,.3f} GB at ${tier.usd:g}/GB (tier from {tier.tier_start_gb:g} GB; {tier.source})")
        remaining -= amount
        start = begin + amount
    return EgressProjection(bytes_to_send=bytes_to_send, dataset_bytes=dataset_bytes, usd=usd, tiers=used,
                            source=f"dry run: {bytes_to_send:,} of {dataset_bytes:,} bytes would cross")  # fmt: skip
