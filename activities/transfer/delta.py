"""The delta engine: rebuild changed objects at the target from chunks it already holds plus
ranged reads of the missing chunks from the source, verified as written, committed atomically.

Runs on the target's worker. For each object whose source manifest differs from the target's:
chunks found in the target (the object's old version, or a sibling object holding that chunk) are
reused; runs of adjacent missing chunks are fetched from the source in one ranged GET each. Every
chunk that passes through the worker is checked against its BLAKE3 digest before it is written (a
mismatch is re-fetched), and the Merkle root of what was written must equal the source manifest's
root before the object is published: the multipart writer keeps the old version readable until
that commit.

Where the target store can copy a byte range into a part inside the provider
(`Capabilities.part_copy`: S3 UploadPartCopy), long runs of reused chunks become copied parts and
never pass through the worker; the copy is pinned to the version whose chunk digests the index
holds (`CopySourceIfMatch`), so the written root is still the source's. The bytes between copied
runs are streamed in parts never smaller than the store's minimum part. Part sizes and limits are
the store's (`part_size_for`).

Multipart uploads are recorded in the target's metadata area (`uploads.py`) with their part plan,
so a later attempt or a later run continues after the parts already uploaded. A stop event ends
the work between chunks when the activity is cancelled, so nothing is committed after a rollback began.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import blake3
from pydantic import BaseModel, Field

from activities.stores import ObjectInfo, PartInfo, Store
from activities.stores.base import Capabilities, MissingObjectError, ObjectChangedError, part_size_for
from activities.transfer.chunking import SMALL_OBJECT, Chunk, ObjectManifest, digest
from activities.transfer.manifest import fingerprint_many
from activities.transfer.uploads import abort_upload, close_upload, open_upload

MiB = 1 << 20
#: Parts uploaded at once for one object, at most; fewer for smaller objects (see `_in_flight`).
MAX_PARTS_IN_FLIGHT = 8
#: Bytes one ranged read may cover (runs are streamed chunk by chunk: this only bounds a request's duration).
MAX_RANGE = 1024 * MiB
#: Largest part copied inside the store in one request.
MAX_COPY_PART = 1024 * MiB
REFETCH_ATTEMPTS = 2
T = TypeVar("T")


class CorruptionError(RuntimeError):
    """A chunk kept failing its BLAKE3 check, or the written root differs: the object is not committed."""


class SourceChanged(CorruptionError):
    """The source object vanished or changed after it was listed and fingerprinted ("changed at the
    source"): retrying the same staged range cannot succeed, so, like a corrupt object, it is skipped
    by name with nothing committed; the next sync lists the source again and converges."""

    @classmethod
    def reading(cls, where: str, error: BaseException) -> SourceChanged:
        return cls(f"{where}: changed at the source after it was listed ({error}); skipped, nothing was "
                   "committed; rerun the sync to copy what the source holds now")  # fmt: skip


def _from_source(where: str, read: Callable[[], T]) -> T:
    """`read()` from the source object; a missing or changed object is `SourceChanged`, not a retry."""
    try:
        return read()
    except (MissingObjectError, ObjectChangedError) as error:
        raise SourceChanged.reading(where, error) from error


class Interrupted(RuntimeError):
    """The activity was cancelled: stop before committing anything else."""


class ObjectProgress(BaseModel):
    """An object being rebuilt, as heartbeats show it."""

    key: str
    upload_id: str
    parts: list[PartInfo] = Field(default_factory=list)


class Totals(BaseModel):
    objects_total: int = 0
    objects_changed: int = 0
    objects_deleted: int = 0
    objects_skipped: int = Field(0, description="Left out by name: unsafe keys, corrupt bytes (see `skipped`)")
    objects_verified: int = Field(0, description="Committed only after the written root equalled the source's")
    bytes_total: int = 0
    bytes_transferred: int = Field(0, description="Object bytes read from the source (crossed the boundary)")
    metadata_bytes: int = Field(0, description="Manifests handed from the source's worker to the target's")
    bytes_copied_server_side: int = Field(0, description="Bytes the target store copied without the worker")
    bytes_read_back: int = Field(0, description="Reused bytes read back from the target through the worker")
    chunks_total: int = 0
    chunks_transferred: int = 0
    chunks_reused: int = 0
    chunks_refetched: int = 0

    def add(self, other: Totals) -> Totals:
        return Totals(**{name: getattr(self, name) + getattr(other, name) for name in Totals.model_fields})


@dataclass(frozen=True)
class Location:
    key: str
    offset: int
    etag: str | None = None  # the version whose digests these are: a server-side copy is pinned to it


#: A new object this large may have large siblings read to find shared chunks (a fine-tuned checkpoint
#: beside its base); smaller ones reuse only what the worker already knows.
SIBLING_READ_FROM = 64 * MiB


class ChunkIndex:
    """Where the target already holds each chunk: old versions and sibling objects."""

    #: Siblings indexed per directory: enough for a checkpoint beside its base or appended shards.
    MAX_SIBLINGS = 64
    #: Objects listed per directory to find them: a directory of a million small files costs a bounded scan.
    MAX_SCANNED = 10_000

    def __init__(self) -> None:
        self.where: dict[str, Location] = {}

    def add(self, manifest: ObjectManifest) -> None:
        for chunk in manifest.chunks:
            self.where.setdefault(chunk.digest, Location(manifest.key, chunk.offset, manifest.etag))

    @classmethod
    def for_changed(cls, target: Store, changed: list[tuple[ObjectManifest, ObjectInfo | None]],
                    stop: threading.Event, beat: Callable[[], None]) -> ChunkIndex:  # fmt: skip
        """Index what the target holds that the changed large objects may reuse, reading as little as it can:

        - the current version of each (fingerprinted in-region, cached): an edited object reuses its own;
        - large siblings in their directories this worker already holds manifests of (free);
        - for a new object of SIBLING_READ_FROM or more (a checkpoint beside its base), large siblings read
          in-region, at most its own size in all: never for an initial sync of many ordinary files, where
          reading back what was just written would double the traffic.
        """
        from activities.transfer.cache import manifest_cache
        from activities.transfer.layout import user_objects

        index, cache = cls(), manifest_cache()
        large = [(m, existing) for m, existing in changed if not m.small]
        current = [e for _, e in large if e is not None and e.size > SMALL_OBJECT]
        for manifest in fingerprint_many(target, current, stop, beat).manifests.values():
            index.add(manifest)  # first: an edited object's runs come from its own old version
        wanted: dict[str, ObjectInfo] = {}
        budget = sum(m.size for m, e in large if e is None and m.size >= SIBLING_READ_FROM)
        for directory in sorted({m.key.rpartition("/")[0] for m, _ in large}):
            for manifest in cache.in_directory(target, directory, SMALL_OBJECT, cls.MAX_SIBLINGS):
                index.add(manifest)
            if budget <= 0:
                continue
            candidates = user_objects(target, directory) if directory else user_objects(target)
            for scanned, info in enumerate(candidates):
                if scanned >= cls.MAX_SCANNED or len(wanted) >= cls.MAX_SIBLINGS or budget <= 0:
                    break
                if info.key.rpartition("/")[0] == directory and info.size >= SIBLING_READ_FROM // 4:
                    wanted[info.key] = info
                    budget -= info.size
        for manifest in fingerprint_many(target, list(wanted.values()), stop, beat).manifests.values():
            index.add(manifest)
        return index


@dataclass
class _Run:
    """Adjacent chunks read with one ranged request: from the source, or from one target object."""

    local_key: str | None
    start: int
    end: int
    chunks: list[Chunk]
    etag: str | None = None

    def append(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.end += chunk.length


def plan_runs(chunks: list[Chunk], index: ChunkIndex, limit: int = MAX_RANGE) -> Iterator[_Run]:
    """Group chunks into runs: coalesce contiguous ones that come from the same place."""
    run: _Run | None = None
    for chunk in chunks:
        location = index.where.get(chunk.digest)
        local_key, start = (location.key, location.offset) if location else (None, chunk.offset)
        etag = location.etag if location else None
        if run and run.local_key == local_key and run.end == start and run.etag == etag \
                and run.end - run.start + chunk.length <= limit:  # fmt: skip
            run.append(chunk)
            continue
        if run:
            yield run
        run = _Run(local_key, start, start + chunk.length, [chunk], etag)
    if run:
        yield run


@dataclass
class PlannedPart:
    """One part of a rebuilt object: bytes [start, end) of the new object, copied from `copy` inside the
    store (whole chunks) or streamed through the worker."""

    start: int
    end: int
    copy: _Run | None = None
    chunks: list[Chunk] = field(default_factory=list)  # a copied part's chunks


def plan_parts(manifest: ObjectManifest, index: ChunkIndex, capabilities: Capabilities,
               part_size: int) -> list[PlannedPart]:  # fmt: skip
    """The object's parts. Uniform `part_size` parts, unless the store copies parts: then every run of
    reused chunks at least `part_size` long (and at least the store's minimum part) becomes copied parts,
    and the bytes between runs are streamed in parts of `part_size`, none below the minimum but the last."""
    size = manifest.size
    uniform = [PlannedPart(start, min(size, start + part_size)) for start in range(0, size, part_size)]
    if not capabilities.part_copy or not index.where:
        return uniform
    floor = max(capabilities.min_part_bytes or 1, part_size)
    minimum = capabilities.min_part_bytes or 1
    copied = [run for run in plan_runs(manifest.chunks, index, limit=MAX_COPY_PART)
              if run.local_key is not None and run.end - run.start >= floor]  # fmt: skip
    if not copied:
        return uniform
    plan: list[PlannedPart] = []
    cursor = 0
    for run in copied:
        chunks = list(run.chunks)
        gap_end = chunks[0].offset
        # The streamed bytes before this run must make a full part: borrow whole chunks from the run.
        while 0 < gap_end - cursor < minimum and chunks:
            gap_end += chunks.pop(0).length
        if sum(c.length for c in chunks) < floor:
            continue  # too short after lending: its bytes are streamed with the next gap
        plan += _streamed(cursor, gap_end, part_size, minimum)
        source_start = run.start + (gap_end - run.chunks[0].offset)
        plan += _copied(chunks, run, source_start, minimum)
        cursor = chunks[-1].offset + chunks[-1].length
    plan += _streamed(cursor, size, part_size, minimum, last=True)
    if capabilities.max_parts and len(plan) > capabilities.max_parts:
        return uniform
    if capabilities.max_part_bytes and any(p.end - p.start > capabilities.max_part_bytes for p in plan):
        return uniform
    return plan


def _streamed(start: int, end: int, part_size: int, minimum: int, last: bool = False) -> list[PlannedPart]:
    parts = [PlannedPart(s, min(end, s + part_size)) for s in range(start, end, part_size)]
    if len(parts) > 1 and parts[-1].end - parts[-1].start < minimum and not last:
        tail = parts.pop()
        parts[-1].end = tail.end  # a short tail joins the part before it
    return parts


def _copied(chunks: list[Chunk], run: _Run, source_start: int, minimum: int) -> list[PlannedPart]:
    """Whole-chunk pieces of at most MAX_COPY_PART; a short last piece joins the one before it."""
    pieces: list[list[Chunk]] = [[]]
    for chunk in chunks:
        if pieces[-1] and sum(c.length for c in pieces[-1]) + chunk.length > MAX_COPY_PART:
            pieces.append([])
        pieces[-1].append(chunk)
    if len(pieces) > 1 and sum(c.length for c in pieces[-1]) < minimum:
        pieces[-2] += pieces.pop()
    parts, offset = [], source_start
    for piece in pieces:
        length = sum(c.length for c in piece)
        source = _Run(run.local_key, offset, offset + length, piece, run.etag)
        parts.append(PlannedPart(piece[0].offset, piece[0].offset + length, source, piece))
        offset += length
    return parts


def layout_of(plan: list[PlannedPart], part_size: int) -> str:
    """'' for uniform parts (as every upload record before part copies), else a digest of the plan."""
    if all(p.copy is None and (p.end - p.start == part_size or p is plan[-1]) for p in plan):
        return ""
    hasher = blake3.blake3()
    for part in plan:
        where = f"{part.copy.local_key}@{part.copy.start}:{part.copy.etag}" if part.copy else "-"
        hasher.update(f"{part.start}-{part.end}-{where}\n".encode("utf-8", "surrogatepass"))
    return hasher.hexdigest()[:32]


class RootCheck:
    """The Merkle root of the chunks actually written, in order (chunking.merkle_root's definition)."""

    def __init__(self) -> None:
        self.hasher, self.length = blake3.blake3(), 0

    def add(self, chunk_digest: str, length: int) -> None:
        self.hasher.update(bytes.fromhex(chunk_digest))
        self.hasher.update(length.to_bytes(8, "little"))
        self.length += length

    def verify(self, manifest: ObjectManifest, where: str) -> None:
        if self.length != manifest.size or self.hasher.hexdigest() != manifest.root:
            raise CorruptionError(
                f"{where}: the bytes written ({self.length} B, root {self.hasher.hexdigest()[:16]}) are not the "
                f"source's ({manifest.size} B, root {manifest.root[:16]}); nothing was committed"
            )


def _in_flight(size: int, part_size: int) -> int:
    """Streamed parts in flight are lost if the worker dies: keep them under ~2.5% of the object."""
    return max(1, min(MAX_PARTS_IN_FLIGHT, size // (40 * part_size)))


class Rebuild:
    """Rebuild one object at the target from a source manifest."""

    def __init__(self, source: Store, target: Store, manifest: ObjectManifest, index: ChunkIndex,
                 report: Callable[[ObjectProgress, Totals], None], stop: threading.Event) -> None:  # fmt: skip
        self.source, self.target, self.manifest, self.index, self.report = source, target, manifest, index, report
        self.stop = stop
        self.totals = Totals()
        self.lock = threading.Lock()
        self.resumed_bytes = 0  # parts an earlier attempt uploaded, found through the upload record
        self.resumed_chunks = 0  # the chunks those parts hold
        self.where = f"{source.url}/{manifest.key} → {target.url}"

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted(f"{self.where}: cancelled before commit")

    def _count(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self.totals, name, getattr(self.totals, name) + amount)

    def _fetch_remote(self, chunk: Chunk) -> bytes:
        for _ in range(REFETCH_ATTEMPTS):
            data = _from_source(self.where, lambda: self.source.read_bytes(self.manifest.key, chunk.offset,
                                                                           chunk.offset + chunk.length))  # fmt: skip
            self._count(bytes_transferred=len(data), chunks_refetched=1)
            if digest(data) == chunk.digest:
                return data
        raise CorruptionError(
            f"{self.where}: chunk at {chunk.offset} (+{chunk.length}) fails its BLAKE3 check after "
            f"{REFETCH_ATTEMPTS + 1} reads; the source changed since fingerprinting or the path corrupts data. "
            "Nothing was committed."
        )

    def _verified_chunks(self, chunks: list[Chunk], check: RootCheck | None) -> Iterator[bytes]:
        """Each chunk's verified bytes, in order: reused ones read from the target, the rest from the source."""
        for run in plan_runs(chunks, self.index):
            remote = run.local_key is None
            store, key = (self.source, self.manifest.key) if remote else (self.target, run.local_key)
            try:
                opened = store.open_read(key, run.start, run.end)
            except (MissingObjectError, ObjectChangedError) as error:
                if remote:
                    raise SourceChanged.reading(self.where, error) from error
                # The index remembered a target object that is gone (deleted by someone, or a store that was
                # reset under a worker whose cache outlived it): these chunks come from the source.
                for chunk in run.chunks:
                    self._check_stop()
                    data = self._fetch_remote(chunk)
                    if check is not None:
                        check.add(chunk.digest, len(data))
                    yield data
                continue
            with opened as stream:
                for chunk in run.chunks:
                    self._check_stop()
                    data = _read_exact(stream, chunk.length)
                    if remote:
                        self._count(bytes_transferred=len(data), chunks_transferred=1)
                    else:
                        self._count(bytes_read_back=len(data), chunks_reused=1)
                    if len(data) != chunk.length or digest(data) != chunk.digest:
                        data = self._fetch_remote(chunk)  # corrupted in transit, or a stale local copy
                    if check is not None:
                        check.add(chunk.digest, len(data))
                    yield data

    def run(self) -> ObjectInfo:
        manifest, target = self.manifest, self.target
        part_size = part_size_for(manifest.size, target.capabilities)
        if manifest.size <= part_size:
            check = RootCheck()
            body = b"".join(self._verified_chunks(manifest.chunks, check))
            check.verify(manifest, self.where)
            self._check_stop()
            info = target.put_bytes(manifest.key, body)
        else:
            info = self._multipart(part_size)
        self.totals.objects_verified += 1
        return info

    def _multipart(self, part_size: int) -> ObjectInfo:
        manifest = self.manifest
        plan = plan_parts(manifest, self.index, self.target.capabilities, part_size)
        layout = layout_of(plan, part_size)
        writer, parts = open_upload(self.target, manifest.key, manifest.root, part_size,
                                    [p.end - p.start for p in plan], layout)  # fmt: skip
        progress = ObjectProgress(key=manifest.key, upload_id=writer.upload_id, parts=parts)
        done = plan[len(parts) - 1].end if parts else 0
        self.resumed_bytes = sum(p.size for p in parts)
        # The resumed prefix was verified chunk by chunk when it was written; the root check goes on from there.
        check = RootCheck()
        resumed = [c for c in manifest.chunks if c.offset + c.length <= done]
        self.resumed_chunks = len(resumed)
        for chunk in resumed:
            check.add(chunk.digest, chunk.length)
        pending: deque[Future[PartInfo]] = deque()
        in_flight = _in_flight(manifest.size, part_size)

        def settle(keep: int) -> None:
            """Wait for the oldest parts until at most `keep` are in flight; report them in order."""
            while len(pending) > keep:
                progress.parts.append(pending.popleft().result())
                self.report(progress, self.totals)

        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="skyshift-part") as uploads:
            try:
                self._upload(plan, len(parts), done, check, writer, uploads, pending, settle, in_flight)
                settle(0)
                check.verify(manifest, self.where)
                self._check_stop()
            except CorruptionError:
                for future in pending:
                    future.cancel()
                abort_upload(self.target, manifest.key, writer)
                raise
            except BaseException:
                for future in pending:
                    future.cancel()
                raise  # the parts and their record stay: the next attempt resumes after them
        info = writer.complete(progress.parts)
        close_upload(self.target, manifest.key)
        return info

    def _upload(self, plan: list[PlannedPart], first: int, done: int, check: RootCheck, writer, uploads,
                pending: deque, settle: Callable[[int], None], in_flight: int) -> None:  # fmt: skip
        """Submit parts first+1.. in order: copied parts as copy requests, streamed ones from a verified
        stream of the chunks between copied runs."""
        chunks = self.manifest.chunks
        number = first
        while number < len(plan):
            part = plan[number]
            if part.copy is not None:
                for chunk in part.chunks:
                    check.add(chunk.digest, chunk.length)  # the digests of the pinned version's bytes
                settle(in_flight - 1)
                pending.append(uploads.submit(self._copy_part, writer, number + 1, part))
                number += 1
                continue
            # A stretch of streamed parts, up to the next copied part: chunks overlapping it, from `done` on.
            last = number
            while last + 1 < len(plan) and plan[last + 1].copy is None:
                last += 1
            start, end = max(plan[number].start, done), plan[last].end
            stretch = [c for c in chunks if c.offset + c.length > start and c.offset < end]
            skip = start - stretch[0].offset if stretch else 0
            buffer = bytearray()
            for data in self._verified_chunks(stretch, check):
                buffer += data[skip:] if skip else data
                skip = 0
                while number <= last and len(buffer) >= plan[number].end - plan[number].start:
                    length = plan[number].end - plan[number].start
                    settle(in_flight - 1)
                    pending.append(uploads.submit(writer.put_part, number + 1, bytes(buffer[:length])))
                    del buffer[:length]
                    number += 1
            if number <= last or buffer:
                raise CorruptionError(f"{self.where}: the chunks do not fill the planned parts; nothing was committed")

    def _copy_part(self, writer, number: int, part: PlannedPart) -> PartInfo:
        """Copy a run inside the store; when its version changed meanwhile, stream it (verified) instead."""
        run = part.copy
        assert run is not None and run.local_key is not None
        copied = writer.copy_part(number, run.local_key, run.start, run.end, run.etag)
        if copied is not None:
            self._count(bytes_copied_server_side=run.end - run.start, chunks_reused=len(part.chunks))
            return copied
        body = b"".join(self._verified_chunks(part.chunks, None))
        return writer.put_part(number, body)


def copy_small(source: Store, target: Store, manifest: ObjectManifest, stop: threading.Event,
               durable: bool = True, staged: bytes | None = None) -> tuple[ObjectInfo, int]:  # fmt: skip
    """Copy a one-chunk object whole: read, verify its single digest, write; return (info, bytes read
    from the source). `staged`: its bytes as the source worker handed them over (verified the same way;
    read from the source when they do not match). `durable=False`: the caller flushes the target once."""
    where = f"{source.url}/{manifest.key} → {target.url}"
    read = 0
    for _ in range(REFETCH_ATTEMPTS + 1):
        if stop.is_set():
            raise Interrupted(f"{where}: cancelled before commit")
        if staged is not None:
            data, staged = staged, None
        else:
            data = _from_source(where, lambda: source.read_bytes(manifest.key)) if manifest.size else b""
            read += len(data)
        check = RootCheck()
        if data:
            check.add(digest(data), len(data))
        if check.length == manifest.size and check.hasher.hexdigest() == manifest.root:
            return target.put_bytes(manifest.key, data, durable=durable), read
    raise CorruptionError(
        f"{where}: the bytes read do not match the source's fingerprint after {REFETCH_ATTEMPTS + 1} reads "
        "(changed since fingerprinting, or corrupted in transit); nothing was committed"
    )


def _read_exact(stream, length: int) -> bytes:
    parts, left = [], length
    while left > 0:
        block = stream.read(left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)
