"""`skyshift sync SRC DST`: one DatasetSyncWorkflow, served by a worker inside this process.

Runs through Temporal (progress, retries and resumption are the workflow's), against the server
in TEMPORAL_ADDRESS / .skyshift/env, or the embedded stack started on demand.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from activities.pricing import default_egress_price
from activities.stores import StoreSpec
from activities.transfer.sync import apply_range, fingerprint_range
from starters.common import EXIT_FAILED, EXIT_OK, UsageError, emit, with_client
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


def cmd_sync(args: argparse.Namespace) -> int:
    specs = []
    for name, url in (("SRC", args.src), ("DST", args.dst)):
        try:
            specs.append(StoreSpec(url=url))
        except ValidationError as error:
            raise UsageError(f"sync {name}: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    source, target = specs
    ensure_temporal()
    # The in-process worker logs each failed attempt with a traceback; the CLI reports the cause itself.
    logging.getLogger("temporalio").setLevel(logging.ERROR)

    async def go(args: argparse.Namespace, client: Client) -> int:
        try:
            result, seconds = await run_sync(client, source, target, dry_run=args.dry_run, delete=args.delete,
                                             egress_price=args.egress_price, show_progress=not args.json)  # fmt: skip
        except WorkflowFailureError as error:
            cause = error.cause
            while getattr(cause, "cause", None) is not None:
                cause = cause.cause
            print(f"skyshift: sync failed: {getattr(cause, 'message', cause)}", file=sys.stderr)
            return EXIT_FAILED
        payload = result_json(result, seconds)
        verb = "would send" if args.dry_run else "sent"
        text = (
            f"{payload['objects_changed']}/{payload['objects_total']} objects changed; {verb} "
            f"{payload['chunks_transferred']}/{payload['chunks_total']} chunks, "
            f"{payload['bytes_transferred'] / 1e6:,.1f} MB of {payload['bytes_total'] / 1e6:,.1f} MB "
            f"(egress ${payload['egress_cost_usd']:.4f}) in {seconds:.1f}s"
        )
        emit(args, payload, text + ("" if args.dry_run else "; every chunk BLAKE3-verified"))
        return EXIT_OK

    return with_client(go)(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    sync = sub.add_parser("sync", help="delta-sync SRC to DST: only changed chunks cross (file://, s3://, gs://)")
    sync.set_defaults(handler=cmd_sync)
    sync.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sync.add_argument("src")
    sync.add_argument("dst")
    sync.add_argument("--dry-run", action="store_true", help="report what would move and its cost; move nothing")
    sync.add_argument("--delete", action="store_true", help="delete target objects missing at the source")
    sync.add_argument("--egress-price", type=float, help="USD per GB leaving the source (default: provider list price)")
