"""Interrupt latency: a migration is rolled back (or cancelled) while its sync is moving data.

How long from the operator's request to the first compensation, and to the workflow's close; and
does any object appear at the target after the migration closed? Runs the real pieces on the
embedded stack (`skyshift dev up`): in-process workers, moto S3 behind a proxy adding cross-region
latency to every request (so the sync is still running when the request comes), GCS as target.
Times come from the workflow's history (event times), not from polling.

    python -m bench.interrupt_latency [--runs 5] [--how rollback|cancel] [--latency 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import uuid
from datetime import datetime


def _at(event) -> datetime:
    return event.event_time.ToDatetime()


async def one_run(client, how: str, latency: float, objects: int) -> tuple[float, float, int]:
    from activities.stores import open_store
    from bench.faultproxy import FaultProxy
    from starters.operate import start_migration
    from starters.seed import ensure_bucket
    from tests.conftest import running_workers
    from tests.helpers import plan_data, suffix
    from workflows.migration import MigrationWorkflow
    from workflows.plan import parse_plan
    from workflows.state import RollbackInput

    tag = uuid.uuid4().hex[:8]
    source, target = f"s3://il-src-{tag}/ml", f"gs://il-dst-{tag}/ml"
    ensure_bucket(source)
    ensure_bucket(target)
    store = open_store(source)
    for i in range(objects):
        store.put_bytes(f"datasets/corpus/obj-{i:05d}.bin", os.urandom(1000 + i))
    proxy = FaultProxy(os.environ["AWS_ENDPOINT_URL_S3"], latency_s=latency)
    data = plan_data(suffix(), source, target, workloads={"datasets": [{"name": "corpus", "path": "datasets/corpus"}],
                                                          "checkpoints": []})  # fmt: skip
    data["environments"][0]["storage"]["endpoint"] = proxy.url
    plan = parse_plan(data)
    try:
        async with running_workers(client, plan.source, plan.target):
            handle = await start_migration(client, plan)
            child = client.get_workflow_handle(f"{handle.id}-poc-sync-corpus")
            while True:  # until the sync is moving data
                try:
                    pending = (await child.describe()).raw_description.pending_activities
                    if any(p.activity_type.name in ("fingerprint_batch", "apply_batch") for p in pending):
                        break
                except Exception:  # the child does not exist yet
                    pass
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # well inside it
            if how == "cancel":
                await handle.cancel()
            else:
                await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="benchmark", by="bench"))
            with contextlib.suppress(Exception):  # a cancelled workflow raises; its history is what we read
                await handle.result()
            closed_listing = {o.key for o in open_store(target).list()}
    finally:
        proxy.close()
    await asyncio.sleep(5)  # anything still writing would show up now
    late = len({o.key for o in open_store(target).list()} - closed_listing)
    events = [e async for e in handle.fetch_history_events()]
    asked = next(e for e in events if e.HasField("workflow_execution_signaled_event_attributes")
                 or e.HasField("workflow_execution_cancel_requested_event_attributes"))  # fmt: skip
    undo = next(e for e in events if e.HasField("activity_task_scheduled_event_attributes") and _at(e) > _at(asked)
                and e.activity_task_scheduled_event_attributes.activity_type.name == "remove_created")  # fmt: skip
    return (_at(undo) - _at(asked)).total_seconds(), (_at(events[-1]) - _at(asked)).total_seconds(), late


async def main(runs: int, how: str, latency: float, objects: int) -> None:
    from skyshift.runtime import connect, load_stack_env
    from starters import devstack

    devstack.up()
    load_stack_env()
    client = await connect()
    to_undo, to_close, late = [], [], 0
    for run in range(runs):
        undo, close, appeared = await one_run(client, how, latency, objects)
        to_undo.append(undo)
        to_close.append(close)
        late += appeared
        print(f"run {run + 1}: {how} → first undo {undo:.2f} s, closed {close:.2f} s, objects after close {appeared}",
              flush=True)  # fmt: skip
    print(f"{how} during a sync ({runs} runs, {latency * 1000:.0f} ms per source request): request → first undo "
          f"median {statistics.median(to_undo):.2f} s, max {max(to_undo):.2f} s; → closed median "
          f"{statistics.median(to_close):.2f} s, max {max(to_close):.2f} s; objects written after close: "
          f"{late}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--how", choices=["rollback", "cancel"], default="rollback")
    parser.add_argument("--latency", type=float, default=0.25, help="seconds added to every source request")
    parser.add_argument("--objects", type=int, default=400)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.runs, args.how, args.latency, args.objects)))
