"""`skyshift sync SRC DST`: one DatasetSyncWorkflow, served by a worker inside this process.

Runs through Temporal (progress, retries and resumption are the workflow's), against the server
in TEMPORAL_ADDRESS / .skyshift/env, or the embedded stack started on demand.

The workflow id and task queue derive from the source, the target and the options, so running the
same command again after a crash *adopts* the sync that was running: the new process serves its
queue, the killed attempt's activity times out on its heartbeat and resumes here from the upload
records and this machine's manifest cache. A sync nobody adopts fails after `--abandon-after`
seconds instead of staying Running forever (its uploads stay resumable by a later run).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import blake3
from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.pricing import default_egress_price
from activities.stores import StoreSpec
from activities.stores.base import overlap
from activities.transfer.sync import apply_batch, check_source, fingerprint_batch, finish_sync
from starters.common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, UsageError, emit, ensure_readable_history, with_client
from starters.reconnect import patiently, unreachable
from starters.render import SyncProgress
from workflows.sync import DatasetSyncWorkflow, SyncInput, SyncResult

#: Heartbeats of a CLI sync: short, so a rerun after a SIGKILL resumes within seconds.
CLI_HEARTBEAT_S = 15


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


def sync_id(request: SyncInput) -> str:
    """The same command names the same sync: what a rerun adopts."""
    parts = [request.source.url, request.source.endpoint, request.target.url, request.target.endpoint,
             request.path, request.delete, request.dry_run]  # fmt: skip
    identity = "|".join(str(part or "") for part in parts)
    return f"sync-{blake3.blake3(identity.encode()).hexdigest()[:20]}"


def parse_max_delete(text: str | None) -> tuple[int | None, float | None]:
    """`--max-delete 500` (objects) or `--max-delete 25%` (of the target's objects); default 10%."""
    if text is None:
        return None, 10.0
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
    if not match or (match.group(2) and float(match.group(1)) > 100) or (not match.group(2) and "." in text):
        raise UsageError(f"--max-delete: {text!r} is not a count (e.g. 500) or a percentage (e.g. 25%)")
    return (None, float(match.group(1))) if match.group(2) else (int(match.group(1)), None)


async def _progress(handle: WorkflowHandle) -> tuple[int, int]:
    """(objects written, bytes sent): the workflow's totals plus the heartbeats of the ranges in flight."""
    progress = await handle.query(DatasetSyncWorkflow.progress)
    changed, sent = progress.totals.objects_changed, progress.totals.bytes_transferred
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            details = await handle._client.data_converter.decode(pending.heartbeat_details.payloads)
            if details and isinstance(details[-1], dict):
                changed += details[-1].get("objects_changed", 0)
                sent += details[-1].get("bytes", 0)
    return changed, sent


async def run_sync(client: Client, request: SyncInput, *, show_progress: bool,
                   abandon_after_s: int = 120) -> tuple[SyncResult, float]:  # fmt: skip
    workflow_id = sync_id(request)
    queue = f"skyshift.{workflow_id}"
    request = request.model_copy(
        update={
            "source_queue": queue,
            "target_queue": queue,
            "heartbeat_timeout_s": CLI_HEARTBEAT_S,
            "abandon_after_s": abandon_after_s,
        }
    )
    await ensure_readable_history(client, workflow_id)  # adopting an encrypted sync needs its key
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as executor:
        worker = Worker(client, task_queue=queue, workflows=[DatasetSyncWorkflow],
                        activities=[check_source, fingerprint_batch, apply_batch, finish_sync],
                        activity_executor=executor, max_concurrent_activities=16,
                        max_heartbeat_throttle_interval=timedelta(seconds=3))  # fmt: skip
        async with worker:
            handle = await client.start_workflow(
                DatasetSyncWorkflow.run, request, id=workflow_id, task_queue=queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"sync {request.source.url} → {request.target.url}" + (" (dry run)" * request.dry_run),
            )  # fmt: skip
            result_task = asyncio.ensure_future(patiently(handle.result, "waiting for the sync"))
            live = SyncProgress(f"sync {request.source.url} → {request.target.url}") if show_progress else None
            try:
                while not result_task.done():
                    await asyncio.wait([result_task], timeout=0.5)
                    if live is not None and not result_task.done():
                        try:
                            changed, sent = await _progress(handle)
                        except RPCError as error:
                            if not unreachable(error):
                                raise
                            continue  # the result's wait says so and retries; progress shows again after
                        live.update(objects_done=changed, objects_total=None, bytes_done=sent, bytes_total=None)
            finally:
                if live is not None:
                    live.close()
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
        "objects_skipped": t.objects_skipped,
        "objects_verified": t.objects_verified,
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
        "skipped": [s.model_dump() for s in result.skipped],
        "changed": result.changed,
        "deletable": result.deletable,
        "deletable_examples": result.deletable_examples,
        "kept_changed": result.kept_changed,
        "kept_changed_count": result.kept_changed_count,
    }


