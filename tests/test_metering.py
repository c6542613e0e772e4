"""Every byte that crossed is metered once, whatever crashed (issue 23).

Before: a target worker SIGKILLed mid-sync lost from `bytes_transferred` the objects its killed attempt
had committed after its last delivered heartbeat (heartbeats are throttled): a 192 MiB sync reported
96 MiB. Here a worker is killed once several objects are committed, another finishes the sync, and
the total must cover every byte of the dataset once (re-sent bytes of the object in flight aside).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from activities.stores import StoreSpec, open_store
from bench.faultproxy import FaultProxy
from tests.conftest import running_workers
from tests.helpers import suffix
from workflows.plan import CONTROL_TASK_QUEUE, task_queue_for
from workflows.sync import DatasetSyncWorkflow, SyncInput

pytestmark = pytest.mark.stack
MiB = 1 << 20


def _committed(target: str) -> int:
    return sum(1 for o in open_store(target).list("") if o.key.startswith("ds/"))


async def test_a_killed_target_worker_keeps_the_bytes_it_committed_in_the_count(
    client, s3_endpoint, s3_bucket, tmp_path
):
    objects, size = 24, 2 * MiB
    bodies = {f"ds/shard-{i:02d}.bin": os.urandom(size) for i in range(objects)}
    for key, body in bodies.items():
        open_store(f"s3://{s3_bucket}/m").put_bytes(key, body)
    proxy = FaultProxy(s3_endpoint, bytes_per_s=12 * MiB)  # the kill lands with objects committed and to come
    source = StoreSpec(url=f"s3://{s3_bucket}/m", endpoint=proxy.url)
    target = f"file://{tmp_path}/dst"
    env = f"meter-{suffix()}"
    request = SyncInput(source=source, target=StoreSpec(url=target), source_queue=task_queue_for(env),
                        target_queue=task_queue_for(env), heartbeat_timeout_s=5)  # fmt: skip
    worker_env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host,
                  "SKYSHIFT_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    command = [sys.executable, "-m", "workers.main", "--env", env]
    try:
        async with running_workers(client):
            handle = await client.start_workflow(DatasetSyncWorkflow.run, request, id=f"meter-{suffix()}",
                                                 task_queue=CONTROL_TASK_QUEUE)  # fmt: skip
            first = await asyncio.create_subprocess_exec(*command, env=worker_env, stderr=subprocess.DEVNULL)
            try:
                while _committed(target) < objects // 3:
                    assert first.returncode is None
                    await asyncio.sleep(0.02)
            finally:
                first.send_signal(signal.SIGKILL)
                await first.wait()
            killed_at = _committed(target)
            second = await asyncio.create_subprocess_exec(*command, env=worker_env, stderr=subprocess.DEVNULL)
            try:
                result = await asyncio.wait_for(handle.result(), timeout=240)
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.wait_for(second.wait(), timeout=60)
    finally:
        proxy.close()
    assert 0 < killed_at < objects
    assert {k: open_store(target).read_bytes(k) for k in bodies} == bodies and result.verified
    total = objects * size
    sent = result.totals.bytes_transferred
    assert total <= sent < total * 1.15, f"{sent / MiB:.1f} MiB metered for {total / MiB:.0f} MiB moved"
    assert result.totals.objects_changed == objects
