"""A small torch model served over HTTP, one per environment: the demo's inference deployments.

POST /v1/predict {"inputs": [[16 floats], ...]} → {"outputs": [[4 floats], ...], "served_by": env}
GET  /metrics    Prometheus text: requests, errors, latency histogram
GET|PUT /-/faults {"latency_factor": 1.4, "error_rate": 0.05}: make this side worse on purpose
The model loads from the environment's own storage (`torch.load(weights_only=True)`: no pickle
code runs), so the target serves the checkpoint that the migration copied.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError

from activities.metrics import LATENCY_BUCKETS
from activities.stores import open_store

INPUTS, OUTPUTS = 16, 4
log = logging.getLogger("skyshift.endpoint")


class Faults(BaseModel):
    latency_factor: float = Field(1.0, ge=1.0, le=100.0, description="Multiply service time")
    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of requests answered 500")


class PredictRequest(BaseModel):
    inputs: list[list[float]] = Field(min_length=1, max_length=256)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(INPUTS, 64), torch.nn.ReLU(), torch.nn.Linear(64, OUTPUTS))


def load_model(store_url: str | None, key: str | None) -> torch.nn.Module:
    model = tiny_model()
    if store_url and key:
        state = torch.load(io.BytesIO(open_store(store_url).read_bytes(key)), weights_only=True, map_location="cpu")
        model.load_state_dict(state)
    return model.eval()


class Endpoint:
    def __init__(self, env: str, model: torch.nn.Module, service_ms: float, seed: int = 0) -> None:
        self.env = env
        self.model = model
        self.service_ms = service_ms
        self.faults = Faults()
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter("skyshift_requests", "Inference requests", ["env"], registry=self.registry)
        self.errors = Counter("skyshift_request_errors", "Failed inference requests", ["env"], registry=self.registry)
        self.latency = Histogram(
            "skyshift_request_latency_seconds",
            "Request latency",
            ["env"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def predict(self, body: bytes) -> tuple[int, dict]:
        started = time.perf_counter()
        with self.lock:
            faults, fail = self.faults, self.random.random()
        try:
            request = PredictRequest.model_validate_json(body)
            if any(len(row) != INPUTS for row in request.inputs):
                return 400, {"error": f"inputs: each row needs {INPUTS} numbers"}
            with torch.inference_mode():
                outputs = self.model(torch.tensor(request.inputs)).tolist()
            # Simulated service time stands in for a real model's; faults scale it.
            spent = time.perf_counter() - started
            time.sleep(max(0.0, self.service_ms / 1000 * faults.latency_factor - spent))
            if fail < faults.error_rate:
                return 500, {"error": "injected fault"}
            return 200, {"outputs": outputs, "served_by": self.env}
        except ValidationError as error:
            return 400, {"error": str(error)}
        finally:
            self.requests.labels(self.env).inc()
            self.latency.labels(self.env).observe(time.perf_counter() - started)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._reply(200, generate_latest(endpoint.registry), "text/plain; version=0.0.4")
                elif self.path == "/-/faults":
                    self._reply(200, endpoint.faults.model_dump_json().encode())
                elif self.path == "/healthz":
                    self._reply(200, json.dumps({"env": endpoint.env}).encode())
                else:
                    self._reply(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                if self.path != "/v1/predict":
                    self._reply(404, b'{"error": "not found"}')
                    return
                status, payload = endpoint.predict(self._body())
                if status >= 500:
                    endpoint.errors.labels(endpoint.env).inc()
                self._reply(status, json.dumps(payload).encode())

            def do_PUT(self) -> None:
                if self.path != "/-/faults":
                    self._reply(404, b'{"error": "not found"}')
                    return
                try:
                    faults = Faults.model_validate_json(self._body())
                except ValidationError as error:
                    self._reply(400, json.dumps({"error": str(error)}).encode())
                    return
                with endpoint.lock:
                    endpoint.faults = faults
                log.info("%s faults now %s", endpoint.env, faults.model_dump())
                self._reply(200, faults.model_dump_json().encode())

        return Handler


def warm_up(model: torch.nn.Module, rounds: int = 20) -> None:
    """Run inference before accepting traffic: a cold first call is ~100x slower and would be
    judged as a latency regression of the whole deployment."""
    with torch.inference_mode():
        for _ in range(rounds):
            model(torch.zeros(1, INPUTS))


def serve(env: str, host: str, port: int, model: torch.nn.Module, service_ms: float) -> ThreadingHTTPServer:
    warm_up(model)
    server = ThreadingHTTPServer((host, port), Endpoint(env, model, service_ms).handler())
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    from skyshift.runtime import load_stack_env

    parser = argparse.ArgumentParser(prog="python -m workers.endpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", help="store URL holding the checkpoint (s3://, gs://, file://)")
    parser.add_argument("--checkpoint", help="checkpoint key inside --store (a torch state_dict)")
    parser.add_argument("--service-ms", type=float, default=8.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load_stack_env()
    torch.set_num_threads(1)
    server = serve(args.env, args.host, args.port, load_model(args.store, args.checkpoint), args.service_ms)
    log.info("%s serving on http://%s:%d", args.env, args.host, args.port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