def _text(result: SyncResult, payload: dict, seconds: float) -> str:
    verb = "would send" if result.dry_run else "sent"
    lines = [
        f"{payload['objects_changed']}/{payload['objects_total']} objects changed; {verb} "
        f"{payload['chunks_transferred']}/{payload['chunks_total']} chunks, "
        f"{payload['bytes_transferred'] / 1e6:,.1f} MB of {payload['bytes_total'] / 1e6:,.1f} MB "
        f"(egress ${payload['egress_cost_usd']:.4f}) in {seconds:.1f}s"
        + ("" if result.dry_run else f"; {payload['objects_verified']} objects verified against the source's root")
    ]
    if result.dry_run:
        lines += [f"  would write  {key}" for key in result.changed]
        if result.deletable:
            lines += [f"  would delete {key}" for key in result.deletable_examples]
            lines.append(f"  {result.deletable} objects would be deleted (with --delete)")
    elif result.totals.objects_deleted:
        lines.append(f"deleted {result.totals.objects_deleted} objects the source no longer has")
    return "\n".join(lines)


def check_target_residency(target: StoreSpec, args: argparse.Namespace) -> None:
    """Ask the target's API where it is before anything is written: outside the allowed regions is exit 2."""
    from activities.residency import check_residency
    from activities.stores import StoreError

    allowed = [r.strip() for r in (args.allowed_regions or "").split(",") if r.strip()]
    try:
        check = check_residency(target, allowed, args.target_region)
    except StoreError as error:
        raise UsageError(f"--allowed-regions: cannot read where the target is: {error}") from None
    if not check.ok:
        raise UsageError(f"residency: {check.detail}; nothing was copied")


def egress_from_book(source: StoreSpec, target: StoreSpec, files: list[str]) -> float:
    """The egress price from the operator's price files, where the stores' APIs say they are; said on stderr."""
    from activities.pricing import PriceBook, PriceError, load_price_file
    from activities.pricing.store_egress import egress_between
    from activities.stores import StoreError

    try:
        book = PriceBook()
        for path in files:
            book = book.merged(load_price_file(path))
        price = egress_between(book, source, target)
    except (PriceError, StoreError) as error:
        raise UsageError(str(error)) from None
    print(f"egress ${price.usd_per_gb:g}/GB from {price.source}", file=sys.stderr)
    return price.usd_per_gb


