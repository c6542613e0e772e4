"""Decommission steps: archive what the source held, prove the target holds it, release the source.

The archive manifest (every key, size and BLAKE3) is hashed on the source side, where reads are
in-region and free, and written to both stores. The target side re-hashes its copies against it.
Only then may the source copies be deleted, and only those whose bytes still match the manifest,
so data written at the source after archiving is never lost.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import StoreSpec, join_key, open_store
from activities.transfer.hashing import hash_object
from activities.transfer.layout import INTERNAL_PREFIX, user_objects


class ArchiveEntry(BaseModel):
    key: str
    size: int
    blake3: str


class ArchiveInput(BaseModel):
    migration_id: str
    workload: str
    path: str
    source: StoreSpec
    target: StoreSpec


class ArchiveResult(BaseModel):
    workload: str
    manifest_key: str = Field(description="Same key in both stores")
    objects: int
    bytes: int


class VerifyArchiveResult(BaseModel):
    workload: str
    objects_verified: int
    mismatched: list[str]


class ReleaseResult(BaseModel):
    workload: str
    objects_deleted: int
    bytes_released: int
    kept_changed: list[str] = Field(description="Source objects changed since archiving; left in place")


def archive_key(migration_id: str, workload: str) -> str:
    return join_key(INTERNAL_PREFIX, "archive", migration_id, f"{workload}.json")


def _read_manifest(store, key: str) -> list[ArchiveEntry]:
    if not store.exists(key):
        raise ApplicationError(f"{store.url}/{key}: archive manifest missing", non_retryable=True)
    return [ArchiveEntry.model_validate(e) for e in json.loads(store.read_bytes(key))["objects"]]


@activity.defn
@fail_fast_on_permanent_errors
def archive_workload(request: ArchiveInput) -> ArchiveResult:
    """Source side: hash every object and write the manifest to the source and the target store."""
    source, target = open_store(request.source), open_store(request.target)
    entries = []
    for obj in user_objects(source, request.path):
        digest, size = hash_object(source, obj.key)
        entries.append(ArchiveEntry(key=obj.key, size=size, blake3=digest))
        activity.heartbeat(len(entries))
    body = json.dumps({"migration_id": request.migration_id, "objects": [e.model_dump() for e in entries]}).encode()
    key = archive_key(request.migration_id, request.workload)
    target.put_bytes(key, body)
    source.put_bytes(key, body)
    return ArchiveResult(
        workload=request.workload, manifest_key=key, objects=len(entries), bytes=sum(e.size for e in entries)
    )


@activity.defn
@fail_fast_on_permanent_errors
def verify_archive(request: ArchiveInput) -> VerifyArchiveResult:
    """Target side: every archived object must be present with the same BLAKE3; else stop."""
    target = open_store(request.target)
    entries = _read_manifest(target, archive_key(request.migration_id, request.workload))
    mismatched = []
    for index, entry in enumerate(entries):
        if target.info(entry.key) is None or hash_object(target, entry.key)[0] != entry.blake3:
            mismatched.append(entry.key)
        activity.heartbeat(index)
    if mismatched:
        raise ApplicationError(
            f"{target.url}: {len(mismatched)} archived objects are missing or differ at the target "
            f"(first: {mismatched[0]}); the source is kept",
            non_retryable=True,
        )
    return VerifyArchiveResult(workload=request.workload, objects_verified=len(entries), mismatched=[])


@activity.defn
@fail_fast_on_permanent_errors
def release_source(request: ArchiveInput) -> ReleaseResult:
    """Source side, irreversible: delete source objects whose bytes still match the manifest."""
    source = open_store(request.source)
    entries = _read_manifest(source, archive_key(request.migration_id, request.workload))
    deleted, released, kept = 0, 0, []
    for entry in entries:
        info = source.info(entry.key)
        if info is None:
            continue  # already released by an earlier attempt
        if info.size != entry.size or hash_object(source, entry.key)[0] != entry.blake3:
            kept.append(entry.key)
            continue
        source.remove(entry.key)
        deleted += 1
        released += entry.size
        activity.heartbeat(deleted)
    return ReleaseResult(workload=request.workload, objects_deleted=deleted, bytes_released=released, kept_changed=kept)
