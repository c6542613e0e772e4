"""Copy a workload's objects from the source store to the target store, verified end to end.

Runs on the *target* environment's worker: it pulls from the source, so only the target side
needs write credentials for the target store. Before anything is written, the keys this copy will
create are recorded in a ledger object at the target; the compensation deletes exactly those, so a
rollback never touches data that was there before the migration.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.stores import ObjectInfo, Store, StoreSpec, join_key, open_store
from activities.transfer.hashing import hash_object, hash_stream

INTERNAL_PREFIX = ".skyshift/"


class CopyInput(BaseModel):
    migration_id: str
    workload: str
    path: str = Field(description="Prefix of the workload inside both stores")
    source: StoreSpec
    target: StoreSpec
    source_env: str
    target_env: str
    egress_per_gb_usd: float = Field(ge=0)


class CopyResult(BaseModel):
    workload: str
    objects_total: int
    objects_copied: int
    objects_unchanged: int
    bytes_total: int
    bytes_copied: int
    egress_bytes: int = Field(description="Bytes read from the source across the environment boundary")
    egress_cost_usd: float
    verified: bool
    ledger_key: str
    seconds: float


class LedgerInput(BaseModel):
    target: StoreSpec
    ledger_key: str


class CopyProgress(BaseModel):
    """Heartbeat details: where a retried attempt resumes."""

    next_index: int = 0
    objects_copied: int = 0
    objects_unchanged: int = 0
    bytes_copied: int = 0
    egress_bytes: int = 0


def ledger_key(migration_id: str, workload: str) -> str:
    return join_key(INTERNAL_PREFIX, "ledger", migration_id, f"{workload}.json")


def list_workload(store: Store, path: str) -> list[ObjectInfo]:
    return [o for o in store.list(path) if not o.key.startswith(INTERNAL_PREFIX)]


def _write_ledger(target: Store, key: str, created: list[str]) -> None:
    """Merge keys into the ledger: a retried attempt must not forget what an earlier one created."""
    existing: list[str] = []
    if target.exists(key):
        existing = json.loads(target.read_bytes(key))["created"]
    merged = sorted(set(existing) | set(created))
    target.put_bytes(key, json.dumps({"created": merged}).encode())


def _copy_one(source: Store, target: Store, obj: ObjectInfo, scratch: Path) -> tuple[bool, int]:
    """Copy one object unless the target already holds identical bytes; return (copied, bytes read)."""
    temp = scratch / "object"
    with open(temp, "wb") as sink, source.open_read(obj.key) as stream:
        digest, size = hash_stream(stream, sink.write)
    existing = target.info(obj.key)
    if existing is not None and existing.size == size and hash_object(target, obj.key)[0] == digest:
        return False, size
    target.put_file(obj.key, temp)
    written, _ = hash_object(target, obj.key)
    if written != digest:
        # The provider accepted a PUT whose bytes differ from what was read: retry the activity.
        raise ApplicationError(f"{target.url}/{obj.key}: BLAKE3 after write {written} != source {digest}")
    return True, size


@activity.defn
def copy_workload(request: CopyInput) -> CopyResult:
    started = time.monotonic()
    source, target = open_store(request.source), open_store(request.target)
    objects = list_workload(source, request.path)
    ledger = ledger_key(request.migration_id, request.workload)
    missing = [o.key for o in objects if target.info(o.key) is None]
    _write_ledger(target, ledger, missing)

    details = activity.info().heartbeat_details
    progress = CopyProgress.model_validate(details[0]) if details else CopyProgress()
    with tempfile.TemporaryDirectory(prefix="skyshift-copy-") as scratch:
        for index in range(progress.next_index, len(objects)):
            copied, read = _copy_one(source, target, objects[index], Path(scratch))
            progress.objects_copied += copied
            progress.objects_unchanged += not copied
            progress.bytes_copied += read if copied else 0
            progress.egress_bytes += read
            progress.next_index = index + 1
            activity.heartbeat(progress.model_dump())
    return CopyResult(
        workload=request.workload,
        objects_total=len(objects),
        objects_copied=progress.objects_copied,
        objects_unchanged=progress.objects_unchanged,
        bytes_total=sum(o.size for o in objects),
        bytes_copied=progress.bytes_copied,
        egress_bytes=progress.egress_bytes,
        egress_cost_usd=round(progress.egress_bytes / 1e9 * request.egress_per_gb_usd, 6),
        verified=True,
        ledger_key=ledger,
        seconds=round(time.monotonic() - started, 3),
    )


@activity.defn
def remove_created(request: LedgerInput) -> int:
    """Compensation for copy_workload: delete the objects it created, then the ledger. Idempotent."""
    target = open_store(request.target)
    if not target.exists(request.ledger_key):
        return 0
    created = json.loads(target.read_bytes(request.ledger_key))["created"]
    removed = sum(target.remove(key) for key in created)
    target.remove(request.ledger_key)
    activity.logger.info("removed %d objects created by the migration at %s", removed, target.url)
    return removed
