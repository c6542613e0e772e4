"""skyshift's weighted HTTP router: a reverse proxy that splits traffic between two deployments.

Weights change at run time through its admin API (GET/PUT /-/weights) without dropping requests:
each request picks its backend once, under a lock, by smooth weighted round-robin, so the split is
exact over any window rather than random. Weights persist to a state file, so a restarted router
keeps the split the workflow last set.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from activities.traffic import Weights

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


class Router:
    def __init__(self, backends: dict[str, str], state_file: Path | None) -> None:
        self.backends = {side: urlsplit(url) for side, url in backends.items()}
        self.state_file = state_file
        weights = Weights(source=100, target=0)
        if state_file and state_file.exists():
            weights = Weights.model_validate_json(state_file.read_text())
        self.choice = WeightedChoice(weights)

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
        self, side: str, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list, bytes]:
        backend = self.backends[side]
        connection = http.client.HTTPConnection(backend.hostname, backend.port, timeout=30)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

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

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/-/weights":
                    self._admin(body)
                    return
                if self.path == "/-/served":
                    self._reply(200, json.dumps(router.choice.served).encode())
                    return
                side = router.choice.pick()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    status, response_headers, payload = router.forward(side, self.command, self.path, headers, body)
                except OSError as error:
                    self._reply(502, json.dumps({"error": f"{side} unreachable: {error}"}).encode())
                    return
                self._reply(status, payload, [*response_headers, ("X-Skyshift-Backend", side)])

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
