"""Sync activities: fingerprint a key range at the source, apply it at the target, finish with deletes.

A batch is a key *range* (after, last_key]. The source worker lists and fingerprints its range
in-region (cached per worker by version) and hands the manifests to the target through one staged
object in the target's metadata area; the target worker lists the same range of the target,
rebuilds what differs and records what it created or overwrote before acting. Deletions are only
collected per batch and carried out at the end, after every copy succeeded, within a bound
(`finish_sync`). Nothing but keys and counts goes through workflow history, and nothing is ever
written to the source.

Long activities poll for cancellation between objects (`no_thread_cancel_exception`: a stop event,
not an exception raised at an arbitrary line) and, when cancelled, stop every worker thread before
returning, so no object is committed after the workflow started its undo.
"""

from __future__ import annotations

import contextvars
import heapq
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import InvalidKeyError, ObjectInfo, Store, StoreError, StoreSpec, open_store
from activities.stores.base import reserved_prefix
from activities.transfer.cache import manifest_cache
from activities.transfer.delta import (
    ChunkIndex,
    CorruptionError,
    Interrupted,
    ObjectProgress,
    Rebuild,
    Totals,
    copy_small,
    needs_transfer,
)
from activities.transfer.layout import staging_key, sync_name, user_objects
from activities.transfer.ledger import LedgerEntry, legacy_ledger_name, preserve, record
from activities.transfer.manifest import ObjectManifest, fingerprint
from activities.transfer.staging import Skipped, read_keys, read_range, write_keys, write_range
from activities.transfer.uploads import abort_stale, abort_upload

GiB = 1 << 30
#: Large objects rebuilt at once (rclone's default --transfers is 4 as well).
PARALLEL_OBJECTS = 4
#: Small objects copied at once: each is one request each way, so latency, not bandwidth, bounds them.
PARALLEL_SMALL = 32
#: Objects fingerprinted at once at the source (reads in-region; hashing releases the GIL).
PARALLEL_FINGERPRINTS = 8
#: Skipped keys and example keys carried back per batch (the rest are counted).
LISTED = 50

T = TypeVar("T")
#: Counters of bytes that crossed: a retried batch adds what its killed attempts already sent.
CARRIED = ("bytes_transferred", "chunks_transferred", "chunks_refetched")


# -- models ---------------------------------------------------------------------------------------


class SourceCheckInput(BaseModel):
    source: StoreSpec
    path: str = ""


class BatchInput(BaseModel):
    source: StoreSpec
    target: StoreSpec
    sync: str = Field(description="The sync's id: names its staging area")
    batch: int = Field(ge=0)
    path: str = ""
    after: str | None = Field(None, description="Start after this key (None: from the beginning)")
    max_objects: int = Field(1000, ge=1)
    max_bytes: int = Field(8 * GiB, ge=1)


class FingerprintedBatch(BaseModel):
    last_key: str | None = Field(description="Last key of the range; None when no object was left")
    objects: int
    bytes: int
    bytes_read: int = Field(description="Source bytes read to fingerprint (0 when every manifest was cached)")
    done: bool = Field(description="The listing ended inside this range")
    staging_key: str
    skipped: int = 0
    metadata_bytes: int = 0


class ApplyBatchInput(BaseModel):
    source: StoreSpec
    target: StoreSpec
    sync: str
    batch: int = Field(ge=0)
    staging_key: str
    path: str = ""
    after: str | None = None
    through: str | None = Field(None, description="Last key of the range; None: to the end of the listing")
    delete: bool = False
    dry_run: bool = False
    ledger_key: str | None = Field(None, description="Record created and overwritten keys here first")
    ledger_stamp: str = Field("", description="Names this batch's ledger entry; sorts in the order batches ran")


class AppliedBatch(BaseModel):
    totals: Totals
    skipped: list[Skipped] = Field(default_factory=list, description=f"Up to {LISTED}, by name")
    changed: list[str] = Field(default_factory=list, description=f"Up to {LISTED} keys written (or, dry run, to be)")
    deletable: int = Field(0, description="Target keys the source no longer has")
    deletable_examples: list[str] = Field(default_factory=list)
    target_objects: int = Field(0, description="Objects the target held in this range before the batch")


