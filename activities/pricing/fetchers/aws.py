"""AWS prices: the Price List (bulk offer file or the Query API's GetProducts) and EC2 spot price history.

Formats: the offer file is `{"offerCode", "version", "publicationDate", "products": {SKU: {"attributes":
{regionCode, instanceType, gpu, gpuMemory, ...}}}, "terms": {"OnDemand"|"Reserved": {SKU: {term: {
"priceDimensions": {rate: {"unit": "Hrs", "pricePerUnit": {"USD": "98.32"}}}, "termAttributes": {...}}}}}}`
(docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/reading-service-price-list-file-for-services.html).
GetProducts (docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html)
answers `{"FormatVersion": "aws_v1", "PriceList": [JSON text of {"product", "terms": {"OnDemand": {term:
...}}}]}`, one document per SKU. Spot: `DescribeSpotPriceHistory` returns `SpotPriceHistory:
[{AvailabilityZone, InstanceType, ProductDescription, SpotPrice, Timestamp}]`. The price list is published
data (scraped, ≤ 24 h); the spot history is live (≤ 15 min).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from activities.pricing.fetchers.base import need, register, utc_now
from activities.pricing.quotes import PriceError, Quote

#: The offer file says how many GPUs and how much GPU memory an instance has, not which GPU: the
#: instance family does (data, from the EC2 accelerated-computing instance pages).
GPU_BY_FAMILY = {
    "p5": "H100-80GB",
    "p5e": "H200-141GB",
    "p5en": "H200-141GB",
    "p4d": "A100-40GB",
    "p4de": "A100-80GB",
    "p6-b200": "B200-180GB",
    "g6": "L4-24GB",
    "g6e": "L40S-48GB",
    "g5": "A10G-24GB",
}


def _gpu_name(attributes: dict[str, Any]) -> str | None:
    family = str(attributes.get("instanceType", "")).split(".")[0]
    return GPU_BY_FAMILY.get(family)


def _gib(text: str | None) -> float | None:
    match = re.match(r"\s*([\d.,]+)\s*(GB|GiB)", str(text or ""))
    return float(match.group(1).replace(",", "")) if match else None


def parse_offer_file(offer: dict[str, Any], read_at: datetime, source: str = "aws-price-list") -> list[Quote]:
    """On-demand and reserved Linux, shared-tenancy instance-hours with GPUs from an EC2 offer file."""
    version = need(offer, "version", source)
    products = need(offer, "products", source)
    terms = need(offer, "terms", source)
    quotes = []
    for term_type, market in (("OnDemand", "on_demand"), ("Reserved", "reserved")):
        for sku, offers in (terms.get(term_type) or {}).items():
            product = products.get(sku)
            if product is None:
                raise PriceError(f"{source}: terms.{term_type}.{sku}: no product with this SKU")
            attributes = need(product, "attributes", f"{source}: products.{sku}")
            if attributes.get("operatingSystem") not in (None, "Linux") or attributes.get("tenancy") not in (
                None,
                "Shared",
            ):
                continue
            if attributes.get("preInstalledSw") not in (None, "NA") or attributes.get("capacitystatus") not in (
                None,
                "Used",
            ):
                continue
            gpus = int(attributes.get("gpu") or 0)
            total_memory = _gib(attributes.get("gpuMemory"))
            for code, term in offers.items():
                where = f"{source}: terms.{term_type}.{sku}.{code}"
                term_attributes = term.get("termAttributes") or {}
                if market == "reserved" and term_attributes.get("PurchaseOption") != "No Upfront":
                    continue  # upfront options are not an hourly price; No Upfront is
                for dimension in need(term, "priceDimensions", where).values():
                    if dimension.get("unit") != "Hrs":
                        continue
                    usd = need(need(dimension, "pricePerUnit", where), "USD", where)
                    reserved_term = None
                    if market == "reserved":
                        reserved_term = (
                            f"{term_attributes.get('LeaseContractLength', '?')} "
                            f"{term_attributes.get('OfferingClass', '')} No Upfront"
                        ).replace("  ", " ")
                    quotes.append(
                        Quote(
                            provider="aws",
                            region=need(attributes, "regionCode", f"{source}: products.{sku}"),
                            kind="compute",
                            instance_type=need(attributes, "instanceType", f"{source}: products.{sku}"),
                            gpu=_gpu_name(attributes) if gpus else None,
                            gpu_count=gpus,
                            gpu_memory_gb=total_memory / gpus if total_memory and gpus else None,
                            market=market,
                            term=reserved_term,
                            usd=float(usd),
                            source=f"{source}:{offer.get('offerCode', 'AmazonEC2')}@{version} sku {sku}",
                            source_kind="scraped",
                            as_of=read_at,
                        )
                    )
    return quotes


def parse_spot_history(
    answer: dict[str, Any], region: str, gpu_of: dict[str, tuple[str | None, int, float | None]], read_at: datetime
) -> list[Quote]:
    """The newest Linux spot price per instance type in a region (its cheapest zone), dated by the API.

    `gpu_of` maps instance type to (GPU, count, memory per GPU), from the offer file: the spot
    answer does not say what an instance holds.
    """
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for i, row in enumerate(need(answer, "SpotPriceHistory", "aws-spot")):
        where = f"aws-spot: SpotPriceHistory[{i}]"
        if not str(need(row, "ProductDescription", where)).startswith("Linux/UNIX"):
            continue
        key = (need(row, "InstanceType", where), need(row, "AvailabilityZone", where))
        if key not in newest or str(row["Timestamp"]) > str(newest[key]["Timestamp"]):
            newest[key] = row
    cheapest: dict[str, dict[str, Any]] = {}
    for (instance, _zone), row in newest.items():
        if instance not in cheapest or float(row["SpotPrice"]) < float(cheapest[instance]["SpotPrice"]):
            cheapest[instance] = row
    quotes = []
    for instance, row in sorted(cheapest.items()):
        gpu, count, memory = gpu_of.get(instance, (None, 0, None))
        stamp = row["Timestamp"]
        when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        quotes.append(
            Quote(
                provider="aws",
                region=region,
                kind="compute",
                instance_type=instance,
                gpu=gpu,
                gpu_count=count,
                gpu_memory_gb=memory,
                market="spot",
                usd=float(row["SpotPrice"]),
                source=f"aws:ec2.DescribeSpotPriceHistory {row['AvailabilityZone']}",
                source_kind="live",
                as_of=min(when, read_at),
            )
        )
    return quotes


def parse_get_products(price_list: list[str], read_at: datetime, version: str = "query-api") -> list[Quote]:
    """The Price List Query API's `GetProducts` answer (`PriceList`: one JSON document per SKU, each
    `{"product": {...}, "terms": {"OnDemand": {...}, "Reserved": {...}}}`), read as an offer file."""
    products, terms = {}, {"OnDemand": {}, "Reserved": {}}
    for i, text in enumerate(price_list):
        try:
            item = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            raise PriceError(f"aws-price-list: PriceList[{i}]: not JSON") from None
        product = need(item, "product", f"aws-price-list: PriceList[{i}]")
        sku = need(product, "sku", f"aws-price-list: PriceList[{i}].product")
        products[sku] = product
        for term_type in terms:
            if sku in (item.get("terms") or {}).get(term_type, {}):
                terms[term_type][sku] = item["terms"][term_type][sku]
            elif item.get("terms", {}).get(term_type):
                terms[term_type][sku] = item["terms"][term_type]
    offer = {"offerCode": "AmazonEC2", "version": version, "products": products, "terms": terms}
    return parse_offer_file(offer, read_at)


@register("aws")
class AwsFetcher:
    """On-demand and reserved from the Price List Query API (GetProducts, filtered: the region's whole
    offer file is hundreds of MB), spot from DescribeSpotPriceHistory in the instance's region."""

    name = "aws"

    def __init__(self, region: str, instance_types: list[str], credentials: str | None = None) -> None:
        self.region, self.instance_types, self.credentials = region, instance_types, credentials

    def _client(self, service: str, region: str):
        import boto3

        session = boto3.Session(profile_name=self.credentials) if self.credentials else boto3.Session()
        return session.client(service, region_name=region)

    def fetch(self, now: datetime | None = None) -> list[Quote]:
        read_at = utc_now(now)
        pricing = self._client("pricing", "us-east-1")  # the Query API's endpoint; it prices every region
        listed = []
        for instance in self.instance_types:
            filters = [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in (
                ("instanceType", instance), ("regionCode", self.region), ("operatingSystem", "Linux"),
                ("tenancy", "Shared"), ("preInstalledSw", "NA"), ("capacitystatus", "Used"))]  # fmt: skip
            pages = pricing.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters)
            listed += parse_get_products([text for page in pages for text in page.get("PriceList", [])], read_at)
        gpu_of = {q.instance_type: (q.gpu, q.gpu_count, q.gpu_memory_gb) for q in listed}
        ec2 = self._client("ec2", self.region)
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=self.instance_types, ProductDescriptions=["Linux/UNIX"], StartTime=read_at
        )
        rows = [row for page in pages for row in page.get("SpotPriceHistory", [])]
        return listed + parse_spot_history({"SpotPriceHistory": rows}, self.region, gpu_of, read_at)
