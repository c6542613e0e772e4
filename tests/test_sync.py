"""`skyshift sync` through Temporal in all six directions, corruption in transit, and a killed worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from temporalio.client import WorkflowHandle

from activities.stores import StoreSpec, open_store
from bench.faultproxy import FaultProxy
from starters.cli import main
from tests.conftest import free_port, running_workers
from tests.engine import sync
from tests.helpers import suffix
from workflows.plan import CONTROL_TASK_QUEUE, task_queue_for
from workflows.sync import DatasetSyncWorkflow, SyncInput

pytestmark = pytest.mark.stack
MiB = 1 << 20


@pytest.fixture
def urls(tmp_path, s3_bucket, gcs_bucket, client) -> dict[str, str]:
    """Stores in each backend; `client` makes `skyshift sync` use the session's Temporal server."""
    return {"local": f"file://{tmp_path}/local", "s3": f"s3://{s3_bucket}/data", "gcs": f"gs://{gcs_bucket}/data"}


DIRECTIONS = [("local", "s3"), ("s3", "local"), ("local", "gcs"), ("gcs", "local"), ("s3", "gcs"), ("gcs", "s3")]


@pytest.mark.parametrize(("src", "dst"), DIRECTIONS, ids=[f"{a}-to-{b}" for a, b in DIRECTIONS])
async def test_cli_sync_in_every_direction_is_exact_and_incremental(urls, src, dst, capsys):
    source, target = open_store(urls[src]), open_store(urls[dst])
    files = {"ds/big.bin": os.urandom(20 * MiB + 123), "ds/small.txt": b"hello", "ds/sub/empty.bin": b""}
    for key, data in files.items():
        source.put_bytes(key, data)
    assert await asyncio.to_thread(main, ["sync", urls[src], urls[dst], "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (
        first["objects_changed"] == 3
        and first["verified"]
        and first["bytes_transferred"] == sum(map(len, files.values()))
    )
    assert {k: target.read_bytes(k) for k in files} == files

    files["ds/big.bin"] = files["ds/big.bin"][: 10 * MiB] + b"edited in place" + files["ds/big.bin"][10 * MiB + 15 :]
    source.put_bytes("ds/big.bin", files["ds/big.bin"])
    assert await asyncio.to_thread(main, ["sync", urls[src], urls[dst], "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["objects_changed"] == 1 and second["bytes_transferred"] <= 3 * MiB
    assert set(second) >= {"objects_total", "objects_changed", "bytes_total", "bytes_transferred", "chunks_total",
                           "chunks_transferred", "egress_cost_usd", "seconds", "verified"}  # fmt: skip
    assert {k: target.read_bytes(k) for k in files} == files


async def test_dry_run_prints_the_cost_and_moves_nothing(urls, capsys):
    open_store(urls["s3"]).put_bytes("x/a.bin", os.urandom(3 * MiB))
    assert await asyncio.to_thread(main, ["sync", urls["s3"], urls["gcs"], "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["dry_run"] and planned["bytes_transferred"] == 3 * MiB
    assert planned["egress_cost_usd"] == pytest.approx(3 * MiB / 1e9 * 0.09, rel=1e-3)
    assert [o.key for o in open_store(urls["gcs"]).list("x")] == []


class CorruptingProxy:
    """A real HTTP proxy in front of moto that flips one byte in the first `times` ranged GETs."""

    def __init__(self, upstream: str, times: int) -> None:
        self.upstream, self.left = upstream, times
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                body = (
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    if self.command in ("PUT", "POST")
                    else None
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                request = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command,
                                                 headers=headers)  # fmt: skip
                try:
                    with urllib.request.urlopen(request) as response:
                        status, headers, payload = response.status, response.getheaders(), response.read()
                except urllib.error.HTTPError as error:
                    status, headers, payload = error.code, error.headers.items(), error.read()
                if status == 206 and proxy.left > 0 and payload:
                    proxy.left -= 1
                    payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


def test_a_chunk_corrupted_in_transit_is_refetched_and_never_committed(s3_bucket, s3_endpoint, tmp_path):
    data = os.urandom(3 * MiB)
    open_store(f"s3://{s3_bucket}/d").put_bytes("ds/a.bin", data)
    sync(f"s3://{s3_bucket}/d", f"file://{tmp_path}/warm")  # fingerprint the source through the real endpoint
    proxy = CorruptingProxy(s3_endpoint, times=1)
    try:
        source = StoreSpec(url=f"s3://{s3_bucket}/d", endpoint=proxy.url)
        totals = _sync_spec(source, f"file://{tmp_path}/once")
        assert totals.chunks_refetched >= 1
        assert open_store(f"file://{tmp_path}/once").read_bytes("ds/a.bin") == data
        proxy.left = 10**6  # now every ranged read is corrupted: nothing may be committed
        never = _sync_spec(source, f"file://{tmp_path}/never")
        assert never.objects_skipped == 1 and never.objects_changed == 0
        assert not any((tmp_path / "never").rglob("a.bin"))
    finally:
        proxy.close()


def _sync_spec(source: StoreSpec, target: str):
    from tests.engine import sync_specs

    return sync_specs(source, StoreSpec(url=target))[0]


async def test_a_worker_killed_mid_object_resumes_and_resends_under_10_percent(
    client, s3_endpoint, s3_bucket, tmp_path
):
    size = 128 * MiB
    open_store(f"s3://{s3_bucket}/big").put_bytes("ds/huge.bin", os.urandom(size))
    # Counts every byte the source serves (what crossed, exactly) and paces it like a cross-region link,
    # so the kill lands mid-object.
    proxy = FaultProxy(s3_endpoint, bytes_per_s=32 * MiB)
    source = StoreSpec(url=f"s3://{s3_bucket}/big", endpoint=proxy.url)
    target = f"file://{tmp_path}/dst"
    env = f"killme-{suffix()}"
    request = SyncInput(source=source, target=StoreSpec(url=target), source_queue=task_queue_for(env),
                        target_queue=task_queue_for(env), heartbeat_timeout_s=5)  # fmt: skip
    worker_env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host,
                  "SKYSHIFT_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    command = [sys.executable, "-m", "workers.main", "--env", env]
    try:
        async with running_workers(client):
            handle = await client.start_workflow(DatasetSyncWorkflow.run, request, id=f"resume-{suffix()}",
                                                 task_queue=CONTROL_TASK_QUEUE)  # fmt: skip
            first = await asyncio.create_subprocess_exec(*command, env=worker_env, stderr=subprocess.DEVNULL)
            try:
                parts_before_kill = await _wait_for_parts(handle, at_least=3)
            finally:
                first.send_signal(signal.SIGKILL)
                await first.wait()
            second = await asyncio.create_subprocess_exec(*command, env=worker_env, stderr=subprocess.DEVNULL)
            try:
                result = await asyncio.wait_for(handle.result(), timeout=240)
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.wait_for(second.wait(), timeout=60)
    finally:
        proxy.close()
    assert open_store(target).info("ds/huge.bin").size == size and result.verified
    resent = proxy.counters.bytes_served - 2 * size  # read once to fingerprint, once to copy
    assert parts_before_kill >= 3
    assert 0 <= resent < size * 0.10, f"re-sent {resent / MiB:.1f} MiB of {size / MiB:.0f} MiB after the kill"
    assert list(open_store(target).metadata.list("uploads")) == [], "the resumed upload leaves nothing behind"
    totals = result.totals  # what crossed, whichever attempt sent it: all of it, and little twice
    assert size <= totals.bytes_transferred < size * 1.10, totals
    assert totals.chunks_total <= totals.chunks_transferred < totals.chunks_total * 1.10, totals


async def _wait_for_parts(handle: WorkflowHandle, at_least: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.activity_type.name == "apply_batch" and pending.heartbeat_details.payloads:
                details = json.loads(pending.heartbeat_details.payloads[0].data)
                parts = max((len(p["parts"]) for p in details.get("in_flight", [])), default=0)
                if parts >= at_least:
                    return parts
        await asyncio.sleep(0.05)
    raise AssertionError("the transfer never reported progress")


async def test_a_long_sync_continues_as_new_and_keeps_every_history_small(client, tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    store = open_store(source)
    for i in range(30):
        store.put_bytes(f"ds/obj-{i:03d}.bin", os.urandom(1000))
    env = f"can-{suffix()}"
    request = SyncInput(source=StoreSpec(url=source), target=StoreSpec(url=target), source_queue=task_queue_for(env),
                        target_queue=task_queue_for(env), batch_objects=2, max_history_events=40)  # fmt: skip
    async with running_workers(client, env):
        handle = await client.start_workflow(DatasetSyncWorkflow.run, request, id=f"can-{suffix()}",
                                             task_queue=CONTROL_TASK_QUEUE)  # fmt: skip
        result = await handle.result()
        lengths = []
        async for execution in client.list_workflows(f'WorkflowId="{handle.id}"'):
            history = await client.get_workflow_handle(handle.id, run_id=execution.run_id).fetch_history()
            lengths.append(len(history.events))
    assert result.totals.objects_changed == 30 and result.batches == 15
    assert result.runs > 1 and len(lengths) == result.runs
    assert max(lengths) < 80, lengths
    assert sorted(o.key for o in open_store(target).list("ds")) == [f"ds/obj-{i:03d}.bin" for i in range(30)]
