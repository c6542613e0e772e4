"""What a price fetcher is: one provider's price API read into quotes, behind one small interface.

Each fetcher keeps the API call (`fetch`) apart from reading its answer (`parse`), so the reading is
tested on recorded answers in the API's real format (`tests/fixtures/prices/`) and the call stays a
thin HTTP or boto3 request. Fetchers register by name in `FETCHERS` (a factory, like the stores').
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from activities.pricing.quotes import PriceError, Quote

HTTP_TIMEOUT_S = 20.0


class PriceFetcher(Protocol):
    """Reads one provider's prices. `fetch` calls the API; `parse` reads one recorded answer."""

    name: str

    def fetch(self, now: datetime | None = None) -> list[Quote]: ...


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    """GET a JSON document (the stdlib suffices for a read-only GET; no retries: the caller re-fetches)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())


def utc_now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def need(mapping: Any, key: str, where: str) -> Any:
    """A required key of an API answer, or a PriceError naming where it was missing."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise PriceError(f"{where}: missing {key!r} (not the documented answer format)")
    return mapping[key]


FETCHERS: dict[str, Callable[..., PriceFetcher]] = {}


def fetcher_from_spec(spec: str) -> PriceFetcher:
    """`lambda`, `gcp:us-central1,us-east4`, `aws:us-east-1:p5.48xlarge,g6.xlarge` → a fetcher."""
    name, _, rest = spec.partition(":")
    if name not in FETCHERS:
        raise PriceError(f"--fetch {spec}: unknown price source {name!r} (one of {', '.join(sorted(FETCHERS))})")
    parts = [part for part in rest.split(":") if part] if rest else []
    lists = [[item for item in part.split(",") if item] for part in parts]
    if name == "aws":
        if len(lists) != 2 or len(lists[0]) != 1:
            raise PriceError(f"--fetch {spec}: write aws:REGION:INSTANCE_TYPE[,INSTANCE_TYPE...]")
        return FETCHERS[name](lists[0][0], lists[1])
    if name == "gcp":
        if len(lists) != 1:
            raise PriceError(f"--fetch {spec}: write gcp:REGION[,REGION...]")
        return FETCHERS[name](lists[0])
    if lists:
        raise PriceError(f"--fetch {spec}: {name} takes no arguments")
    return FETCHERS[name]()


def register(name: str) -> Callable[[Callable[..., PriceFetcher]], Callable[..., PriceFetcher]]:
    def add(factory: Callable[..., PriceFetcher]) -> Callable[..., PriceFetcher]:
        FETCHERS[name] = factory
        return factory

    return add
