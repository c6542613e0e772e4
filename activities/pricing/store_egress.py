"""The egress price of a sync from a price book: provider by URL scheme, regions from the stores' own APIs.

Same provider and region: $0 (in place). Same provider, another region: the `inter-region` quote.
Otherwise the source's `internet` quote. The first tier applies (a sync does not know the month's
volume so far); the answer names the quote it used, so `skyshift sync` can say where its price came from.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from activities.pricing.quotes import PriceBook, PriceError
from activities.stores import StoreSpec, open_store

PROVIDER_OF_SCHEME = {"s3": "aws", "gs": "gcp"}


class StoreEgress(BaseModel):
    usd_per_gb: float
    source: str
    stale: bool = False


def egress_between(book: PriceBook, source: StoreSpec, target: StoreSpec) -> StoreEgress:
    scheme, target_scheme = source.url.split("://", 1)[0], target.url.split("://", 1)[0]
    provider = PROVIDER_OF_SCHEME.get(scheme)
    if provider is None:
        return StoreEgress(usd_per_gb=0.0, source=f"{scheme}:// has no provider egress")
    region = open_store(source).region()
    target_provider, target_region = PROVIDER_OF_SCHEME.get(target_scheme), open_store(target).region()
    if provider == target_provider and region == target_region:
        return StoreEgress(usd_per_gb=0.0, source=f"in place: both in {provider}/{region} (from the stores' APIs)")
    destination = "inter-region" if provider == target_provider else "internet"
    quote = book.egress(provider, region, destination) or book.egress(provider, region, "internet")
    if quote is None:
        raise PriceError(f"--prices: no egress quote for {provider}/{region} → {destination} (the source's region, "
                         "from its API): add one to the price file")  # fmt: skip
    now = datetime.now(UTC)
    return StoreEgress(usd_per_gb=quote.usd, source=f"{quote.name}: {quote.provenance(now)}", stale=quote.stale(now))
