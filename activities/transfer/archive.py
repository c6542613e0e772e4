"""Decommission steps: archive what the source held, prove the target holds it, release the source.

The archive manifest (every key, size and BLAKE3 Merkle root) comes from the source worker's object
manifests, cached by version, so after the final sync nothing is read again; it is written to the
target's metadata area (never to the source: the source stays read-only until the explicit
release). The target side checks its copies' roots against it. Only then may the source copies be
deleted, and only those whose content still matches, so data written at the source after archiving
is never lost (a rewrite changes the etag, which forces a fresh fingerprint).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import StoreSpec, open_store
from activities.transfer.cache import manifest_cache
from activities.transfer.layout import archive_key, user_objects
from activities.transfer.manifest import fingerprint


class ArchiveEntry(BaseModel):
    key: str
    size: int
    root: str = Field(description="BLAKE3 Merkle root of the object's chunks")


class ArchiveInput(BaseModel):
    migration_id: str
    workload: str
    path: str
    source: StoreSpec
    target: StoreSpec


class ArchiveResult(BaseModel):
    workload: str
    manifest_key: str = Field(description="Key in the target's metadata area")
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


def _read_manifest(store, key: str) -> list[ArchiveEntry]:
    if not store.exists(key):
        raise ApplicationError(f"{store.url}/{key}: archive manifest missing", non_retryable=True)
    return [ArchiveEntry.model_validate(e) for e in json.loads(store.read_bytes(key))["objects"]]


@activity.defn
@fail_fast_on_permanent_errors
def archive_workload(request: ArchiveInput) -> ArchiveResult:
    """Source side: list every object's root and write the archive manifest to the target's metadata area."""
    source, target = open_store(request.source), open_store(request.target)
    entries = []
    for obj in user_objects(source, request.path):
        manifest, _ = fingerprint(source, obj)
        entries.append(ArchiveEntry(key=obj.key, size=obj.size, root=manifest.root))
        activity.heartbeat(len(entries))
    body = json.dumps({"migration_id": request.migration_id, "objects": [e.model_dump() for e in entries]}).encode()
    key = archive_key(request.migration_id, request.workload)
    target.metadata.put_bytes(key, body)
    return ArchiveResult(
        workload=request.workload, manifest_key=key, objects=len(entries), bytes=sum(e.size for e in entries)
    )


@activity.defn
@fail_fast_on_permanent_errors
def verify_archive(request: ArchiveInput) -> VerifyArchiveResult:
    """Target side: every archived object must be present with the same root; else stop."""
    target = open_store(request.target)
    entries = _read_manifest(target.metadata, archive_key(request.migration_id, request.workload))
    mismatched = []
    for index, entry in enumerate(entries):
        info = target.info(entry.key)
        if info is None or fingerprint(target, info)[0].root != entry.root:
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
    entries = _read_manifest(open_store(request.target).metadata, archive_key(request.migration_id, request.workload))
    deleted, released, kept = 0, 0, []
    for entry in entries:
        info = source.info(entry.key)
        if info is None:
            continue  # already released by an earlier attempt
        if info.size != entry.size or fingerprint(source, info)[0].root != entry.root:
            kept.append(entry.key)
            continue
        source.remove(entry.key)
        manifest_cache().forget(source, entry.key)
        deleted += 1
        released += entry.size
        activity.heartbeat(deleted)
    return ReleaseResult(workload=request.workload, objects_deleted=deleted, bytes_released=released, kept_changed=kept)
