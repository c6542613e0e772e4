"""Cost- and latency-aware routing vs latency-only, three simulated regions behind latency proxies.

Three endpoint servers on loopback stand for one model served in three regions, each behind its own
`bench.faultproxy.FaultProxy` adding the region's round trip. Each server has a few slots (requests
in service at once) and exponential service times, so a region sent more than it can carry queues
and its latency climbs. Each region has a price per million tokens. Open-loop Poisson load (the same
seeded arrivals for both policies) goes through `workers.routing_policy`'s policies; every answer's
latency is measured by the client and fed back to the policy.

Reports, per policy: cost per million tokens (Σ price x tokens / Σ tokens), P99 latency and the share
of requests within the P99 SLO, after a warm-up; and the cost ratio with a bootstrap 95 % interval
over 1-second blocks.

    python -m bench.routing [--rate 80] [--seconds 30] [--slo-ms 250] [--append]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.faultproxy import FaultProxy
from workers.routing_policy import CostLatencyPolicy, LatencyOnlyPolicy, PolicySettings, RoutedEndpoint, p99

#: region: (round trip added by its proxy in s, slots, mean service time in s, USD per million tokens)
REGIONS = {"cheap-far": (0.060, 2, 0.015, 0.20), "mid": (0.030, 2, 0.015, 0.45), "dear-near": (0.008, 16, 0.015, 1.00)}


def endpoint_server(slots: int, service_s: float, seed: int) -> ThreadingHTTPServer:
    gate, rng, lock = threading.Semaphore(slots), random.Random(seed), threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with lock:
                service = rng.expovariate(1 / service_s)
            with gate:
                time.sleep(service)
            reply = json.dumps({"tokens": body.get("max_tokens", 100)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_policy(policy, urls: dict[str, str], arrivals: list[tuple[float, int]]) -> list[tuple[float, str, float, int]]:
    """Send each request at its arrival time; (sent at, region, latency ms, tokens) per answer."""
    local = threading.local()
    results, lock = [], threading.Lock()

    def connection(name: str) -> http.client.HTTPConnection:
        pool = getattr(local, "pool", None) or {}
        local.pool = pool
        if name not in pool:
            host, port = urls[name].removeprefix("http://").split(":")
            pool[name] = http.client.HTTPConnection(host, int(port), timeout=30)
        return pool[name]

    def send(at: float, tokens: int) -> None:
        name = policy.pick()
        body = json.dumps({"prompt": "hello", "max_tokens": tokens})
        started = time.perf_counter()
        try:
            conn = connection(name)
            conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            answer = json.loads(conn.getresponse().read())
        except (OSError, http.client.HTTPException):
            local.pool.pop(name, None)
            answer = {"tokens": 0}
        latency = (time.perf_counter() - started) * 1000
        policy.observe(name, latency)
        with lock:
            results.append((at, name, latency, answer["tokens"]))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=96) as pool:
        for at, tokens in arrivals:
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, at, tokens)
    return results


def summarize(results, slo_ms: float, warmup_s: float) -> dict:
    kept = [r for r in results if r[0] >= warmup_s]
    tokens = sum(r[3] for r in kept)
    price = {name: spec[3] for name, spec in REGIONS.items()}
    cost = sum(price[r[1]] * r[3] for r in kept) / tokens
    latencies = [r[2] for r in kept]
    shares = {name: round(sum(r[1] == name for r in kept) / len(kept), 3) for name in REGIONS}
    within = sum(latency <= slo_ms for latency in latencies) / len(latencies)
    return {"n": len(kept), "usd_per_million_tokens": cost, "p99_ms": p99(latencies), "within_slo": within,
            "shares": shares}  # fmt: skip


def block_ratio_ci(ours, theirs, warmup_s: float, rounds: int = 2_000, seed: int = 1) -> tuple[float, float]:
    """Bootstrap over 1 s blocks of the ratio of costs per million tokens."""
    price = {name: spec[3] for name, spec in REGIONS.items()}

    def blocks(results):
        out: dict[int, list[float]] = {}
        for at, name, _, tokens in results:
            if at >= warmup_s:
                usd, count = out.setdefault(int(at), [0.0, 0])
                out[int(at)] = [usd + price[name] * tokens, count + tokens]
        return out

    a, b = blocks(ours), blocks(theirs)
    keys = sorted(set(a) & set(b))
    rng, samples = random.Random(seed), []
    for _ in range(rounds):
        pick = [rng.choice(keys) for _ in keys]
        mine = sum(a[k][0] for k in pick) / sum(a[k][1] for k in pick)
        base = sum(b[k][0] for k in pick) / sum(b[k][1] for k in pick)
        samples.append(mine / base)
    samples.sort()
    return samples[int(0.025 * rounds)], samples[int(0.975 * rounds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=80.0, help="requests per second (open loop, Poisson)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not counted while the policies learn")
    parser.add_argument("--slo-ms", type=float, default=250.0, help="P99 latency SLO")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--append", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    arrivals, t = [], 0.0
    while t < args.seconds:
        t += rng.expovariate(args.rate)
        arrivals.append((t, rng.randint(50, 300)))
    endpoints = [RoutedEndpoint(name=n, usd_per_million_tokens=spec[3]) for n, spec in REGIONS.items()]
    servers, proxies, outcome = [], [], {}
    try:
        urls = {}
        for i, (name, (rtt, slots, service, _)) in enumerate(REGIONS.items()):
            server = endpoint_server(slots, service, args.seed + i)
            proxy = FaultProxy(f"http://127.0.0.1:{server.server_address[1]}", latency_s=rtt)
            servers.append(server)
            proxies.append(proxy)
            urls[name] = proxy.url
        for label, policy in (("cost+latency", CostLatencyPolicy(endpoints, PolicySettings(slo_p99_ms=args.slo_ms))),
                              ("latency-only", LatencyOnlyPolicy(endpoints))):  # fmt: skip
            outcome[label] = run_policy(policy, urls, arrivals)
    finally:
        for proxy in proxies:
            proxy.close()
        for server in servers:
            server.shutdown()
            server.server_close()
    ours, base = (summarize(outcome[k], args.slo_ms, args.warmup) for k in ("cost+latency", "latency-only"))
    low, high = block_ratio_ci(outcome["cost+latency"], outcome["latency-only"], args.warmup)
    ratio = ours["usd_per_million_tokens"] / base["usd_per_million_tokens"]
    load = "/".join(f"{x:.1f}" for x in os.getloadavg()[:2])
    lines = [
        f"{label}: ${s['usd_per_million_tokens']:.3f}/M tokens, P99 {s['p99_ms']:.0f} ms, {s['within_slo']:.2%} within "
        f"the {args.slo_ms:g} ms SLO, shares {s['shares']} ({s['n']} requests after {args.warmup:g} s warm-up)"
        for label, s in (("cost+latency", ours), ("latency-only", base))
    ]
    lines.append(
        f"cost per million tokens: {ratio:.3f}x latency-only ({1 - ratio:.0%} lower; 95% CI of the ratio "
        f"{low:.3f}-{high:.3f} over 1 s blocks), {args.rate:g} req/s Poisson for {args.seconds:g} s"
    )
    print("\n".join(lines))
    if args.append:
        cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                    if x.startswith("model name")), "unknown CPU")  # fmt: skip
        command = f"python -m bench.routing --rate {args.rate:g} --seconds {args.seconds:g} --slo-ms {args.slo_ms:g}"
        with Path(__file__).with_name("RESULTS.md").open("a") as out:
            out.write(f"\n## {datetime.now(UTC):%Y-%m-%d}, `{command}`\n\n{os.cpu_count()} x {cpu}, load {load}\n\n"
                      "```\n" + "\n".join(lines) + "\n```\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
