"""The delta engine: rebuild changed objects at the target from chunks it already holds plus
ranged reads of the missing chunks from the source, verified as written, committed atomically.

Runs on the target's worker. For each object whose source manifest differs from the target's:
chunks found in the target (the object's old version, or a sibling object holding that chunk) are
read locally; runs of adjacent missing chunks are fetched from the source in one ranged GET each.
Every chunk is checked against its BLAKE3 digest before it is written (a mismatch is re-fetched),
and the Merkle root of what was written must equal the source manifest's root before the object
is published: the multipart writer keeps the old version readable until that commit. Multipart
uploads are recorded in the target's metadata area (`uploads.py`), so a later attempt or a later
run continues after the parts already uploaded. A stop event ends the work between chunks when
the activity is cancelled, so nothing is committed after a rollback began.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import blake3
from pydantic import BaseModel, Field

from activities.stores import ObjectInfo, PartInfo, Store
from activities.stores.base import part_size_for
from activities.transfer.chunking import Chunk, digest
from activities.transfer.manifest import ObjectManifest, fingerprint
from activities.transfer.uploads import abort_upload, close_upload, open_upload

MiB = 1 << 20
#: Bytes fetched past the last committed part are lost if the worker dies: the part size bounds
#: what a resumed attempt re-sends (S3's minimum part is 5 MiB). Runs are streamed chunk by chunk,
#: so a long run costs one request, not memory; MAX_RANGE only bounds one request's duration.
PART_SIZE = 8 * MiB
MAX_PARTS_IN_FLIGHT = 4
MAX_RANGE = 1024 * MiB
REFETCH_ATTEMPTS = 2


class CorruptionError(RuntimeError):
    """A chunk kept failing its BLAKE3 check, or the written root differs: the object is not committed."""


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


class ChunkIndex:
    """Where the target already holds each chunk: old versions and sibling objects."""

    #: Siblings indexed per directory: enough for a checkpoint beside its base or appended shards,
    #: bounded so a flat directory of a million objects is never indexed per batch.
    MAX_SIBLINGS = 64

    def __init__(self) -> None:
        self.where: dict[str, Location] = {}

    def add(self, manifest: ObjectManifest) -> None:
        for chunk in manifest.chunks:
            self.where.setdefault(chunk.digest, Location(manifest.key, chunk.offset))

    @classmethod
    def for_changed(cls, target: Store, changed: list[ObjectManifest]) -> ChunkIndex:
        """Index the target objects beside the changed large objects (fingerprinted in-region, cached).

        Each directory holding a changed large object is listed once per batch; only objects too
        large to be copied whole are indexed, at most MAX_SIBLINGS of them, so a flat directory of a
        million small files costs nothing here.
        """
        from activities.transfer.chunking import SMALL_OBJECT
        from activities.transfer.layout import user_objects

        index = cls()
        directories = sorted({m.key.rpartition("/")[0] for m in changed if not m.small})
        for directory in directories:
            seen = 0
            candidates = user_objects(target, directory) if directory else user_objects(target)
            for info in candidates:
                if info.key.rpartition("/")[0] != directory or info.size <= SMALL_OBJECT:
                    continue
                index.add(fingerprint(target, info)[0])
                seen += 1
                if seen >= cls.MAX_SIBLINGS:
                    break
        return index


@dataclass
class _Run:
    """Adjacent chunks read with one ranged request: from the source, or from one target object."""

    local_key: str | None
    start: int
    end: int
    chunks: list[Chunk]

    def append(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.end += chunk.length


def plan_runs(chunks: list[Chunk], index: ChunkIndex) -> Iterator[_Run]:
    """Group chunks into runs: coalesce contiguous ones that come from the same place."""
    run: _Run | None = None
    for chunk in chunks:
        location = index.where.get(chunk.digest)
        local_key, start = (location.key, location.offset) if location else (None, chunk.offset)
        if run and run.local_key == local_key and run.end == start and run.end - run.start + chunk.length <= MAX_RANGE:
            run.append(chunk)
            continue
        if run:
            yield run
        run = _Run(local_key, start, start + chunk.length, [chunk])
    if run:
        yield run


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


class Rebuild:
    """Rebuild one object at the target from a source manifest."""

    def __init__(self, source: Store, target: Store, manifest: ObjectManifest, index: ChunkIndex,
                 report: Callable[[ObjectProgress, Totals], None], stop: threading.Event) -> None:  # fmt: skip
        self.source, self.target, self.manifest, self.index, self.report = source, target, manifest, index, report
        self.stop = stop
        self.totals = Totals()
        self.resumed_bytes = 0  # parts an earlier attempt uploaded, found through the upload record
        self.where = f"{source.url}/{manifest.key} → {target.url}"

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted(f"{self.where}: cancelled before commit")

    def _fetch_remote(self, chunk: Chunk) -> bytes:
        for _ in range(REFETCH_ATTEMPTS):
            data = self.source.read_bytes(self.manifest.key, chunk.offset, chunk.offset + chunk.length)
            self.totals.bytes_transferred += len(data)
            self.totals.chunks_refetched += 1
            if digest(data) == chunk.digest:
                return data
        raise CorruptionError(
            f"{self.where}: chunk at {chunk.offset} (+{chunk.length}) fails its BLAKE3 check after "
            f"{REFETCH_ATTEMPTS + 1} reads; the source changed since fingerprinting or the path corrupts data. "
            "Nothing was committed."
        )

    def _verified_chunks(self, start_offset: int, check: RootCheck) -> Iterator[bytes]:
        """Each chunk's verified bytes, in order, from the chunk that holds `start_offset` on."""
        chunks = [c for c in self.manifest.chunks if c.offset + c.length > start_offset]
        for run in plan_runs(chunks, self.index):
            remote = run.local_key is None
            store, key = (self.source, self.manifest.key) if remote else (self.target, run.local_key)
            with store.open_read(key, run.start, run.end) as stream:
                for chunk in run.chunks:
                    self._check_stop()
                    data = _read_exact(stream, chunk.length)
                    if remote:
                        self.totals.bytes_transferred += len(data)
                        self.totals.chunks_transferred += 1
                    else:
                        self.totals.chunks_reused += 1
                    if len(data) != chunk.length or digest(data) != chunk.digest:
                        data = self._fetch_remote(chunk)  # corrupted in transit, or a stale local copy
                    check.add(digest(data), len(data))
                    yield data

    def run(self) -> ObjectInfo:
        manifest, target = self.manifest, self.target
        part_size = part_size_for(manifest.size, target.capabilities, PART_SIZE)
        if manifest.size <= part_size:
            check = RootCheck()
            body = b"".join(self._verified_chunks(0, check))
            check.verify(manifest, self.where)
            self._check_stop()
            info = target.put_bytes(manifest.key, body)
        else:
            info = self._multipart(part_size)
        self.totals.objects_verified += 1
        return info

    def _multipart(self, part_size: int) -> ObjectInfo:
        manifest = self.manifest
        # Parts in flight are lost if the worker dies: keep them under ~2.5% of the object.
        in_flight = max(1, min(MAX_PARTS_IN_FLIGHT, manifest.size // (40 * part_size)))
        writer, parts = open_upload(self.target, manifest.key, manifest.root, part_size)
        progress = ObjectProgress(key=manifest.key, upload_id=writer.upload_id, parts=parts)
        done = sum(p.size for p in parts)
        self.resumed_bytes = done
        # The resumed prefix was verified chunk by chunk when it was written; the root check goes on from there.
        check = RootCheck()
        resumed = [c for c in manifest.chunks if c.offset + c.length <= done]
        for chunk in resumed:
            check.add(chunk.digest, chunk.length)
        first = len(resumed)
        boundary = manifest.chunks[first].offset if first < len(manifest.chunks) else manifest.size
        skip = done - boundary
        buffer = bytearray()
        pending: deque[Future[PartInfo]] = deque()
        next_number = len(parts) + 1

        def settle(keep: int) -> None:
            """Wait for the oldest parts until at most `keep` are in flight; report them in order."""
            while len(pending) > keep:
                progress.parts.append(pending.popleft().result())
                self.report(progress, self.totals)

        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="skyshift-part") as uploads:
            try:
                for data in self._verified_chunks(boundary, check):
                    buffer += data[skip:]
                    skip = 0
                    while len(buffer) >= part_size:
                        settle(in_flight - 1)
                        pending.append(uploads.submit(writer.put_part, next_number, bytes(buffer[:part_size])))
                        next_number += 1
                        del buffer[:part_size]
                if buffer or next_number == 1:
                    pending.append(uploads.submit(writer.put_part, next_number, bytes(buffer)))
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


def copy_small(source: Store, target: Store, manifest: ObjectManifest, stop: threading.Event) -> tuple[ObjectInfo, int]:
    """Copy a one-chunk object whole: read, verify its single digest, write; return (info, bytes read)."""
    where = f"{source.url}/{manifest.key} → {target.url}"
    read = 0
    for _ in range(REFETCH_ATTEMPTS + 1):
        if stop.is_set():
            raise Interrupted(f"{where}: cancelled before commit")
        data = source.read_bytes(manifest.key) if manifest.size else b""
        read += len(data)
        check = RootCheck()
        if data:
            check.add(digest(data), len(data))
        if check.length == manifest.size and check.hasher.hexdigest() == manifest.root:
            return target.put_bytes(manifest.key, data), read
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


def needs_transfer(target: Store, source_manifest: ObjectManifest, target_info: ObjectInfo | None) -> bool:
    """Equal Merkle roots mean equal bytes; the target side is fingerprinted in-region (cached)."""
    if target_info is None:
        return True
    if target_info.size != source_manifest.size:
        return True
    return fingerprint(target, target_info)[0].root != source_manifest.root
