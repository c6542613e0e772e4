"""Metrics providers: read request counts, errors and latency histograms from both deployments.

Two providers, chosen by the plan: `scrape` reads each endpoint's Prometheus text (`/metrics`);
`prometheus` asks a Prometheus server (`/api/v1/query`) with PromQL templates from the plan and
the endpoint's label matchers. Both return cumulative counters; a window is the difference of two
snapshots, so the workflow keeps only the previous snapshot (a few numbers), never raw samples.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field
from temporalio import activity

from skyshift.spec.endpoints import EndpointPair, MetricsProvider, PrometheusProvider, ScrapeProvider

REQUESTS = "skyshift_requests"
ERRORS = "skyshift_request_errors"
LATENCY = "skyshift_request_latency_seconds"
#: Latency buckets (seconds) the demo endpoints export; fine enough to resolve a 15% shift.
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.012, 0.015, 0.020, 0.025, 0.030, 0.040,
    0.050, 0.060, 0.080, 0.100, 0.125, 0.150, 0.200, 0.300, 0.500, 0.750, 1.0, 2.0, 5.0,
)  # fmt: skip


class Histogram(BaseModel):
    bounds: list[float] = Field(description="Finite upper bounds, ascending (+Inf is implied by count)")
    cumulative: list[float]
    count: float = Field(description="All observations, including those above the last bound")
    sum: float


class SideSnapshot(BaseModel):
    url: str
    ok: bool
    error: str | None = None
    requests: float = 0
    errors: float = 0
    latency: Histogram | None = None


class EndpointSnapshot(BaseModel):
    endpoint: str
    source: SideSnapshot
    target: SideSnapshot


class ScrapeInput(BaseModel):
    endpoints: list[EndpointPair]
    provider: MetricsProvider = Field(default_factory=ScrapeProvider)
    timeout_seconds: float = 5.0


def parse_metrics(url: str, text: str) -> SideSnapshot:
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{REQUESTS}_total":
                requests += sample.value
            elif sample.name == f"{ERRORS}_total":
                errors += sample.value
            elif sample.name == f"{LATENCY}_bucket":
                bound = float(sample.labels["le"])
                if bound != float("inf"):  # JSON has no infinity; `count` carries that bucket
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == f"{LATENCY}_count":
                count += sample.value
            elif sample.name == f"{LATENCY}_sum":
                total += sample.value
    bounds = sorted(buckets)
    histogram = (
        Histogram(bounds=bounds, cumulative=[buckets[b] for b in bounds], count=count, sum=total) if bounds else None
    )
    return SideSnapshot(url=url, ok=True, requests=requests, errors=errors, latency=histogram)


def scrape(url: str, timeout: float) -> SideSnapshot:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as response:
            return parse_metrics(url, response.read().decode())
    except (OSError, ValueError) as error:
        # A provider that cannot be read is a fact for the verdict ("error"), not an activity failure.
        return SideSnapshot(url=url, ok=False, error=f"{type(error).__name__}: {error}")


def _instant(base: str, query: str, timeout: float) -> list[tuple[dict[str, str], float]]:
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise ValueError(f"Prometheus refused {query!r}: {body.get('error', body)}")
    return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]


def query_prometheus(provider: PrometheusProvider, labels: str, url: str, timeout: float) -> SideSnapshot:
    """One side's cumulative counters from a Prometheus server, shaped like a direct scrape."""
    q = provider.queries

    def scalar(template: str) -> float:
        return sum(value for _, value in _instant(provider.url, template.format(labels=labels), timeout))

    try:
        buckets = {
            float(metric["le"]): value
            for metric, value in _instant(provider.url, q.buckets.format(labels=labels), timeout)
            if metric.get("le") not in (None, "+Inf")
        }
        bounds = sorted(buckets)
        histogram = Histogram(bounds=bounds, cumulative=[buckets[b] for b in bounds], count=scalar(q.count),
                              sum=scalar(q.sum)) if bounds else None  # fmt: skip
        return SideSnapshot(url=url, ok=True, requests=scalar(q.requests), errors=scalar(q.errors), latency=histogram)
    except (OSError, ValueError, KeyError) as error:
        return SideSnapshot(url=url, ok=False, error=f"{type(error).__name__}: {error}")


@activity.defn
def scrape_endpoints(request: ScrapeInput) -> list[EndpointSnapshot]:
    provider, timeout = request.provider, request.timeout_seconds

    def side(url: str, labels: str) -> SideSnapshot:
        if isinstance(provider, PrometheusProvider):
            return query_prometheus(provider, labels, url, timeout)
        return scrape(url, timeout)

    return [
        EndpointSnapshot(
            endpoint=pair.name,
            source=side(pair.source_url, pair.source_labels),
            target=side(pair.target_url, pair.target_labels),
        )
        for pair in request.endpoints
    ]