class FinishInput(BaseModel):
    target: StoreSpec
    sync: str
    batches: int
    delete: bool = False
    dry_run: bool = False
    deletable: int = 0
    target_objects: int = 0
    max_delete: int | None = Field(None, ge=0, description="Delete at most this many objects")
    max_delete_percent: float | None = Field(10.0, ge=0, le=100, description="...or this share of the target")
    force: bool = Field(False, description="Delete beyond the bound")
    started_at: float = Field(0, description="Unix time the sync started: older upload records are abandoned")


class Finished(BaseModel):
    deleted: int = 0
    aborted_uploads: int = 0


# -- helpers ----------------------------------------------------------------------------------------


def _within(items: Iterator[ObjectInfo], through: str | None) -> Iterator[ObjectInfo]:
    for info in items:
        if through is not None and info.key > through:
            return
        yield info


def _refusal(source_key: str, target: Store, reserved: str | None) -> str | None:
    """Why `source_key` cannot be written to the target safely, or None."""
    if reserved is not None and (source_key + "/").startswith(reserved):
        return (f"collides with skyshift's metadata area '{reserved}' at {target.url}; give the target a metadata "
                "location outside its root (storage.metadata_url)")  # fmt: skip
    try:
        target.check_key(source_key)
    except InvalidKeyError as error:
        return str(error)
    return None