def cmd_sync(args: argparse.Namespace) -> int:
    specs = []
    for name, url in (("SRC", args.src), ("DST", args.dst)):
        try:
            specs.append(StoreSpec(url=url))
        except ValidationError as error:
            raise UsageError(f"sync {name}: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    source, target = specs
    if (why := overlap(source, target)) is not None:
        raise UsageError(f"sync: source and target overlap ({why}); a sync into itself would copy without end "
                         "or delete its own source")  # fmt: skip
    max_delete, max_delete_percent = parse_max_delete(args.max_delete)
    if (args.max_delete or args.force) and not args.delete:
        raise UsageError("--max-delete and --force only apply with --delete")
    if args.allowed_regions or args.target_region:
        check_target_residency(target, args)
    egress = default_egress_price(source.url) if args.egress_price is None else args.egress_price
    if args.prices and args.egress_price is None:
        egress = egress_from_book(source, target, args.prices)
    request = SyncInput(source=source, target=target, source_queue="", target_queue="", delete=args.delete,
                        dry_run=args.dry_run, egress_per_gb_usd=egress, window=args.window, max_delete=max_delete,
                        max_delete_percent=max_delete_percent, force_delete=args.force)  # fmt: skip
    ensure_temporal()
    # The in-process worker logs each failed attempt with a traceback; the CLI reports the cause itself.
    logging.getLogger("temporalio").setLevel(logging.CRITICAL)

    async def go(args: argparse.Namespace, client: Client) -> int:
        try:
            result, seconds = await run_sync(client, request, show_progress=not args.json,
                                             abandon_after_s=args.abandon_after)  # fmt: skip
        except WorkflowFailureError as error:
            cause = error.cause
            while getattr(cause, "cause", None) is not None:
                cause = cause.cause
            message = getattr(cause, "message", None) or str(cause)
            if args.json:
                print(__import__("json").dumps({"error": message, "source": source.url, "target": target.url}))
            print(f"skyshift: sync failed: {message}", file=sys.stderr)
            return EXIT_INVALID if getattr(cause, "type", "") == "DeleteBoundExceeded" else EXIT_FAILED
        payload = result_json(result, seconds)
        emit(args, payload, _text(result, payload, seconds))
        if result.totals.objects_skipped:
            print(f"skyshift: {result.totals.objects_skipped} objects were not synced:", file=sys.stderr)
            for skipped in result.skipped:
                print(f"  {skipped.key!r}: {skipped.reason}", file=sys.stderr)
            return EXIT_FAILED
        if result.kept_changed_count:
            print(f"skyshift: {result.kept_changed_count} objects were not deleted: they changed at the target "
                  "after the sync listed them (rerun to decide again):", file=sys.stderr)  # fmt: skip
            for key in result.kept_changed:
                print(f"  {key!r}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

    return with_client(go)(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    sync = sub.add_parser(
        "sync", help="delta-sync SRC to DST: only changed chunks cross (file://, s3://, gs://)",
        description="Make DST equal to SRC. Only chunks DST lacks cross; every object is verified against the "
        "source's BLAKE3 root before it is committed. SRC is only read. Rerunning the same command resumes it.",
    )  # fmt: skip
    sync.set_defaults(handler=cmd_sync)
    sync.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sync.add_argument("src", help="file:///path, s3://bucket/prefix or gs://bucket/prefix (read only)")
    sync.add_argument("dst", help="file:///path, s3://bucket/prefix or gs://bucket/prefix")
    sync.add_argument("--dry-run", action="store_true", help="list what would be written and deleted; move nothing")
    sync.add_argument("--delete", action="store_true", help="delete target objects missing at the source (last)")
    sync.add_argument("--max-delete", metavar="LIMIT",
                      help="with --delete: refuse to delete more than LIMIT objects (500) or share of the target "
                      "(25%%); default 10%%")  # fmt: skip
    sync.add_argument("--force", action="store_true", help="with --delete: delete beyond the --max-delete bound")
    sync.add_argument("--allowed-regions", metavar="R1,R2",
                      help="refuse unless the target's API says it is in one of these regions (S3 GetBucketLocation, "
                      "the GCS bucket's location)")  # fmt: skip
    sync.add_argument("--target-region", metavar="REGION",
                      help="refuse unless the target's API says it is in exactly this region (the plan's)")  # fmt: skip
    sync.add_argument("--prices", action="append", metavar="FILE",
                      help="price egress from these price files for the stores' real regions")  # fmt: skip
    sync.add_argument("--egress-price", type=float, help="USD per GB leaving the source (default: provider list price)")
    sync.add_argument("--window", type=int, default=4, help="key ranges applied at once (default 4)")
    sync.add_argument("--abandon-after", type=int, default=120, metavar="SECONDS",
                      help="a sync whose worker died fails after this long without one (default 120)")  # fmt: skip
