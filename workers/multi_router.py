"""A router across several endpoints of one model (one per region or cloud), steered by cost and latency.

Each request goes where `workers.routing_policy.CostLatencyPolicy` says (the cheapest endpoint that
meets the p99 SLO, a share to the fastest, probes to the rest); the latency the router measures on
each answer goes back to the policy. Token counts are read from each answer (`usage.total_tokens`,
as OpenAI-style servers report it, else `tokens`), so cost is what was served, not what was assumed:

GET /-/policy    the shares, caps, recent p99 per endpoint, and the cost so far
GET /-/metrics   Prometheus text: requests, tokens and USD per endpoint, cost per million tokens,
                 requests beyond the SLO and what they cost (`latency_slo_violation_cost`)

    python -m workers.multi_router --port 8300 --slo-ms 250 \
        --endpoint cheap=http://10.0.0.1:8000@0.20 --endpoint near=http://10.0.0.2:8000@1.00
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from workers.http import KeepAliveHandler
from workers.routing_policy import CostLatencyPolicy, PolicySettings, RoutedEndpoint

log = logging.getLogger("skyshift.multi_router")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


def tokens_of(payload: bytes) -> int:
    """Tokens an answer reports: `usage.total_tokens` (OpenAI-style), else `tokens`; 0 if it says none."""
    try:
        answer = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return 0
    if not isinstance(answer, dict):
        return 0
    usage = answer.get("usage")
    value = usage.get("total_tokens") if isinstance(usage, dict) else answer.get("tokens")
    return value if isinstance(value, int) and value >= 0 else 0


class CostLedger:
    """What each endpoint served and what it cost, for /-/policy and /-/metrics."""

    def __init__(self, endpoints: list[RoutedEndpoint], slo_ms: float) -> None:
        self.prices = {e.name: e.usd_per_million_tokens for e in endpoints}
        self.slo_ms = slo_ms
        self.registry = CollectorRegistry()
        self.requests = Counter("skyshift_router_requests", "Requests answered", ["endpoint"], registry=self.registry)
        self.tokens = Counter("skyshift_router_tokens", "Tokens served", ["endpoint"], registry=self.registry)
        self.usd = Counter("skyshift_router_cost_usd", "USD of tokens served", ["endpoint"], registry=self.registry)
        self.late = Counter("skyshift_latency_slo_violations", "Answers slower than the SLO", ["endpoint"],
                            registry=self.registry)  # fmt: skip
        self.late_usd = Counter("skyshift_latency_slo_violation_cost_usd", "USD spent on answers slower than the SLO",
                                ["endpoint"], registry=self.registry)  # fmt: skip
        self.per_million = Gauge("skyshift_cost_per_million_tokens_usd", "USD per million tokens served so far",
                                 registry=self.registry)  # fmt: skip
        self.lock = threading.Lock()
        self.total_usd, self.total_tokens = 0.0, 0

    def record(self, name: str, tokens: int, latency_ms: float) -> None:
        usd = tokens * self.prices[name] / 1e6
        self.requests.labels(name).inc()
        self.tokens.labels(name).inc(tokens)
        self.usd.labels(name).inc(usd)
        if latency_ms > self.slo_ms:
            self.late.labels(name).inc()
            self.late_usd.labels(name).inc(usd)
        with self.lock:
            self.total_usd += usd
            self.total_tokens += tokens
            if self.total_tokens:
                self.per_million.set(self.total_usd / self.total_tokens * 1e6)

    def summary(self) -> dict:
        with self.lock:
            per_million = self.total_usd / self.total_tokens * 1e6 if self.total_tokens else None
            return {"tokens": self.total_tokens, "usd": self.total_usd, "usd_per_million_tokens": per_million}


class MultiRouter:
    def __init__(self, endpoints: list[RoutedEndpoint], settings: PolicySettings) -> None:
        self.urls = {e.name: urlsplit(e.url) for e in endpoints}
        self.policy = CostLatencyPolicy(endpoints, settings)
        self.ledger = CostLedger(endpoints, settings.slo_p99_ms)
        self.local = threading.local()

    def forward(self, name: str, method: str, path: str, headers: dict[str, str], body: bytes):
        pool = getattr(self.local, "pool", None)
        if pool is None:
            pool = self.local.pool = {}
        for attempt in (1, 2):  # a keep-alive connection the endpoint closed is reopened once
            url = self.urls[name]
            connection = pool.get(name) or http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            pool[name] = connection
            try:
                connection.request(method, path, body=body or None, headers=headers)
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.HTTPException, OSError):
                connection.close()
                pool.pop(name, None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def handler(self) -> type[BaseHTTPRequestHandler]:
        router = self

        class Handler(KeepAliveHandler):
            def _reply(self, status: int, body: bytes, headers: list | None = None) -> None:
                self.send_response(status)
                for name, value in headers or [("Content-Type", "application/json")]:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                if self.path == "/-/policy":
                    status = {**router.policy.status(), "cost": router.ledger.summary()}
                    self._reply(200, json.dumps(status).encode())
                    return
                if self.path == "/-/metrics":
                    self._reply(200, generate_latest(router.ledger.registry), [("Content-Type", "text/plain")])
                    return
                name = router.policy.pick()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                started = time.perf_counter()
                try:
                    status, response_headers, payload = router.forward(name, self.command, self.path, headers, body)
                except OSError as error:
                    router.policy.observe(name, (time.perf_counter() - started) * 1000 + router.ledger.slo_ms)
                    self._reply(502, json.dumps({"error": f"{name} unreachable: {error}"}).encode())
                    return
                latency_ms = (time.perf_counter() - started) * 1000
                router.policy.observe(name, latency_ms)
                router.ledger.record(name, tokens_of(payload) if status < 400 else 0, latency_ms)
                self._reply(status, payload, [*response_headers, ("X-Skyshift-Backend", name)])

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        return Handler


def serve(host: str, port: int, endpoints: list[RoutedEndpoint], settings: PolicySettings) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), MultiRouter(endpoints, settings).handler())
    server.daemon_threads = True
    return server


def parse_endpoint(text: str) -> RoutedEndpoint:
    """`NAME=URL@USD_PER_MILLION_TOKENS`."""
    name, _, rest = text.partition("=")
    url, _, price = rest.rpartition("@")
    if not name or not url or not price:
        raise argparse.ArgumentTypeError(f"--endpoint {text!r}: expected NAME=URL@USD_PER_MILLION_TOKENS")
    try:
        return RoutedEndpoint(name=name, url=url, usd_per_million_tokens=float(price))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--endpoint {text!r}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.multi_router", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slo-ms", type=float, required=True, help="the P99 latency SLO")
    parser.add_argument("--endpoint", type=parse_endpoint, action="append", required=True,
                        help="NAME=URL@USD_PER_MILLION_TOKENS (repeat per endpoint)")  # fmt: skip
    parser.add_argument("--fastest-share", type=float, default=0.1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = PolicySettings(slo_p99_ms=args.slo_ms, fastest_share=args.fastest_share)
    server = serve(args.host, args.port, args.endpoint, settings)
    log.info("routing on http://%s:%d across %s", args.host, args.port, ", ".join(e.name for e in args.endpoint))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
