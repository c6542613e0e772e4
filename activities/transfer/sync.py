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

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import InvalidKeyError, ObjectInfo, Store, StoreError, StoreSpec, open_store
from activities.stores.base import reserved_prefix
from activities.transfer.accounting import Meter, planned_receipt
from activities.transfer.cache import manifest_cache
from activities.transfer.chunking import ObjectManifest
from activities.transfer.delta import (
    ChunkIndex,
    CorruptionError,
    Interrupted,
    ObjectProgress,
    Rebuild,
    Totals,
    copy_small,
)
from activities.transfer.layout import reserved_reason, staging_key, sync_name, user_objects
from activities.transfer.ledger import LedgerEntry, Overwritten, legacy_ledger_name, preserve, record
from activities.transfer.manifest import fingerprint, fingerprint_many
from activities.transfer.pool import Counter, Ticker, raise_if_cancelled, run_pool, slices
from activities.transfer.staging import (
    Skipped,
    read_deletes,
    read_payload,
    read_range,
    write_deletes,
    write_payload,
    write_range,
)
from activities.transfer.uploads import abort_stale, abort_upload

GiB = 1 << 30
#: Large objects rebuilt at once (rclone's default --transfers is 4 as well).
PARALLEL_OBJECTS = 4
#: Skipped keys and example keys carried back per batch (the rest are counted).
LISTED = 50


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
    inline_bytes: int = Field(0, ge=0, description="Hand the bytes of new or changed small objects to the target "
                              "with the manifests, up to this many per range (0: the target reads them)")  # fmt: skip


#: What `inline_bytes` a sync should ask for (not a dry run): a range's small objects in one request.
INLINE_BYTES = 32 << 20


class FingerprintedBatch(BaseModel):
    last_key: str | None = Field(description="Last key of the range; None when no object was left")
    objects: int
    bytes: int
    bytes_read: int = Field(description="Source bytes read to fingerprint (0 when every manifest was cached)")
    done: bool = Field(description="The listing ended inside this range")
    staging_key: str
    skipped: int = 0
    metadata_bytes: int = 0
    inlined_bytes: int = Field(0, description="Small objects' bytes staged with the range (counted when applied)")


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
    kept_changed: list[str] = Field(default_factory=list, description=f"Objects not deleted because they changed "
                                    f"at the target after the sync listed them (first {LISTED})")  # fmt: skip
    kept_changed_count: int = 0


# -- helpers ----------------------------------------------------------------------------------------


def _within(items: Iterator[ObjectInfo], through: str | None) -> Iterator[ObjectInfo]:
    for info in items:
        if through is not None and info.key > through:
            return
        yield info


def _refusal(source_key: str, target: Store, reserved: str | None) -> str | None:
    """Why `source_key` cannot be written to the target safely, or None."""
    if (why := reserved_reason(source_key)) is not None:
        return why
    if reserved is not None and (source_key + "/").startswith(reserved):
        return (f"collides with skyshift's metadata area '{reserved}' at {target.url}; give the target a metadata "
                "location outside its root (storage.metadata_url)")  # fmt: skip
    try:
        target.check_key(source_key)
    except InvalidKeyError as error:
        return str(error)
    return None


