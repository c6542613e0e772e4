"""Google Cloud prices: the Cloud Billing Catalog's SKUs for Compute Engine and Cloud Storage.

Format (cloud.google.com/billing/v1/how-tos/catalog-api): `GET /v1/services/{id}/skus` answers
`{"skus": [{"skuId", "description", "category": {"resourceFamily", "resourceGroup", "usageType"},
"serviceRegions": [...], "pricingInfo": [{"effectiveTime", "pricingExpression": {"usageUnit",
"tieredRates": [{"startUsageAmount", "unitPrice": {"currencyCode", "units", "nanos"}}]}}]}],
"nextPageToken"}`. GPUs are priced apart from the machine (a GPU SKU per GPU-hour), so a GPU
quote here is per *one* GPU (`instance_type` = `<gpu>-gpu`, gpu_count 1); egress SKUs are per GiB by
tier; storage per GiB-month. Published catalog data: scraped (≤ 24 h).
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import datetime
from typing import Any

from activities.pricing.fetchers.base import get_json, need, register, utc_now
from activities.pricing.quotes import Market, PriceError, Quote

CATALOG = "https://cloudbilling.googleapis.com/v1"
COMPUTE_SERVICE, STORAGE_SERVICE = "6F81-5844-456A", "95FF-2EF5-5EA1"
GIB_PER_GB = 1e9 / (1 << 30)  # GCP prices per GiB; the book is per GB (1e9 bytes), like AWS
USAGE: dict[str, Market] = {
    "OnDemand": "on_demand",
    "Preemptible": "spot",
    "Commit1Yr": "reserved",
    "Commit3Yr": "reserved",
}
GPU_NAMES = {
    r"H100 80GB": "H100-80GB",
    r"H200": "H200-141GB",
    r"A100 80GB": "A100-80GB",
    r"A100(?! 80)": "A100-40GB",
    r"\bL4\b": "L4-24GB",
    r"B200": "B200-180GB",
}
GPU_MEMORY = {
    "H100-80GB": 80.0,
    "H200-141GB": 141.0,
    "A100-80GB": 80.0,
    "A100-40GB": 40.0,
    "L4-24GB": 24.0,
    "B200-180GB": 180.0,
}


def money(price: dict[str, Any], where: str) -> float:
    """google.type.Money: units (a string of an int64) + nanos."""
    if price.get("currencyCode", "USD") != "USD":
        raise PriceError(f"{where}: currency {price.get('currencyCode')!r}: ask the catalog with currencyCode=USD")
    return int(price.get("units") or 0) + int(price.get("nanos") or 0) / 1e9


def parse_skus(answer: dict[str, Any], read_at: datetime, regions: set[str] | None = None) -> list[Quote]:
    """GPU, egress and regional storage SKUs of one catalog page, for the given regions (all if None)."""
    quotes = []
    for i, sku in enumerate(need(answer, "skus", "gcp-catalog")):
        where = f"gcp-catalog: skus[{i}] ({sku.get('skuId', '?')})"
        category = need(sku, "category", where)
        description = str(sku.get("description", ""))
        info = need(sku, "pricingInfo", where)
        if not info:
            continue
        expression = need(info[-1], "pricingExpression", where)
        tiers = need(expression, "tieredRates", where)
        as_of = read_at  # the catalog's price as of when it was read; effectiveTime goes into the source
        source = f"gcp-catalog:{sku.get('skuId', '?')} {description!r} effective {info[-1].get('effectiveTime', '?')}"
        group, family, usage = category.get("resourceGroup"), category.get("resourceFamily"), category.get("usageType")
        for region in sku.get("serviceRegions") or []:
            if regions is not None and region not in regions:
                continue
            common = {"provider": "gcp", "region": region, "source": source, "source_kind": "scraped", "as_of": as_of}
            if group == "GPU" and usage in USAGE and expression.get("usageUnit") == "h":
                gpu = next((name for pattern, name in GPU_NAMES.items() if re.search(pattern, description)), None)
                if gpu is None:
                    continue
                # the last tier is the steady price (the first may be a free or promotional tier)
                quotes.append(
                    Quote(
                        **common,
                        kind="compute",
                        instance_type=f"{gpu}-gpu",
                        gpu=gpu,
                        gpu_count=1,
                        gpu_memory_gb=GPU_MEMORY[gpu],
                        market=USAGE[usage],
                        term=usage.removeprefix("Commit") if usage.startswith("Commit") else None,
                        usd=money(tiers[-1]["unitPrice"], where),
                    )
                )
            elif family == "Network" and "Egress" in str(group) and expression.get("usageUnit") == "GiBy":
                destination = "internet" if "Internet" in str(group) else "inter-region"
                for tier in tiers:
                    quotes.append(
                        Quote(
                            **common,
                            kind="egress",
                            destination=destination,
                            tier_start_gb=float(tier.get("startUsageAmount") or 0) / GIB_PER_GB,
                            usd=money(tier["unitPrice"], where) * GIB_PER_GB,
                        )
                    )
            elif family == "Storage" and group == "RegionalStorage" and expression.get("usageUnit") == "GiBy.mo":
                quotes.append(Quote(**common, kind="storage", usd=money(tiers[-1]["unitPrice"], where) * GIB_PER_GB))
    return quotes


@register("gcp")
class GcpFetcher:
    """Compute Engine GPU and egress SKUs and Cloud Storage SKUs for some regions (API key by env name)."""

    name = "gcp"

    def __init__(
        self, regions: list[str], api_key_env: str = "GCP_BILLING_API_KEY", base_url: str | None = None
    ) -> None:
        import os

        self.regions, self.api_key_env = set(regions), api_key_env
        self.base_url = base_url or os.environ.get("SKYSHIFT_GCP_CATALOG_URL", CATALOG)

    def _pages(self, service: str):
        import os

        token = ""
        while True:
            query = {"currencyCode": "USD", "pageSize": 5000, "key": os.environ.get(self.api_key_env, "")}
            if token:
                query["pageToken"] = token
            page = get_json(f"{self.base_url}/services/{service}/skus?{urllib.parse.urlencode(query)}")
            yield page
            token = page.get("nextPageToken") or ""
            if not token:
                return

    def fetch(self, now: datetime | None = None) -> list[Quote]:
        read_at = utc_now(now)
        return [
            q
            for service in (COMPUTE_SERVICE, STORAGE_SERVICE)
            for page in self._pages(service)
            for q in parse_skus(page, read_at, self.regions)
        ]
