"""Sync activities: fingerprint a key range at the source, apply the same range at the target.

A batch is a key *range* (after, last_key], not a list: the source worker fingerprints its range
in-region (free reads, cached manifests), and the target worker lists the same range on both sides
and rebuilds what differs. Nothing but the range's two keys goes through workflow history.
"""

from __future__ import annotations

import contextvars
import heapq
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import ObjectInfo, Store, StoreSpec, open_store
from activities.transfer.delta import (
    ChunkIndex,
    CorruptionError,
    ObjectProgress,
    Rebuild,
    Totals,
    needs_transfer,
)
from activities.transfer.layout import user_objects
from activities.transfer.ledger import record_created
from activities.transfer.manifest import ObjectManifest, fingerprint, remove_with_manifest

GiB = 1 << 30


class RangeInput(BaseModel):
    source: StoreSpec
    path: str = ""
    after: str | None = Field(None, description="Start after this key (None: from the beginning)")
    max_objects: int = Field(500, ge=1)
    max_bytes: int = Field(8 * GiB, ge=1)


class FingerprintedRange(BaseModel):
    last_key: str | None = Field(description="Last key of the range; None when no object was left")
    objects: int
    bytes: int
    bytes_read: int = Field(description="Source bytes read to fingerprint (0 when every manifest was cached)")
    done: bool = Field(description="The listing ended inside this range")


class ApplyInput(BaseModel):
    source: StoreSpec
    target: StoreSpec
    path: str = ""
    after: str | None = None
    through: str | None = Field(None, description="Last key of the range; None: to the end of the listing")
    delete: bool = False
    dry_run: bool = False
    ledger_key: str | None = Field(None, description="Record created keys here first (migration compensation)")


class ApplyProgress(BaseModel):
    """Heartbeat details of apply_range: objects in flight and what has crossed so far.

    Objects finished by an earlier attempt already equal the source at the target and are skipped
    by the comparison itself, so only in-flight uploads and transfer counters survive a retry.
    """

    in_flight: dict[str, ObjectProgress] = Field(default_factory=dict)
    moved: Totals = Field(default_factory=Totals)


#: Objects rebuilt at once (rclone's default --transfers is 4 as well).
PARALLEL_OBJECTS = 4


@activity.defn
@fail_fast_on_permanent_errors
def fingerprint_range(request: RangeInput) -> FingerprintedRange:
    """Source side: fingerprint up to max_objects/max_bytes objects after `after` (cached by etag)."""
    source = open_store(request.source)
    objects = size = read = 0
    last_key, done = None, True
    for info in user_objects(source, request.path, request.after):
        if objects >= request.max_objects or (objects and size + info.size > request.max_bytes):
            done = False
            break
        _, computed = fingerprint(source, info)
        read += info.size if computed else 0
        objects, size, last_key = objects + 1, size + info.size, info.key
        activity.heartbeat(last_key)
    return FingerprintedRange(last_key=last_key, objects=objects, bytes=size, bytes_read=read, done=done)


def _merged(
    source: Store, target: Store, request: ApplyInput
) -> Iterator[tuple[str, ObjectInfo | None, ObjectInfo | None]]:
    """Sorted merge of both listings within the range: (key, source info, target info)."""

    def within(items: Iterator[ObjectInfo]) -> Iterator[ObjectInfo]:
        for info in items:
            if request.through is not None and info.key > request.through:
                return
            yield info

    streams = [
        ((o.key, 0, o) for o in within(user_objects(source, request.path, request.after))),
        ((o.key, 1, o) for o in within(user_objects(target, request.path, request.after))),
    ]
    pending: tuple[str, ObjectInfo | None, ObjectInfo | None] | None = None
    for key, side, info in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        if pending and pending[0] == key:
            pending = (key, pending[1], info)
            continue
        if pending:
            yield pending
        pending = (key, info, None) if side == 0 else (key, None, info)
    if pending:
        yield pending


def _rebuild_all(source: Store, target: Store, manifests: list[ObjectManifest], index: ChunkIndex,
                 progress: ApplyProgress) -> None:  # fmt: skip
    """Rebuild objects in parallel; one lock guards the progress that every heartbeat reports."""
    lock = threading.Lock()
    partial: dict[str, Totals] = {}
    committed = progress.moved

    def beat() -> None:
        moved = committed
        for totals in partial.values():
            moved = moved.add(totals)
        progress.moved = moved
        activity.heartbeat(progress.model_dump(mode="json"))

    def rebuild_one(manifest: ObjectManifest) -> None:
        nonlocal committed
        key = manifest.key

        def report(current: ObjectProgress, moved: Totals) -> None:
            with lock:
                progress.in_flight[key], partial[key] = current, moved.model_copy()
                beat()

        rebuild = Rebuild(source, target, manifest, index, report)
        try:
            rebuild.run(progress.in_flight.get(key))
        except CorruptionError as error:
            raise ApplicationError(str(error), type="CorruptionError", non_retryable=True) from error
        index.add(manifest)  # later objects may reuse its chunks
        with lock:
            progress.in_flight.pop(key, None)
            partial.pop(key, None)
            committed = committed.add(rebuild.totals).add(Totals(objects_changed=1))
            beat()

    # Pool threads need the activity's context (heartbeats are context-bound): one copy per task.
    with ThreadPoolExecutor(max_workers=PARALLEL_OBJECTS, thread_name_prefix="skyshift-rebuild") as pool:
        futures = [pool.submit(contextvars.copy_context().run, rebuild_one, m) for m in manifests]
        for future in futures:
            future.result()  # re-raise the first failure; the rest finish or fail on their own
    progress.moved = committed


@activity.defn
@fail_fast_on_permanent_errors
def apply_range(request: ApplyInput) -> Totals:
    """Target side: make the target's range equal to the source's, moving only missing chunks."""
    source, target = open_store(request.source), open_store(request.target)
    details = activity.info().heartbeat_details
    progress = ApplyProgress.model_validate(details[0]) if details else ApplyProgress()
    listed = Totals()
    changed: list[tuple[ObjectManifest, ObjectInfo | None]] = []  # bounded by the range's max_bytes
    deletes: list[str] = []
    for key, src, dst in _merged(source, target, request):
        if src is None:
            deletes.append(key)
            continue
        manifest, _ = fingerprint(source, src)  # cached by the source worker
        listed.objects_total += 1
        listed.bytes_total += src.size
        listed.chunks_total += len(manifest.chunks)
        if needs_transfer(target, manifest, dst):
            changed.append((manifest, dst))
    if request.ledger_key and not request.dry_run:
        record_created(target, request.ledger_key, [m.key for m, d in changed if d is None])
    index = ChunkIndex.for_keys(target, [m.key for m, _ in changed])
    if request.dry_run:
        for manifest, _ in changed:
            missing = [c for c in manifest.chunks if c.digest not in index.where]
            progress.moved = progress.moved.add(
                Totals(
                    objects_changed=1, chunks_transferred=len(missing), bytes_transferred=sum(c.length for c in missing)
                )
            )
    else:
        _rebuild_all(source, target, [m for m, _ in changed], index, progress)
    if request.delete:
        for key in deletes:
            progress.moved.objects_deleted += 1
            if not request.dry_run:
                remove_with_manifest(target, key)
    return listed.add(progress.moved)
