"""`skyshift sync SRC DST`: one DatasetSyncWorkflow, served by a worker inside this process.

Runs through Temporal (progress, retries and resumption are the workflow's), against the server
in TEMPORAL_ADDRESS / .skyshift/env, or the embedded stack started on demand.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from activities.pricing import default_egress_price
from activities.stores import StoreSpec
from activities.transfer.sync import apply_range, fingerprint_range
from workflows.sync import DatasetSyncWorkflow, SyncInput, SyncResult


def ensure_temporal() -> None:
    """Use the configured server, else start the embedded stack (and say so on stderr)."""
    if os.environ.get("TEMPORAL_ADDRESS"):
        return
    from skyshift.runtime import load_stack_env
    from starters import devstack

    _, started = devstack.up()
    load_stack_env()
    if started:
        print("started the embedded stack for this sync (`skyshift dev down` stops it)", file=sys.stderr)


async def run_sync(client: Client, source: StoreSpec, target: StoreSpec, *, dry_run: bool, delete: bool,
                   egress_price: float | None, show_progress: bool) -> tuple[SyncResult, float]:  # fmt: skip
    queue = f"skyshift.sync-{secrets.token_hex(4)}"
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as executor:
        worker = Worker(client, task_queue=queue, workflows=[DatasetSyncWorkflow],
                        activities=[fingerprint_range, apply_range], activity_executor=executor)  # fmt: skip
        async with worker:
            handle = await client.start_workflow(
                DatasetSyncWorkflow.run,
                SyncInput(source=source, target=target, source_queue=queue, target_queue=queue, delete=delete,
                          dry_run=dry_run,
                          egress_per_gb_usd=default_egress_price(source.url) if egress_price is None else egress_price),
                id=f"sync-{secrets.token_hex(4)}",
                task_queue=queue,
                static_summary=f"sync {source.url} → {target.url}{' (dry run)' if dry_run else ''}",
            )  # fmt: skip
            result_task = asyncio.ensure_future(handle.result())
            while not result_task.done():
                await asyncio.wait([result_task], timeout=1.0)
                if show_progress and not result_task.done():
                    progress = await handle.query(DatasetSyncWorkflow.progress)
                    t = progress.totals
                    print(f"  {t.objects_total} objects checked, {t.objects_changed} changed, "
                          f"{t.bytes_transferred / 1e6:,.1f} MB sent so far", file=sys.stderr)  # fmt: skip
            return result_task.result(), time.monotonic() - started


def result_json(result: SyncResult, seconds: float) -> dict:
    t = result.totals
    return {
        "source": result.source,
        "target": result.target,
        "dry_run": result.dry_run,
        "objects_total": t.objects_total,
        "objects_changed": t.objects_changed,
        "objects_deleted": t.objects_deleted,
        "bytes_total": t.bytes_total,
        "bytes_transferred": t.bytes_transferred,
        "chunks_total": t.chunks_total,
        "chunks_transferred": t.chunks_transferred,
        "chunks_reused": t.chunks_reused,
        "egress_bytes": result.egress_bytes,
        "egress_cost_usd": result.egress_cost_usd,
        "fingerprint_bytes_read": result.fingerprint_bytes_read,
        "seconds": round(seconds, 3),
        "verified": result.verified,
    }