def _parallel(*stores: Store) -> int:
    """Requests in flight for work touching these stores: the most any of them wants."""
    return max(store.capabilities.parallel_requests for store in stores)


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
    """Source side: list and fingerprint one range in-region; stage its manifests for the target.

    Heartbeats while listing and while hashing (one large object may take minutes), with the counts."""
    source, target = open_store(request.source), open_store(request.target)
    reserved = reserved_prefix(target.spec)
    infos: list[ObjectInfo] = []
    skipped: list[Skipped] = []
    size, last_key, done = 0, None, True
    hashed, stop = Counter(), threading.Event()

    def beat() -> None:
        activity.heartbeat({"listed": len(infos) + len(skipped), "bytes_hashed": hashed.value})

    tick = Ticker(beat)
    for info in user_objects(source, request.path, request.after, include_reserved=True):
        if len(infos) + len(skipped) >= request.max_objects or (infos and size + info.size > request.max_bytes):
            done = False
            break
        last_key = info.key
        refusal = _refusal(info.key, target, reserved)
        if refusal is not None:
            skipped.append(Skipped(key=info.key, reason=refusal))
        else:
            infos.append(info)
            size += info.size
        tick()
        raise_if_cancelled(stop)
    result = fingerprint_many(source, infos, stop, beat, hashed, keep_bytes=request.inline_bytes)
    manifests = sorted(result.manifests.values(), key=lambda m: m.key)
    key, payload_key, inlined = staging_key(request.sync, request.batch), None, 0
    if result.bodies:
        payload_key = staging_key(request.sync, request.batch, "payload")
        inlined = write_payload(target.metadata, payload_key, result.bodies)
    written = write_range(target.metadata, key, manifests, skipped, payload_key)
    return FingerprintedBatch(last_key=last_key, objects=len(infos), bytes=size, bytes_read=result.bytes_read,
                              done=done, staging_key=key, skipped=len(skipped), metadata_bytes=written,
                              inlined_bytes=inlined)  # fmt: skip


