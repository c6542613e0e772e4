"""Default egress list prices per URL scheme, for `skyshift sync` when no plan or price book says.

Internet egress, first volume tier, USD per GB, as published by the providers in 2026. A plan's
`egress_per_gb_usd` always wins; a price book's egress quote is the better source when one is loaded.
"""

from __future__ import annotations

EGRESS_USD_PER_GB: dict[str, float] = {"s3": 0.09, "gs": 0.12, "file": 0.0}


def default_egress_price(url: str) -> float:
    return EGRESS_USD_PER_GB.get(url.split("://", 1)[0], 0.0)