def _run_pool(tasks: list[Callable[[], T]], workers: int, stop: threading.Event,
              beat: Callable[[], None]) -> list[tuple[Callable[[], T], T | BaseException]]:  # fmt: skip
    """Run tasks in threads; poll for cancellation while waiting. Return each task with its result or error.

    A cancelled activity sets `stop` (every task checks it before committing) and waits for the
    threads to return: when this returns, nothing is still writing.
    """
    if not tasks:
        return []
    outcomes: list[tuple[Callable[[], T], T | BaseException]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skyshift-sync") as pool:
        # Pool threads need the activity's context (heartbeats are context-bound): one copy per task.
        futures: dict[Future, Callable[[], T]] = {
            pool.submit(contextvars.copy_context().run, task): task for task in tasks
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                outcomes.append((futures[future], error if error is not None else future.result()))
            if activity.is_cancelled() and not stop.is_set():
                stop.set()
                for future in pending:
                    future.cancel()
            beat()
    return outcomes


def _raise_if_cancelled(stop: threading.Event) -> None:
    if stop.is_set() or activity.is_cancelled():
        raise CancelledError("stopped before committing anything more")


# -- activities -------------------------------------------------------------------------------------


@activity.defn
@fail_fast_on_permanent_errors
def check_source(request: SourceCheckInput) -> int:
    """A missing source is an error, never an empty dataset: a typo with --delete must not empty the target."""
    source = open_store(request.source)
    where = f"{source.url}/{request.path}".rstrip("/")
    if not source.root_exists():
        raise StoreError(f"{source.url} does not exist: check the bucket or directory name", permanent=True)
    first = next(iter(user_objects(source, request.path)), None)
    if first is None:
        raise StoreError(f"{where}: no objects there; a missing or empty source is never synced as an empty "
                         "dataset (check the path)", permanent=True)  # fmt: skip
    return 1


@activity.defn(no_thread_cancel_exception=True)
@fail_fast_on_permanent_errors
def fingerprint_batch(request: BatchInput) -> FingerprintedBatch:
    """Source side: list and fingerprint one range in-region; stage its manifests for the target."""
    source, target = open_store(request.source), open_store(request.target)
    reserved = reserved_prefix(target.spec)
    infos: list[ObjectInfo] = []
    skipped: list[Skipped] = []
    size, last_key, done = 0, None, True
    for info in user_objects(source, request.path, request.after):
        if len(infos) + len(skipped) >= request.max_objects or (infos and size + info.size > request.max_bytes):
            done = False
            break
        last_key = info.key
        refusal = _refusal(info.key, target, reserved)
        if refusal is not None:
            skipped.append(Skipped(key=info.key, reason=refusal))
            continue
        infos.append(info)
        size += info.size
    stop = threading.Event()
    read = 0

    def fingerprint_one(info: ObjectInfo) -> Callable[[], ObjectManifest]:
        def task() -> ObjectManifest:
            _raise_if_cancelled(stop)
            manifest, computed = fingerprint(source, info)
            nonlocal read
            read += info.size if computed else 0
            return manifest

        return task

    manifests: list[ObjectManifest] = []

    def beat() -> None:
        activity.heartbeat({"fingerprinted": len(manifests), "bytes_read": read})

    outcomes = _run_pool([fingerprint_one(i) for i in infos], PARALLEL_FINGERPRINTS, stop, beat)
    for _, outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        manifests.append(outcome)
    _raise_if_cancelled(stop)
    manifests.sort(key=lambda m: m.key)
    key = staging_key(request.sync, request.batch)
    written = write_range(target.metadata, key, manifests, skipped)
    return FingerprintedBatch(last_key=last_key, objects=len(infos), bytes=size, bytes_read=read, done=done,
                              staging_key=key, skipped=len(skipped), metadata_bytes=written)  # fmt: skip


class _Apply:
    """One batch at the target: classify, preserve, ledger, copy; collect deletions."""

    def __init__(self, source: Store, target: Store, request: ApplyBatchInput) -> None:
        self.source, self.target, self.request = source, target, request
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.result = AppliedBatch(totals=Totals())
        self.in_flight: dict[str, ObjectProgress] = {}
        self.partial: dict[str, Totals] = {}
        self.committed: list[ObjectManifest] = []
        self.deletable: list[str] = []
        # Bytes a killed attempt of this batch sent still crossed the boundary (and cost egress): carry them.
        details = activity.info().heartbeat_details if activity.in_activity() else ()
        self.reported_parts: dict[str, int] = {}
        if details and isinstance(details[-1], dict) and "moved" in details[-1]:
            moved = Totals.model_validate(details[-1]["moved"])
            self.result.totals = Totals(**{name: getattr(moved, name) for name in CARRIED})
            for progress in details[-1].get("in_flight", []):
                self.reported_parts[progress["key"]] = sum(part["size"] for part in progress["parts"])

    def note_skip(self, key: str, reason: str) -> None:
        with self.lock:
            self.result.totals.objects_skipped += 1
            if len(self.result.skipped) < LISTED:
                self.result.skipped.append(Skipped(key=key, reason=reason))

    def beat(self) -> None:
        with self.lock:
            moved = self.result.totals
            for partial in self.partial.values():
                moved = moved.add(partial)
            activity.heartbeat({"objects_changed": moved.objects_changed, "bytes": moved.bytes_transferred,
                                "moved": moved.model_dump(mode="json"),
                                "in_flight": [p.model_dump(mode="json") for p in self.in_flight.values()]})  # fmt: skip

    def merged(self, manifests: list[ObjectManifest]) -> Iterator[tuple[str, ObjectManifest | None, ObjectInfo | None]]:
        """Sorted merge of the staged source range and the target's listing of the same range."""
        request = self.request
        target_listing = _within(user_objects(self.target, request.path, request.after), request.through)
        streams = [((m.key, 0, m) for m in manifests), ((o.key, 1, o) for o in target_listing)]
        pending: list = []
        for key, side, item in heapq.merge(*streams, key=lambda entry: (entry[0], entry[1])):
            if pending and pending[0] == key:
                pending[2] = item
                continue
            if pending:
                yield tuple(pending)  # type: ignore[misc]
            pending = [key, item, None] if side == 0 else [key, None, item]
        if pending:
            yield tuple(pending)  # type: ignore[misc]

    def run(self, manifests: list[ObjectManifest], refused: set[str]) -> AppliedBatch:
        request, totals = self.request, self.result.totals
        changed: list[tuple[ObjectManifest, ObjectInfo | None]] = []
        deletable: list[str] = []
        for key, manifest, existing in self.merged(manifests):
            if existing is not None:
                self.result.target_objects += 1
            if manifest is None:
                if key not in refused:  # a source key we could not sync is not "gone" from the source
                    deletable.append(key)
                continue
            totals.objects_total += 1
            totals.bytes_total += manifest.size
            totals.chunks_total += len(manifest.chunks)
            if needs_transfer(self.target, manifest, existing):
                changed.append((manifest, existing))
        self.result.changed = [m.key for m, _ in changed[:LISTED]]
        self.deletable = deletable
        self.result.deletable = len(deletable)
        self.result.deletable_examples = deletable[:LISTED]
        if request.dry_run:
            self._estimate(changed)
            return self.result
        if request.delete and deletable:
            write_keys(self.target.metadata, staging_key(request.sync, request.batch, "deletes"), deletable)
        if request.ledger_key and changed:
            self._record_undo(changed)
        self._copy([m for m, _ in changed])
        manifest_cache().put_many(self.target, self.committed)
        return self.result

    def _record_undo(self, changed: list[tuple[ObjectManifest, ObjectInfo | None]]) -> None:
        """Before anything is written: keep the prior bytes of what will be overwritten, ledger it all."""
        request = self.request
        assert request.ledger_key is not None
        entry = LedgerEntry(created=[m.key for m, existing in changed if existing is None])
        for manifest, existing in changed:
            if existing is not None:
                _raise_if_cancelled(self.stop)
                entry.overwritten.append(preserve(self.target, request.ledger_key, request.ledger_stamp, manifest.key))
        record(self.target, request.ledger_key, request.ledger_stamp, entry)

    def _estimate(self, changed: list[tuple[ObjectManifest, ObjectInfo | None]]) -> None:
        large = [m for m, _ in changed if not m.small]
        index = ChunkIndex.for_changed(self.target, large)
        totals = self.result.totals
        for manifest, _ in changed:
            missing = manifest.chunks if manifest.small else [c for c in manifest.chunks if c.digest not in index.where]
            totals.objects_changed += 1
            totals.chunks_transferred += len(missing)
            totals.bytes_transferred += sum(c.length for c in missing)

    def _copy(self, manifests: list[ObjectManifest]) -> None:
        small = [m for m in manifests if m.small]
        large = [m for m in manifests if not m.small]
        self._settle(_run_pool([self._small_task(m) for m in small], PARALLEL_SMALL, self.stop, self.beat))
        index = ChunkIndex.for_changed(self.target, large) if large else ChunkIndex()
        self._settle(_run_pool([self._large_task(m, index) for m in large], PARALLEL_OBJECTS, self.stop, self.beat))
        _raise_if_cancelled(self.stop)

    def _settle(self, outcomes: list) -> None:
        """Per-object failures that retrying cannot fix are skipped by name; anything else fails the batch."""
        failure: BaseException | None = None
        for task, outcome in outcomes:
            if isinstance(outcome, CorruptionError | InvalidKeyError):
                self.note_skip(task.key, str(outcome))
            elif isinstance(outcome, Interrupted):
                continue
            elif isinstance(outcome, BaseException) and failure is None:
                failure = outcome
        if failure is not None:
            raise failure

    def _committed(self, manifest: ObjectManifest, info: ObjectInfo, moved: Totals) -> None:
        with self.lock:
            self.committed.append(manifest.model_copy(update={"key": info.key, "etag": info.etag}))
            totals = self.result.totals.add(moved)
            totals.objects_changed += 1
            self.result.totals = totals
            self.in_flight.pop(manifest.key, None)
            self.partial.pop(manifest.key, None)

    def _small_task(self, manifest: ObjectManifest) -> Callable[[], None]:
        def task() -> None:
            info, read = copy_small(self.source, self.target, manifest, self.stop)
            moved = Totals(bytes_transferred=read, chunks_transferred=len(manifest.chunks), objects_verified=1)
            self._committed(manifest, info, moved)

        task.key = manifest.key  # type: ignore[attr-defined]
        return task

    def _large_task(self, manifest: ObjectManifest, index: ChunkIndex) -> Callable[[], None]:
        def report(progress: ObjectProgress, moved: Totals) -> None:
            with self.lock:
                self.in_flight[manifest.key] = progress.model_copy(deep=True)
                self.partial[manifest.key] = moved.model_copy()

        def task() -> None:
            rebuild = Rebuild(self.source, self.target, manifest, index, report, self.stop)
            info = rebuild.run()
            # Parts the provider held that no heartbeat reported were still sent by an earlier attempt.
            rebuild.totals.bytes_transferred += max(0, rebuild.resumed_bytes - self.reported_parts.get(manifest.key, 0))
            with self.lock:
                index.add(manifest)  # later objects may reuse its chunks
            self._committed(manifest, info, rebuild.totals)

        task.key = manifest.key  # type: ignore[attr-defined]
        return task


@activity.defn(no_thread_cancel_exception=True)
@fail_fast_on_permanent_errors
def apply_batch(request: ApplyBatchInput) -> AppliedBatch:
    """Target side: make the target's range equal to the staged source range, moving only missing chunks."""
    source, target = open_store(request.source), open_store(request.target)
    staged = read_range(target.metadata, request.staging_key)
    apply = _Apply(source, target, request)
    apply.beat()  # at once: a resumed attempt must not look dead while it lists and plans
    for skip in staged.skipped:
        apply.note_skip(skip.key, skip.reason)
    try:
        return apply.run(staged.manifests, {s.key for s in staged.skipped})
    except CancelledError:
        details = activity.cancellation_details()
        if details is not None and details.cancel_requested:
            # The workflow is undoing the sync: uploads it will never resume are aborted now.
            for key in list(apply.in_flight):
                abort_upload(target, key, target.open_multipart(key, apply.in_flight[key].upload_id))
        raise


@activity.defn
@fail_fast_on_permanent_errors
def finish_sync(request: FinishInput) -> Finished:
    """Target side, after every batch was applied: bounded deletes, then the sync's staging is dropped."""
    target = open_store(request.target)
    area = target.metadata
    result = Finished()
    if request.delete and request.deletable and not request.dry_run:
        bound = _delete_bound(request)
        if request.deletable > bound and not request.force:
            share = 100 * request.deletable / max(1, request.target_objects)
            raise ApplicationError(
                f"refusing to delete {request.deletable} objects at {target.url} ({share:.0f}% of its "
                f"{request.target_objects}); the bound is {bound}. Nothing was deleted. Check the source URL, "
                "then rerun with --max-delete N (or a larger --max-delete P%) or --force",
                type="DeleteBoundExceeded",
                non_retryable=True,
            )
        for batch in range(request.batches):
            for key in read_keys(area, staging_key(request.sync, batch, "deletes")):
                result.deleted += target.remove(key)
                manifest_cache().forget(target, key)
            activity.heartbeat(result.deleted)
    if not request.dry_run:
        result.aborted_uploads = abort_stale(target, request.started_at)
    for info in list(area.list(f"staging/{sync_name(request.sync)}")):
        area.remove(info.key)
    return result


def _delete_bound(request: FinishInput) -> int:
    bounds = []
    if request.max_delete is not None:
        bounds.append(request.max_delete)
    if request.max_delete_percent is not None:
        bounds.append(int(request.max_delete_percent / 100 * request.target_objects))
    return min(bounds) if bounds else request.deletable


# -- the 0.1 interface, for syncs that were in flight when workers were upgraded -------------------


class RangeInput(BaseModel):
    source: StoreSpec
    path: str = ""
    after: str | None = None
    max_objects: int = Field(500, ge=1)
    max_bytes: int = Field(8 * GiB, ge=1)


class FingerprintedRange(BaseModel):
    last_key: str | None
    objects: int
    bytes: int
    bytes_read: int
    done: bool


class ApplyInput(BaseModel):
    source: StoreSpec
    target: StoreSpec
    path: str = ""
    after: str | None = None
    through: str | None = None
    delete: bool = False
    dry_run: bool = False
    ledger_key: str | None = None


@activity.defn(no_thread_cancel_exception=True)
@fail_fast_on_permanent_errors
def fingerprint_range(request: RangeInput) -> FingerprintedRange:
    """0.1 interface: fingerprint a range into this worker's cache (the target fingerprints it again)."""
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


@activity.defn(no_thread_cancel_exception=True)
@fail_fast_on_permanent_errors
def apply_range(request: ApplyInput) -> Totals:
    """0.1 interface: the target fingerprints the source range itself (reads it across the boundary),
    then applies it like `apply_batch`; a 0.1 ledger key is written in the 0.1 format."""
    source, target = open_store(request.source), open_store(request.target)
    listed = list(_within(user_objects(source, request.path, request.after), request.through))
    manifests = [fingerprint(source, info)[0] for info in listed]
    batch = ApplyBatchInput(
        source=request.source, target=request.target, sync="legacy", batch=0, staging_key="", path=request.path,
        after=request.after, through=request.through, dry_run=request.dry_run,
        ledger_key=legacy_ledger_name(request.ledger_key) if request.ledger_key else None,
        ledger_stamp=f"{time.time_ns():020d}",
    )  # fmt: skip
    apply = _Apply(source, target, batch)
    result = apply.run(manifests, set())
    if request.delete and not request.dry_run:
        for key in apply.deletable:
            result.totals.objects_deleted += target.remove(key)
    return result.totals
