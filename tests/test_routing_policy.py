"""The cost- and latency-aware router policy, driven by a queueing model of three regions (no clock, no sleeps)."""

from __future__ import annotations

from collections import Counter, deque

import pytest

from workers.routing_policy import CostLatencyPolicy, LatencyOnlyPolicy, PolicySettings, RoutedEndpoint

ENDPOINTS = [
    RoutedEndpoint(name="cheap-far", usd_per_million_tokens=0.2),
    RoutedEndpoint(name="mid", usd_per_million_tokens=0.45),
    RoutedEndpoint(name="dear-near", usd_per_million_tokens=1.0),
]
#: network round trip (ms) and capacity (requests per second) of each region: an M/M/1 queue each
REGIONS = {"cheap-far": (60.0, 120.0), "mid": (30.0, 120.0), "dear-near": (8.0, 1_000.0)}


def drive(policy, requests: int, rate: float, regions=REGIONS, seed: int = 3) -> tuple[Counter, list[float]]:
    """Offered `rate` req/s; each region's latency = RTT + M/M/1 sojourn at the load the policy sends it
    (measured over its last 200 picks), with a deterministic spread standing in for jitter."""
    import random

    rng = random.Random(seed)
    recent: deque[str] = deque(maxlen=200)
    served, latencies = Counter(), []
    for _ in range(requests):
        name = policy.pick()
        recent.append(name)
        rtt, capacity = regions[name]
        load = rate * recent.count(name) / len(recent)
        utilisation = min(load / capacity, 0.995)
        latency = rtt + rng.expovariate(1.0) * (1_000.0 / capacity) / (1 - utilisation)
        policy.observe(name, latency)
        served[name] += 1
        latencies.append(latency)
    return served, latencies


def cost(served: Counter) -> float:
    prices = {e.name: e.usd_per_million_tokens for e in ENDPOINTS}
    return sum(prices[n] * k for n, k in served.items()) / sum(served.values())


def test_most_traffic_goes_to_the_cheapest_endpoint_that_meets_the_slo():
    policy = CostLatencyPolicy(ENDPOINTS, PolicySettings(slo_p99_ms=250))
    served, latencies = drive(policy, 6_000, rate=100.0)
    shares = {n: served[n] / 6_000 for n in served}
    assert shares["cheap-far"] > 0.5
    assert shares["dear-near"] >= 0.1  # the fastest keeps its share: no herding onto the cheapest
    assert min(shares.values()) >= 0.02  # every endpoint is probed
    tail = latencies[1_000:]
    assert sum(latency <= 250 for latency in tail) / len(tail) >= 0.99


def test_the_share_backs_off_when_the_cheapest_endpoint_saturates():
    """At 200 req/s the cheap region (capacity 120/s) cannot take most of it: its share shrinks, the SLO holds."""
    policy = CostLatencyPolicy(ENDPOINTS, PolicySettings(slo_p99_ms=250))
    served, latencies = drive(policy, 8_000, rate=200.0)
    assert 0.2 < served["cheap-far"] / 8_000 < 0.6
    tail = latencies[2_000:]
    assert sum(latency <= 250 for latency in tail) / len(tail) >= 0.99
    assert policy.status()["caps"]["cheap-far"] < 1.0


def test_cost_is_well_below_latency_only_routing():
    ours, _ = drive(CostLatencyPolicy(ENDPOINTS, PolicySettings(slo_p99_ms=250)), 6_000, rate=100.0)
    fastest, _ = drive(LatencyOnlyPolicy(ENDPOINTS), 6_000, rate=100.0)
    assert cost(ours) <= 0.7 * cost(fastest)


def test_an_endpoint_that_breaks_the_slo_gets_only_probes():
    slow = {**REGIONS, "cheap-far": (400.0, 120.0)}
    policy = CostLatencyPolicy(ENDPOINTS, PolicySettings(slo_p99_ms=250))
    served, _ = drive(policy, 4_000, rate=100.0, regions=slow)
    assert served["cheap-far"] / 4_000 < 0.06  # the learning phase's even split, then 2 % probes
    assert policy.status()["shares"]["cheap-far"] == pytest.approx(0.02)


def test_no_endpoints_is_refused_by_name():
    with pytest.raises(ValueError, match="endpoints"):
        CostLatencyPolicy([], PolicySettings(slo_p99_ms=100))


def test_the_multi_router_steers_real_requests_and_meters_cost_from_the_answers_token_counts():
    """Three endpoints on loopback behind latency proxies; the router's cost is the answers' own token counts."""
    import http.client
    import json

    from bench.faultproxy import FaultProxy
    from bench.routing import endpoint_server
    from workers.multi_router import serve

    servers, proxies = [], []
    endpoints = []
    for i, (name, rtt, price) in enumerate((("cheap-far", 0.02, 0.2), ("mid", 0.01, 0.45), ("dear-near", 0.0, 1.0))):
        server = endpoint_server(slots=4, service_s=0.002, seed=i)
        proxy = FaultProxy(f"http://127.0.0.1:{server.server_address[1]}", latency_s=rtt)
        servers.append(server)
        proxies.append(proxy)
        endpoints.append(RoutedEndpoint(name=name, url=proxy.url, usd_per_million_tokens=price))
    router = serve("127.0.0.1", 0, endpoints, PolicySettings(slo_p99_ms=150, min_samples=10, recompute_every=10))
    import threading

    threading.Thread(target=router.serve_forever, daemon=True).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", router.server_address[1], timeout=30)
        usd, tokens, served = 0.0, 0, Counter()
        prices = {e.name: e.usd_per_million_tokens for e in endpoints}
        for i in range(240):
            connection.request("POST", "/v1/completions", body=json.dumps({"max_tokens": 50 + i % 7}))
            response = connection.getresponse()
            answer = json.loads(response.read())
            backend = response.getheader("X-Skyshift-Backend")
            served[backend] += 1
            usd += prices[backend] * answer["tokens"] / 1e6
            tokens += answer["tokens"]
        connection.request("GET", "/-/policy")
        policy = json.loads(connection.getresponse().read())
        connection.request("GET", "/-/metrics")
        metrics = connection.getresponse().read().decode()
    finally:
        router.shutdown()
        router.server_close()
        for proxy in proxies:
            proxy.close()
        for server in servers:
            server.shutdown()
            server.server_close()
    assert served["cheap-far"] > served["mid"] and served["cheap-far"] > served["dear-near"]
    assert served["dear-near"] >= 0.05 * 240  # the fastest keeps a share
    assert policy["cost"]["tokens"] == tokens
    assert policy["cost"]["usd_per_million_tokens"] == pytest.approx(usd / tokens * 1e6)
    gauge = next(line for line in metrics.splitlines() if line.startswith("skyshift_cost_per_million_tokens_usd "))
    assert float(gauge.split()[1]) == pytest.approx(usd / tokens * 1e6)
    assert 'skyshift_router_tokens_total{endpoint="cheap-far"}' in metrics
