"""A small torch model served over HTTP, one per environment: the demo's inference deployments.

POST /v1/predict {"inputs": [[16 floats], ...]}
                 → {"outputs": [[4 logits], ...], "labels": ["class-2", ...], "served_by": env}
GET  /metrics    Prometheus text: requests, errors, latency histogram (user traffic only)
GET|PUT /-/faults {"latency_factor": 1.4, "error_rate": 0.05, "output_noise": 0.001}: make this side worse
The model loads from the environment's own storage through skyshift's checkpoint reader (an
allow-listed unpickler: no pickle code ever runs, not even torch's `weights_only` path), so the
target serves the checkpoint that the migration copied. For shadow tests and
the drift demo a deployment can serve perturbed weights (`--perturb`) or another dtype
(`--dtype`). Requests marked `X-Skyshift-Shadow` (skyshift's comparisons) are counted apart, so
the cutover judges user traffic only.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError

from activities.checkpoints.compare import load_tensors_from_bytes
from activities.metrics import LATENCY_BUCKETS
from activities.stores import open_store
from skyshift.demo_model import INPUTS, tiny_model
from skyshift.spec.shadow import SHADOW_HEADER
from workers.http import KeepAliveHandler

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
log = logging.getLogger("skyshift.endpoint")


class Faults(BaseModel):
    latency_factor: float = Field(1.0, ge=1.0, le=100.0, description="Multiply service time")
    error_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of requests answered 500: exactly this share, evenly spread"
    )
    output_noise: float = Field(
        0.0, ge=0.0, le=10.0, description="Std-dev of Gaussian noise added to every output (seeded nondeterminism)"
    )


class PredictRequest(BaseModel):
    inputs: list[list[float]] = Field(min_length=1, max_length=256)


def load_model(store_url: str | None, key: str | None, perturb: float = 0.0, dtype: str = "float32",
               seed: int = 0) -> torch.nn.Module:  # fmt: skip
    model = tiny_model()
    if store_url and key:
        state = load_tensors_from_bytes(checkpoint_bytes(store_url, key), f"{store_url}/{key}")
        model.load_state_dict(state)
    return drift(model, perturb, dtype, seed).eval()


def checkpoint_bytes(store_url: str, key: str) -> bytes:
    """The checkpoint's bytes; one kept sealed at rest (plan `encryption.at_rest: sealed`) is decrypted into
    this process's scratch (deleted at once) with the key its repository names: never into the store."""
    from activities.checkpoints.at_rest import decrypted
    from activities.checkpoints.sealed import SEALED_DIR
    from activities.stores import StoreSpec, join_key

    store = open_store(store_url)
    if store.exists(key):
        return store.read_bytes(key)
    for path in (key, key.rpartition("/")[0]):  # sealed as a single file, or its directory
        if path and store.exists(join_key(path, SEALED_DIR, "config.json")):
            with decrypted(StoreSpec(url=store_url), path) as (local, files):
                relative = key[len(path) + 1 :] if key != path else local.name
                if relative not in files and local.name != relative:
                    raise FileNotFoundError(f"{store_url}/{key}: not in the sealed repository at {path}")
                return (local if local.is_file() else local / relative).read_bytes()
    return store.read_bytes(key)  # the store's own error names what is missing


def drift(model: torch.nn.Module, perturb: float = 0.0, dtype: str = "float32", seed: int = 0) -> torch.nn.Module:
    """The same model, slightly off: each weight scaled by (1 + perturb·N(0,1)) (seeded), then cast to
    `dtype`. What a different GPU, kernel or precision does to a deployment, on purpose."""
    if perturb:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(1 + perturb * torch.randn(parameter.shape, generator=generator))
    return model.to(DTYPES[dtype])


class Endpoint:
    def __init__(self, env: str, model: torch.nn.Module, service_ms: float, seed: int = 0) -> None:
        self.env = env
        self.model = model
        self.service_ms = service_ms
        self.faults = Faults()
        self.error_credit = 0.0
        self.noise = torch.Generator().manual_seed(seed)
        self.dtype = next(model.parameters()).dtype
        self.lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter("skyshift_requests", "Inference requests", ["env"], registry=self.registry)
        self.shadow_requests = Counter(
            "skyshift_shadow_requests", "Requests skyshift sent to compare outputs", ["env", "origin"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter("skyshift_request_errors", "Failed inference requests", ["env"], registry=self.registry)
        self.latency = Histogram(
            "skyshift_request_latency_seconds",
            "Request latency",
            ["env"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def _fail_next(self, faults: Faults) -> bool:
        """Exactly `error_rate` of requests fail, evenly spread (like the router's split): a 2% fault
        is 4 of every 200, not "about 4"."""
        self.error_credit += faults.error_rate
        if self.error_credit >= 1:
            self.error_credit -= 1
            return True
        return False

    def predict(self, body: bytes, shadow: str | None = None) -> tuple[int, dict]:
        started = time.perf_counter()
        with self.lock:
            faults = self.faults
            fail = self._fail_next(faults)
        try:
            request = PredictRequest.model_validate_json(body)
            if any(len(row) != INPUTS for row in request.inputs):
                return 400, {"error": f"inputs: each row needs {INPUTS} numbers"}
            with torch.inference_mode():
                logits = self.model(torch.tensor(request.inputs, dtype=self.dtype)).float()
            if faults.output_noise:
                with self.lock:
                    logits = logits + faults.output_noise * torch.randn(logits.shape, generator=self.noise)
            labels = [f"class-{index}" for index in logits.argmax(dim=-1).tolist()]
            # Simulated service time stands in for a real model's; faults scale it.
            spent = time.perf_counter() - started
            time.sleep(max(0.0, self.service_ms / 1000 * faults.latency_factor - spent))
            if fail:
                return 500, {"error": "injected fault"}
            return 200, {"outputs": logits.tolist(), "labels": labels, "served_by": self.env}
        except ValidationError as error:
            return 400, {"error": str(error)}
        finally:
            if shadow:
                self.shadow_requests.labels(self.env, shadow).inc()
            else:
                self.requests.labels(self.env).inc()
                self.latency.labels(self.env).observe(time.perf_counter() - started)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(KeepAliveHandler):
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
                shadow = self.headers.get(SHADOW_HEADER)
                status, payload = endpoint.predict(self._body(), shadow)
                if status >= 500 and not shadow:
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
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for _ in range(rounds):
            model(torch.zeros(1, INPUTS, dtype=dtype))


def serve(env: str, host: str, port: int, model: torch.nn.Module, service_ms: float, faults: Faults | None = None,
          seed: int = 0) -> ThreadingHTTPServer:  # fmt: skip
    warm_up(model)
    endpoint = Endpoint(env, model, service_ms, seed)
    endpoint.faults = faults or Faults()
    server = ThreadingHTTPServer((host, port), endpoint.handler())
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
    parser.add_argument("--perturb", type=float, default=0.0, help="scale weights by 1 + PERTURB·N(0,1) (drift)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="serve in this precision")
    parser.add_argument("--output-noise", type=float, default=0.0, help="std-dev of noise added to every output")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 500")
    parser.add_argument("--seed", type=int, default=0, help="seeds the perturbation and the output noise")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load_stack_env()
    torch.set_num_threads(1)
    faults = Faults(output_noise=args.output_noise, error_rate=args.error_rate)
    model = load_model(args.store, args.checkpoint, args.perturb, args.dtype, args.seed)
    server = serve(args.env, args.host, args.port, model, args.service_ms, faults, args.seed)
    log.info("%s serving on http://%s:%d", args.env, args.host, args.port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
