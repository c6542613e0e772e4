"""An HTTP proxy in front of an object store that adds latency, injects faults and counts bytes.

Used by the tests (faults in every way a cloud reply can fail: 503, 500, a reset connection, a body
cut mid-stream; ranged reads corrupted) and by the benchmarks (a cross-region round trip in front of
the local S3 server; bytes served to measure re-sent data exactly). It forwards each request to the
upstream over keep-alive connections and relays the reply, so clients see a real S3/GCS endpoint.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULTS = ("503", "500", "reset", "truncate")


@dataclass
class Counters:
    requests: int = 0
    methods: Counter = field(default_factory=Counter)  # requests by HTTP method
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))
    bytes_served: int = 0
    object_bytes_served: int = 0  # GET bodies of objects (no query string: not listings)
    corrupted: int = 0


class _Link:
    """A shared link of `bytes_per_s`: each transfer waits for its turn on the wire (first come, first served)."""

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s, self.free_at, self.lock = bytes_per_s, time.monotonic(), threading.Lock()

    def pass_bytes(self, n: int) -> None:
        with self.lock:
            start = max(self.free_at, time.monotonic())
            self.free_at = start + n / self.bytes_per_s
            done = self.free_at
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class FaultProxy:
    """`rate`: share of replies that fail (each fault kind equally likely, or `kinds`); `latency_s`
    before each request is forwarded; `corrupt_ranged`: flip a byte in that many 206 replies;
    `bytes_per_s`: each reply body is sent no faster than this (a slow link: a test can watch a
    transfer while it is in progress, however fast the machine); `link_bytes_per_s`: all request and
    reply bodies together, over every connection, pass no faster than this (one machine's network
    link: give each worker process its own proxy to model one VM each)."""

    def __init__(self, upstream: str, *, rate: float = 0.0, kinds: tuple[str, ...] = FAULTS, latency_s: float = 0.0,
                 corrupt_ranged: int = 0, seed: int = 7, bytes_per_s: float | None = None,
                 link_bytes_per_s: float | None = None) -> None:  # fmt: skip
        self.upstream = urlparse(upstream)
        self.rate, self.kinds, self.latency_s, self.corrupt_left = rate, kinds, latency_s, corrupt_ranged
        self.bytes_per_s = bytes_per_s
        self.link = _Link(link_bytes_per_s) if link_bytes_per_s else None
        self.counters = Counters()
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _fault(self, method: str) -> str | None:
        with self.lock:
            self.counters.requests += 1
            self.counters.methods[method] += 1
            if self.rate and self.random.random() < self.rate:
                kind = self.random.choice(self.kinds)
                self.counters.faults[kind] += 1
                return kind
        return None

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
            self.local.connection = connection
        return connection

    def _upstream(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        for attempt in (1, 2):  # a keep-alive connection the upstream closed is reopened once
            connection = self._connection()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length", 0) or 0)
        body = request.rfile.read(length) if length else None
        if self.link is not None and length:
            self.link.pass_bytes(length)
        if self.latency_s:
            time.sleep(self.latency_s)
        fault = self._fault(request.command)
        if fault in ("503", "500"):
            message = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
            request.send_response(int(fault))
            request.send_header("Content-Length", str(len(message)))
            request.end_headers()
            request.wfile.write(message)
            return
        if fault == "reset" and request.command != "GET":
            self._reset(request)  # before the upstream saw it: a retry is safe
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "connection")}
        status, reply_headers, payload = self._upstream(request.command, request.path, body, headers)
        if status == 206 and payload:
            with self.lock:
                corrupt = self.corrupt_left > 0
                self.corrupt_left -= corrupt
                self.counters.corrupted += corrupt
            if corrupt:
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        request.send_response(status)
        for name, value in reply_headers:
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                request.send_header(name, value)
        upstream_length = next((v for k, v in reply_headers if k.lower() == "content-length"), "0")
        request.send_header("Content-Length", upstream_length if request.command == "HEAD" else str(len(payload)))
        request.end_headers()
        if request.command == "HEAD":
            return
        if request.command == "GET" and fault in ("reset", "truncate") and len(payload) > 1:
            cut = len(payload) // 2
            request.wfile.write(payload[:cut])
            with self.lock:
                self.counters.bytes_served += cut
                self.counters.object_bytes_served += cut if "?" not in request.path else 0
            self._reset(request)  # the body stops halfway: IncompleteRead on the client
            return
        self._send(request, payload, counted=request.command == "GET")

    def _send(self, request: BaseHTTPRequestHandler, payload: bytes, counted: bool) -> None:
        """Write the body (paced to `bytes_per_s`), counting what was written even if the client goes away."""
        step = 256 << 10 if self.bytes_per_s else max(1, len(payload))
        started = time.monotonic()
        for offset in range(0, len(payload), step):
            piece = payload[offset : offset + step]
            if self.link is not None:
                self.link.pass_bytes(len(piece))
            request.wfile.write(piece)
            if counted:
                with self.lock:
                    self.counters.bytes_served += len(piece)
                    self.counters.object_bytes_served += len(piece) if "?" not in request.path else 0
            ahead = (offset + step) / self.bytes_per_s - (time.monotonic() - started) if self.bytes_per_s else 0
            if ahead > 0:
                time.sleep(ahead)

    @staticmethod
    def _reset(request: BaseHTTPRequestHandler) -> None:
        request.close_connection = True
        try:
            request.wfile.flush()
            request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            request.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.faultproxy UPSTREAM`: serve a proxy in this process (one per worker in benchmarks, so
    each models its own machine's link); prints its URL, then runs until killed."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    parser.add_argument("upstream")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--link-mb-per-s", type=float, help="one shared link for every connection, in MB/s")
    args = parser.parse_args(argv)
    link = args.link_mb_per_s * 1e6 if args.link_mb_per_s else None
    proxy = FaultProxy(args.upstream, latency_s=args.latency_ms / 1000, link_bytes_per_s=link)
    print(proxy.url, flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
