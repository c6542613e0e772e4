"""skyshift's weighted HTTP router: a reverse proxy that splits traffic between two deployments.

Weights change at run time through its admin API (GET/PUT /-/weights) without dropping requests:
each request picks its backend once, under a lock, by smooth weighted round-robin, so the split is
exact over any window rather than random. Weights persist to a state file, so a restarted router
keeps the split the workflow last set.

Shadow mirroring (GET/PUT /-/mirror, GET /-/mirror/exchanges): an exact share of live requests that
the source answered is copied, *after* the client has its answer, to the source again and to the
target, marked `X-Skyshift-Shadow: mirror`; those answers are kept for the shadow runner and never
returned to anyone. A bounded pool sends the copies: when it is full a copy is dropped (counted),
so a slow or failing target never holds a client up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from activities.shadow.mirror import ArmReply, Exchange, ExchangePage, MirrorCounters, MirrorSettings, MirrorStatus
from activities.traffic import Weights
from skyshift.spec.shadow import SHADOW_HEADER, SHADOW_ID_HEADER
from workers.http import KeepAliveHandler

log = logging.getLogger("skyshift.router")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


class WeightedChoice:
    """Smooth weighted round-robin (as in nginx): deterministic, exact proportions, no bursts."""

    def __init__(self, weights: Weights) -> None:
        self.lock = threading.Lock()
        self.weights = weights
        self.current = {"source": 0, "target": 0}
        self.served = {"source": 0, "target": 0}

    def set(self, weights: Weights) -> None:
        with self.lock:
            self.weights = weights
            self.current = {"source": 0, "target": 0}

    def pick(self) -> str:
        with self.lock:
            weights = self.weights.model_dump()
            for side in self.current:
                self.current[side] += weights[side]
            chosen = max(self.current, key=lambda side: (self.current[side], side == "source"))
            self.current[chosen] -= sum(weights.values())
            self.served[chosen] += 1
            return chosen


Forward = Callable[[str, str, str, dict[str, str], bytes, float], tuple[int, list, bytes]]


def reply_of(status: int | None, payload: bytes | None, started: float, error: str | None = None,
             max_body: int = 1 << 20) -> ArmReply:  # fmt: skip
    latency_ms = (time.perf_counter() - started) * 1000
    if payload is not None and len(payload) > max_body:
        return ArmReply(status=status, latency_ms=latency_ms, error=f"answer of {len(payload)} bytes not kept")
    body = payload.decode("utf-8", "replace") if payload is not None else None
    return ArmReply(status=status, latency_ms=latency_ms, body=body, error=error)


class Mirror:
    """Copies an exact share of live requests to both deployments and keeps the three answers.

    Which requests: smooth accumulation (percent per eligible request, mirror at each 100), so 5%
    is exactly one request in twenty. Copies run on `workers` threads with at most `backlog`
    waiting; beyond that a copy is dropped rather than queued without bound. At most `capacity`
    exchanges are kept (oldest forgotten first).
    """

    def __init__(self, forward: Forward, workers: int = 4, backlog: int = 64, capacity: int = 5000,
                 timeout: float = 5.0) -> None:  # fmt: skip
        self.forward = forward
        self.timeout = timeout
        self.lock = threading.Lock()
        self.settings = MirrorSettings()
        self.counters = MirrorCounters()
        self.credit = 0.0
        self.sequence = 0
        self.exchanges: deque[tuple[int, Exchange]] = deque(maxlen=capacity)
        self.slots = threading.BoundedSemaphore(workers + backlog)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skyshift-mirror")

    def configure(self, settings: MirrorSettings) -> MirrorStatus:
        with self.lock:
            if settings.reset:
                self.counters, self.credit = MirrorCounters(), 0.0
                self.exchanges.clear()
            self.settings = settings.model_copy(update={"reset": False})
        log.info("mirroring %g%% of POST %s", settings.percent, settings.path)
        return self.status()

    def status(self) -> MirrorStatus:
        with self.lock:
            counters = self.counters.model_copy(update={"collected": len(self.exchanges)})
            return MirrorStatus(settings=self.settings, counters=counters)

    def page(self, after: int, limit: int) -> ExchangePage:
        with self.lock:
            picked = [(n, e) for n, e in self.exchanges if n > after][:limit]
        return ExchangePage(exchanges=[e for _, e in picked], next_after=picked[-1][0] if picked else after)

    def offer(self, side: str, method: str, path: str, headers: dict[str, str], body: bytes, live: ArmReply) -> None:
        """Called after the client was answered: maybe copy this request to both deployments."""
        if side != "source" or method != "POST" or any(k.lower() == SHADOW_HEADER.lower() for k in headers):
            return
        with self.lock:
            if urlsplit(path).path != self.settings.path or self.settings.percent <= 0:
                return
            self.counters.eligible += 1
            self.credit += self.settings.percent
            if self.credit < 100:
                return
            self.credit -= 100
            if not self.slots.acquire(blocking=False):
                self.counters.dropped += 1
                return
            self.counters.mirrored += 1
            self.sequence += 1
            number = self.sequence
        self.pool.submit(self._copy, number, path, headers, body, live)

    def _call(self, side: str, path: str, headers: dict[str, str], body: bytes) -> ArmReply:
        started = time.perf_counter()
        try:
            status, _, payload = self.forward(side, "POST", path, headers, body, self.timeout)
        except (OSError, http.client.HTTPException) as error:
            return reply_of(None, None, started, f"{type(error).__name__}: {error}")
        return reply_of(status, payload, started)

    def _copy(self, number: int, path: str, headers: dict[str, str], body: bytes, live: ArmReply) -> None:
        try:
            marked = {**headers, SHADOW_HEADER: "mirror", SHADOW_ID_HEADER: f"m-{number}"}
            again, target = self._call("source", path, marked, body), self._call("target", path, marked, body)
            exchange = Exchange(id=f"m-{number}", origin="mirror",
                                arms={"source": live, "source_again": again, "target": target})  # fmt: skip
            with self.lock:
                self.counters.completed += 1
                self.counters.source_failed += not again.ok
                self.counters.target_failed += not target.ok
                self.exchanges.append((number, exchange))
        except Exception:  # a copy must never take the router down
            log.exception("mirror copy m-%d failed", number)
        finally:
            self.slots.release()


class Router:
    def __init__(self, backends: dict[str, str], state_file: Path | None) -> None:
        self.backends = {side: urlsplit(url) for side, url in backends.items()}
        self.state_file = state_file
        weights = Weights(source=100, target=0)
        if state_file and state_file.exists():
            weights = Weights.model_validate_json(state_file.read_text())
        self.choice = WeightedChoice(weights)
        self.mirror = Mirror(self.forward)

    def set_weights(self, weights: Weights) -> Weights:
        if self.state_file:
            fd, temp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".weights-")
            with os.fdopen(fd, "w") as out:
                out.write(weights.model_dump_json())
            os.replace(temp, self.state_file)
        self.choice.set(weights)
        log.info("weights now source=%d target=%d", weights.source, weights.target)
        return weights

    def forward(
        self, side: str, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float = 30
    ) -> tuple[int, list, bytes]:
        backend = self.backends[side]
        connection = http.client.HTTPConnection(backend.hostname, backend.port, timeout=timeout)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        router = self

        class Handler(KeepAliveHandler):
            def _reply(self, status: int, body: bytes, headers: list | None = None) -> None:
                self.send_response(status)
                sent = False
                for name, value in headers or [("Content-Type", "application/json")]:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                        sent = True
                if not sent:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _admin(self, body: bytes) -> None:
                if self.command == "GET":
                    self._reply(200, router.choice.weights.model_dump_json().encode())
                    return
                try:
                    weights = router.set_weights(Weights.model_validate_json(body))
                except ValidationError as error:
                    self._reply(400, json.dumps({"error": str(error)}).encode())
                    return
                self._reply(200, weights.model_dump_json().encode())

            def _mirror_admin(self, body: bytes) -> None:
                url = urlsplit(self.path)
                if url.path == "/-/mirror/exchanges":
                    query = parse_qs(url.query)
                    try:
                        after, limit = int(query.get("after", ["0"])[0]), int(query.get("limit", ["200"])[0])
                    except ValueError:
                        self._reply(400, b'{"error": "after and limit must be integers"}')
                        return
                    self._reply(200, router.mirror.page(after, max(1, min(limit, 1000))).model_dump_json().encode())
                elif self.command == "GET":
                    self._reply(200, router.mirror.status().model_dump_json().encode())
                else:
                    try:
                        status = router.mirror.configure(MirrorSettings.model_validate_json(body))
                    except ValidationError as error:
                        self._reply(400, json.dumps({"error": str(error)}).encode())
                        return
                    self._reply(200, status.model_dump_json().encode())

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/-/weights":
                    self._admin(body)
                    return
                if self.path == "/-/served":
                    self._reply(200, json.dumps(router.choice.served).encode())
                    return
                if self.path.startswith("/-/mirror"):
                    self._mirror_admin(body)
                    return
                side = router.choice.pick()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                started = time.perf_counter()
                try:
                    status, response_headers, payload = router.forward(side, self.command, self.path, headers, body)
                except OSError as error:
                    self._reply(502, json.dumps({"error": f"{side} unreachable: {error}"}).encode())
                    live = reply_of(None, None, started, f"{type(error).__name__}: {error}")
                else:
                    live = reply_of(status, payload, started)
                    self._reply(status, payload, [*response_headers, ("X-Skyshift-Backend", side)])
                router.mirror.offer(side, self.command, self.path, headers, body, live)

            do_GET = do_POST = do_PUT = do_DELETE = _proxy

        return Handler


def serve(host: str, port: int, source: str, target: str, state_file: Path | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), Router({"source": source, "target": target}, state_file).handler())
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.router", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", required=True, help="base URL of the source deployment")
    parser.add_argument("--target", required=True, help="base URL of the target deployment")
    parser.add_argument("--state", type=Path, help="file that keeps the current weights across restarts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = serve(args.host, args.port, args.source, args.target, args.state)
    log.info("routing on http://%s:%d", args.host, args.port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