class _Apply:
    """One batch at the target: classify, preserve, ledger, copy; collect deletions. What crossed is
    counted by a `Meter` (accounting.py), receipts first, so a retried batch counts each byte once."""

    def __init__(self, source: Store, target: Store, request: ApplyBatchInput) -> None:
        self.source, self.target, self.request = source, target, request
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.result = AppliedBatch(totals=Totals())
        receipts = staging_key(request.sync, request.batch, "receipts") if request.staging_key else None
        self.meter = Meter(target.metadata, receipts)
        self.committed: list[ObjectManifest] = []
        self.deletable: list[str] = []
        self.tick = Ticker(self.beat)
        self.payload: dict[str, bytes] = {}

    @property
    def in_flight(self) -> dict[str, ObjectProgress]:
        return self.meter.in_flight

    def take_payload(self, payload: dict[str, bytes]) -> None:
        """Small objects' bytes the source worker staged: they crossed once, when staged (used or not)."""
        self.payload = payload
        self.meter.count_payload(payload)

    def note_skip(self, key: str, reason: str) -> None:
        self.meter.skip()
        with self.lock:
            if len(self.result.skipped) < LISTED:
                self.result.skipped.append(Skipped(key=key, reason=reason))

    def beat(self) -> None:
        if activity.in_activity():
            activity.heartbeat(self.meter.heartbeat_details())

    def merged(self, manifests: list[ObjectManifest]) -> Iterator[tuple[str, ObjectManifest | None, ObjectInfo | None]]:
        """Sorted merge of the staged source range and the target's listing of the same range."""
        request = self.request
        target_listing = _within(user_objects(self.target, request.path, request.after), request.through)
        staged = iter(manifests)
        manifest = next(staged, None)
        for existing in target_listing:
            self.tick()
            while manifest is not None and manifest.key < existing.key:
                yield manifest.key, manifest, None
                manifest = next(staged, None)
            if manifest is not None and manifest.key == existing.key:
                yield existing.key, manifest, existing
                manifest = next(staged, None)
            else:
                yield existing.key, None, existing
        while manifest is not None:
            yield manifest.key, manifest, None
            manifest = next(staged, None)

    def run(self, manifests: list[ObjectManifest], refused: set[str]) -> AppliedBatch:
        try:
            return self._run(manifests, refused)
        finally:
            self.result.totals = self.meter.totals

    def _run(self, manifests: list[ObjectManifest], refused: set[str]) -> AppliedBatch:
        request, totals = self.request, self.meter.totals
        changed: list[tuple[ObjectManifest, ObjectInfo | None]] = []
        same_size: list[tuple[ObjectManifest, ObjectInfo]] = []
        deletable: list[str] = []
        listed: dict[str, str | None] = {}  # each deletable key's etag as listed: deleted only while unchanged
        for key, manifest, existing in self.merged(manifests):
            if existing is not None:
                self.result.target_objects += 1
            if manifest is None:
                if key not in refused:  # a source key we could not sync is not "gone" from the source
                    deletable.append(key)
                    listed[key] = existing.etag if existing is not None else None
                continue
            totals.objects_total += 1
            totals.bytes_total += manifest.size
            totals.chunks_total += len(manifest.chunks)
            if existing is None or existing.size != manifest.size:
                changed.append((manifest, existing))
            else:
                same_size.append((manifest, existing))
        if same_size:  # equal Merkle roots mean equal bytes; the target side is fingerprinted in-region (cached)
            current = fingerprint_many(self.target, [e for _, e in same_size], self.stop, self.beat).manifests
            changed += [(m, e) for m, e in same_size if current[e.key].root != m.root]
            changed.sort(key=lambda pair: pair[0].key)
        self.result.changed = [m.key for m, _ in changed[:LISTED]]
        if not request.dry_run:  # what an earlier attempt committed is equal at the target now: count it once
            writing = {m.key for m, _ in changed}
            roots = {m.key: m.root for m in manifests}
            earlier = self.meter.earlier_receipts().items()
            self.meter.count_earlier([r for key, r in earlier if key not in writing and roots.get(key) == r.root])
        self.deletable = deletable
        self.result.deletable = len(deletable)
        self.result.deletable_examples = deletable[:LISTED]
        if request.dry_run:
            self._estimate(changed)
            return self.result
        if request.delete and deletable:
            write_deletes(self.target.metadata, staging_key(request.sync, request.batch, "deletes"), listed)
        if request.ledger_key and changed:
            self._record_undo(changed)
        self._copy(changed)
        manifest_cache().put_many(self.target, self.committed)
        return self.result

    def _record_undo(self, changed: list[tuple[ObjectManifest, ObjectInfo | None]]) -> None:
        """Before anything is written: keep the prior bytes of what will be overwritten (many at once), and
        ledger it all."""
        request = self.request
        assert request.ledger_key is not None
        ledger = request.ledger_key
        entry = LedgerEntry(created=[m.key for m, existing in changed if existing is None])
        overwritten = [m.key for m, existing in changed if existing is not None]

        def keep(part: list[str]) -> Callable[[], list[Overwritten]]:
            def task() -> list[Overwritten]:
                kept = []
                for key in part:
                    raise_if_cancelled(self.stop)
                    kept.append(preserve(self.target, ledger, request.ledger_stamp, key))
                return kept

            return task

        workers = _parallel(self.target)
        outcomes = run_pool([keep(list(p)) for p in slices(overwritten, workers)], workers, self.stop, self.beat)
        raise_if_cancelled(self.stop)
        for _, outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            entry.overwritten += outcome
        entry.overwritten.sort(key=lambda o: o.key)
        record(self.target, ledger, request.ledger_stamp, entry)

    def _estimate(self, changed: list[tuple[ObjectManifest, ObjectInfo | None]]) -> None:
        large = [(m, e) for m, e in changed if not m.small]
        index = ChunkIndex.for_changed(self.target, large, self.stop, self.beat) if large else ChunkIndex()
        totals = self.meter.totals
        for manifest, _ in changed:
            missing = manifest.chunks if manifest.small else [c for c in manifest.chunks if c.digest not in index.where]
            totals.objects_changed += 1
            totals.chunks_transferred += len(missing)
            totals.bytes_transferred += sum(c.length for c in missing)

    def _copy(self, changed: list[tuple[ObjectManifest, ObjectInfo | None]]) -> None:
        small = [m for m, _ in changed if m.small]
        large = [(m, e) for m, e in changed if not m.small]
        index = ChunkIndex.for_changed(self.target, large, self.stop, self.beat) if large else ChunkIndex()
        self.meter.record_receipts({m.key: planned_receipt(m, index, m.key in self.payload) for m, _ in changed})
        workers = _parallel(self.source, self.target)
        tasks = [self._small_task(list(part)) for part in slices(small, workers)]
        self._settle(run_pool(tasks, workers, self.stop, self.beat))
        raise_if_cancelled(self.stop)
        if small:
            self.target.flush()  # small objects were written without an fsync each: one flush for the batch
        tasks = [self._large_task(m, index) for m, _ in large]
        self._settle(run_pool(tasks, PARALLEL_OBJECTS, self.stop, self.beat))
        raise_if_cancelled(self.stop)

    def _settle(self, outcomes: list) -> None:
        """Per-object failures that retrying cannot fix are skipped by name; anything else fails the batch."""
        failure: BaseException | None = None
        for task, outcome in outcomes:
            if isinstance(outcome, CorruptionError | InvalidKeyError):
                self.note_skip(task.key, str(outcome))
            elif isinstance(outcome, Interrupted | CancelledError):
                continue
            elif isinstance(outcome, BaseException) and failure is None:
                failure = outcome
        if failure is not None:
            raise failure

    def _small_task(self, part: list[ObjectManifest]) -> Callable[[], None]:
        """Copy a slice of small objects one after another (a task per slice, not per object)."""

        def task() -> None:
            committed, read, chunks = [], 0, 0
            try:
                for manifest in part:
                    staged = self.payload.get(manifest.key)
                    try:
                        info, got = copy_small(self.source, self.target, manifest, self.stop, durable=False,
                                               staged=staged)  # fmt: skip
                    except (CorruptionError, InvalidKeyError) as error:
                        self.note_skip(manifest.key, str(error))
                        continue
                    read += got
                    chunks += len(manifest.chunks)
                    committed.append(replace(manifest, key=info.key, etag=info.etag))
            finally:
                self.meter.count_small(len(committed), read, chunks)
                with self.lock:
                    self.committed += committed

        task.key = part[0].key if part else ""  # type: ignore[attr-defined]
        return task

    def _large_task(self, manifest: ObjectManifest, index: ChunkIndex) -> Callable[[], None]:
        def report(progress: ObjectProgress, moved: Totals) -> None:
            self.meter.progress(manifest.key, progress, moved)

        def task() -> None:
            rebuild = Rebuild(self.source, self.target, manifest, index, report, self.stop)
            info = rebuild.run()
            with self.lock:
                index.add(replace(manifest, etag=info.etag))  # later objects may reuse its chunks
                self.committed.append(replace(manifest, key=info.key, etag=info.etag))
            # Parts an earlier attempt uploaded (found through the upload record) crossed too, once: count them
            # with the object (a resumed object showed 268 MB sent, "0 chunks sent").
            self.meter.count_large(manifest.key, rebuild.totals, rebuild.resumed_bytes, rebuild.resumed_chunks)

        task.key = manifest.key  # type: ignore[attr-defined]
        return task


@activity.defn(no_thread_cancel_exception=True)
@fail_fast_on_permanent_errors
def apply_batch(request: ApplyBatchInput) -> AppliedBatch:
    """Target side: make the target's range equal to the staged source range, moving only missing chunks."""
    source, target = open_store(request.source), open_store(request.target)
    staged = read_range(target.metadata, request.staging_key)
    apply = _Apply(source, target, request)
    if staged.payload_key and not request.dry_run:
        apply.take_payload(read_payload(target.metadata, staged.payload_key))
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
        staged = {info.key for info in area.list(f"staging/{sync_name(request.sync)}")}
        for batch in range(request.batches):
            name = staging_key(request.sync, batch, "deletes")
            listed = read_deletes(area, name) if name in staged else {}
            if listed:
                deleted, changed = target.remove_if_unchanged(listed)
                result.deleted += deleted
                result.kept_changed_count += len(changed)
                result.kept_changed = (result.kept_changed + changed)[:LISTED]
                manifest_cache().forget_many(target, list(listed))
            activity.heartbeat(result.deleted)
    if not request.dry_run:
        result.aborted_uploads = abort_stale(target, request.started_at)
    area.remove_many([info.key for info in area.list(f"staging/{sync_name(request.sync)}")])
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
