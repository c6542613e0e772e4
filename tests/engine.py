"""Run the delta engine's activities directly (no workflow), as the two workers would."""

from __future__ import annotations

import uuid

from temporalio.testing import ActivityEnvironment

from activities.stores import StoreSpec
from activities.transfer.delta import Totals
from activities.transfer.sync import (
    AppliedBatch,
    ApplyBatchInput,
    BatchInput,
    FinishInput,
    apply_batch,
    fingerprint_batch,
    finish_sync,
)


def sync_batches(source: str, target: str, path: str = "", batch: int = 500,
                 **options) -> tuple[Totals, int, list[AppliedBatch]]:  # fmt: skip
    """Sync every range, then finish; return the totals, the source bytes read to fingerprint and each batch."""
    return sync_specs(StoreSpec(url=source), StoreSpec(url=target), path, batch, **options)


def sync_specs(src: StoreSpec, dst: StoreSpec, path: str = "", batch: int = 500, *, inline_bytes: int = 0,
               heartbeats: list | None = None, **options) -> tuple[Totals, int, list[AppliedBatch]]:  # fmt: skip
    """`inline_bytes`: small objects' bytes handed over with their range; `heartbeats`: collects every
    heartbeat's last detail."""
    env, after, totals, read, batches = ActivityEnvironment(), None, Totals(), 0, []
    if heartbeats is not None:
        env.on_heartbeat = lambda *details: heartbeats.append(details[-1])
    sync_id = f"test-{uuid.uuid4().hex[:8]}"
    delete = options.get("delete", False)
    stamp = f"{uuid.uuid1().time:020d}"  # a later sync's ledger entries sort after an earlier one's
    while True:
        scanned = env.run(fingerprint_batch, BatchInput(source=src, target=dst, sync=sync_id, batch=len(batches),
                                                        path=path, after=after, max_objects=batch,
                                                        inline_bytes=inline_bytes))  # fmt: skip
        applied = env.run(apply_batch, ApplyBatchInput(source=src, target=dst, sync=sync_id, batch=len(batches),
                                                       staging_key=scanned.staging_key, path=path, after=after,
                                                       through=None if scanned.done else scanned.last_key,
                                                       ledger_stamp=f"{stamp}-{len(batches):08d}",
                                                       **options))  # fmt: skip
        batches.append(applied)
        totals = totals.add(applied.totals).add(Totals(metadata_bytes=scanned.metadata_bytes))
        read += scanned.bytes_read
        after = scanned.last_key or after
        if scanned.done:
            break
    deletable = sum(b.deletable for b in batches)
    finished = env.run(finish_sync, FinishInput(target=dst, sync=sync_id, batches=len(batches), delete=delete,
                                                dry_run=options.get("dry_run", False), deletable=deletable,
                                                target_objects=sum(b.target_objects for b in batches),
                                                max_delete_percent=None))  # fmt: skip
    return totals.add(Totals(objects_deleted=finished.deleted)), read, batches


def sync(source: str, target: str, path: str = "", **options) -> tuple[Totals, int]:
    """Sync every range; return the totals and the source bytes read to fingerprint."""
    totals, read, _ = sync_batches(source, target, path, **options)
    return totals, read
