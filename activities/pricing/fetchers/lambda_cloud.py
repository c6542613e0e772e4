"""Lambda (a GPU neocloud) prices and capacity: its public Cloud API's instance types.

Format (docs-api.lambda.ai, `GET /api/v1/instance-types`): `{"data": {NAME: {"instance_type": {"name",
"description", "gpu_description", "price_cents_per_hour", "specs": {"vcpus", "memory_gib",
"storage_gib", "gpus"}}, "regions_with_capacity_available": [{"name", "description"}]}}}`. On-demand
only; one quote per region with capacity now (a live answer: ≤ 15 min).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from activities.pricing.fetchers.base import get_json, need, register, utc_now
from activities.pricing.quotes import Quote

API = "https://cloud.lambda.ai/api/v1"


def _gpu(description: str) -> tuple[str | None, float | None]:
    """`H100 (80 GB SXM5)` → (`H100-80GB`, 80.0)."""
    match = re.match(r"\s*([A-Za-z]+\d+[A-Za-z]*)\D*?(\d+)\s*GB", description)
    if not match:
        return None, None
    return f"{match.group(1).upper()}-{match.group(2)}GB", float(match.group(2))


def parse_instance_types(answer: dict[str, Any], read_at: datetime) -> list[Quote]:
    quotes = []
    for name, entry in sorted(need(answer, "data", "lambda").items()):
        where = f"lambda: data.{name}"
        kind = need(entry, "instance_type", where)
        gpus = int(need(kind, "specs", where).get("gpus") or 0)
        gpu, memory = _gpu(str(kind.get("gpu_description", "")))
        cents = need(kind, "price_cents_per_hour", where)
        for region in entry.get("regions_with_capacity_available") or []:
            quotes.append(
                Quote(
                    provider="lambda",
                    region=need(region, "name", where),
                    kind="compute",
                    instance_type=name,
                    gpu=gpu if gpus else None,
                    gpu_count=gpus,
                    gpu_memory_gb=memory,
                    market="on_demand",
                    usd=float(cents) / 100,
                    source=f"lambda:instance-types {name}",
                    source_kind="live",
                    as_of=read_at,
                )
            )
    return quotes


@register("lambda")
class LambdaFetcher:
    """`GET /instance-types` with the API key named by `api_key_env` (never carried in a plan)."""

    name = "lambda"

    def __init__(self, api_key_env: str = "LAMBDA_API_KEY", base_url: str | None = None) -> None:
        import os

        # SKYSHIFT_LAMBDA_API_URL points at a mirror or a recorded answer (as AWS_ENDPOINT_URL_S3 does for S3)
        self.api_key_env, self.base_url = api_key_env, base_url or os.environ.get("SKYSHIFT_LAMBDA_API_URL", API)

    def fetch(self, now: datetime | None = None) -> list[Quote]:
        import os

        key = os.environ.get(self.api_key_env, "")
        answer = get_json(f"{self.base_url}/instance-types", {"Authorization": f"Bearer {key}"} if key else None)
        return parse_instance_types(answer, utc_now(now))
