"""Cost- and latency-aware routing across several endpoints of one model (the multi-cloud pattern).

Each request goes to the cheapest endpoint whose *measured* p99 meets the SLO, up to the share of
traffic it has shown it can carry; a fixed share goes to the fastest endpoint and a small probe
share to every other, so no endpoint is herded onto and every latency estimate stays fresh.

The share an endpoint may carry is an AIMD controller on its recent p99 (as TCP's congestion window):
over `headroom` x SLO it is cut multiplicatively, comfortably under it grows additively. Filling
endpoints cheapest-first up to their shares sends the most traffic to the cheapest place that still
answers in time, and backs off before its queue breaks the SLO. Picks follow smooth weighted
round-robin over the current shares (as `workers.router.WeightedChoice`): exact proportions, no bursts.
Thread-safe; latencies come from whoever forwards the request (`observe`).
"""

from __future__ import annotations

import threading
from collections import deque

from pydantic import BaseModel, Field


class RoutedEndpoint(BaseModel):
    name: str = Field(min_length=1)
    url: str = ""
    usd_per_million_tokens: float = Field(ge=0, description="Compute + network + storage per million tokens served")


class PolicySettings(BaseModel):
    slo_p99_ms: float = Field(gt=0)
    fastest_share: float = Field(0.1, ge=0, le=1, description="Always to the fastest endpoint: no herding")
    probe_share: float = Field(0.02, ge=0, le=0.2, description="To every other endpoint: fresh latency estimates")
    headroom: float = Field(0.75, gt=0, le=1, description="Back off when p99 exceeds this share of the SLO")
    window: int = Field(50, ge=10, description="Latencies per endpoint the p99 is read from")
    min_samples: int = Field(20, ge=5, description="Latencies an endpoint needs before its share may change")
    recompute_every: int = Field(25, ge=1, description="Picks between share updates")
    increase: float = Field(0.05, gt=0, le=1, description="Additive increase of a share that meets the SLO")
    decrease: float = Field(0.7, gt=0, lt=1, description="Multiplicative decrease of a share that breaks it")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class CostLatencyPolicy:
    """Pick an endpoint per request; `observe` each answer's latency (ms)."""

    def __init__(self, endpoints: list[RoutedEndpoint], settings: PolicySettings) -> None:
        if not endpoints:
            raise ValueError("endpoints: at least one is needed")
        self.endpoints = {e.name: e for e in endpoints}
        self.settings = settings
        self.lock = threading.Lock()
        self.latencies = {name: deque(maxlen=settings.window) for name in self.endpoints}
        self.caps = dict.fromkeys(self.endpoints, 1.0 / len(endpoints))
        self.shares = dict.fromkeys(self.endpoints, 1.0 / len(endpoints))
        self.current = dict.fromkeys(self.endpoints, 0.0)
        self.picks = 0
        self.learned = False
        self.served = dict.fromkeys(self.endpoints, 0)

    def observe(self, name: str, latency_ms: float) -> None:
        with self.lock:
            self.latencies[name].append(latency_ms)

    def pick(self) -> str:
        with self.lock:
            self.picks += 1
            if self.picks % self.settings.recompute_every == 0:
                self._recompute()
            for name, share in self.shares.items():
                self.current[name] += share
            chosen = max(self.current, key=lambda n: (self.current[n], -self.endpoints[n].usd_per_million_tokens))
            self.current[chosen] -= 1.0
            self.served[chosen] += 1
            return chosen

    def status(self) -> dict:
        with self.lock:
            return {"shares": dict(self.shares), "caps": dict(self.caps), "served": dict(self.served),
                    "p99_ms": {n: p99(list(v)) if v else None for n, v in self.latencies.items()}}  # fmt: skip

    def _recompute(self) -> None:
        s = self.settings
        known = {n: p99(list(v)) for n, v in self.latencies.items() if len(v) >= s.min_samples}
        if len(known) < len(self.endpoints) and not self.learned:
            return  # still learning: the even split it started with measures every endpoint
        self.learned = True
        limit = s.headroom * s.slo_p99_ms
        fastest = min(known, key=known.get)
        for name, latency in known.items():
            if latency > limit:
                self.caps[name] = max(s.probe_share, self.caps[name] * s.decrease)
                # judged again only on answers at the new share: the old ones were sent at the load it broke under
                self.latencies[name].clear()
            elif latency < 0.8 * limit:
                self.caps[name] = min(1.0, self.caps[name] + s.increase)
        shares = dict.fromkeys(self.endpoints, 0.0)
        others = [n for n in self.endpoints if n != fastest]
        for name in others:
            shares[name] = s.probe_share
        remaining = 1.0 - s.fastest_share - s.probe_share * len(others)
        for name in sorted(self.endpoints, key=lambda n: self.endpoints[n].usd_per_million_tokens):
            if known.get(name, 0.0) > s.slo_p99_ms:
                continue  # breaking the SLO outright: probes only (an endpoint being re-measured keeps its cap)
            take = max(0.0, min(self.caps[name] - shares[name], remaining))
            shares[name] += take
            remaining -= take
        shares[fastest] += s.fastest_share + max(remaining, 0.0)
        self.shares = shares


class LatencyOnlyPolicy:
    """The baseline: each request to the endpoint with the lowest recent median latency (probing the others)."""

    def __init__(self, endpoints: list[RoutedEndpoint], window: int = 100, probe_every: int = 50) -> None:
        self.names = [e.name for e in endpoints]
        self.latencies = {n: deque(maxlen=window) for n in self.names}
        self.lock, self.picks, self.probe_every = threading.Lock(), 0, probe_every

    def observe(self, name: str, latency_ms: float) -> None:
        with self.lock:
            self.latencies[name].append(latency_ms)

    def pick(self) -> str:
        with self.lock:
            self.picks += 1
            unknown = [n for n in self.names if len(self.latencies[n]) < 5]
            if unknown:
                return unknown[self.picks % len(unknown)]
            if self.picks % self.probe_every == 0:
                return self.names[(self.picks // self.probe_every) % len(self.names)]
            return min(self.names, key=lambda n: sorted(self.latencies[n])[len(self.latencies[n]) // 2])
