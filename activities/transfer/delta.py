"""The delta engine: rebuild changed objects at the target from chunks it already holds plus
ranged reads of the missing chunks from the source, verified chunk by chunk, committed atomically.

Runs on the target's worker. For each object whose source manifest differs from the target's:
chunks found in the target (the object's old version, or a sibling object holding that chunk) are
read locally; runs of adjacent missing chunks are fetched from the source in one ranged GET each.
Every chunk is checked against its BLAKE3 digest before it is written; a mismatch is re-fetched
and never committed. The new object is written through the store's multipart writer, invisible
until complete, so the old version stays readable until the commit. Progress (upload id, parts)
is reported after every part so a restarted attempt resumes where the last one stopped.
"""

from __future__ import annotations

import math
import posixpath
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from pydantic import BaseModel, Field

from activities.stores import ObjectInfo, PartInfo, Store
from activities.transfer.chunking import Chunk, digest
from activities.transfer.manifest import ObjectManifest, fingerprint, save_manifest

MiB = 1 << 20
#: Bytes fetched past the last committed part are lost if the worker dies: the part size bounds
#: what a resumed attempt re-sends (S3's minimum part is 5 MiB). Runs are streamed chunk by chunk,
#: so a long run costs one request, not memory; MAX_RANGE only bounds one request's duration.
PART_SIZE = 8 * MiB
MAX_PARTS_IN_FLIGHT = 4
MAX_RANGE = 1024 * MiB
REFETCH_ATTEMPTS = 2


class CorruptionError(RuntimeError):
    """A chunk kept failing its BLAKE3 check: the object is not committed."""


class ObjectProgress(BaseModel):
    key: str
    upload_id: str
    parts: list[PartInfo] = Field(default_factory=list)


class Totals(BaseModel):
    objects_total: int = 0
    objects_changed: int = 0
    objects_deleted: int = 0
    bytes_total: int = 0
    bytes_transferred: int = Field(0, description="Object bytes read from the source (crossed the boundary)")
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

    def __init__(self) -> None:
        self.where: dict[str, Location] = {}

    def add(self, manifest: ObjectManifest) -> None:
        for chunk in manifest.chunks:
            self.where.setdefault(chunk.digest, Location(manifest.key, chunk.offset))

    @classmethod
    def for_keys(cls, target: Store, keys: list[str]) -> ChunkIndex:
        """Index the target objects in the same directories as `keys` (fingerprinted in-region).

        Scoped to siblings so a batch never indexes a whole million-object dataset: old versions,
        appended shards and a new checkpoint beside its base are all found.
        """
        index = cls()
        for directory in sorted({posixpath.dirname(key) for key in keys}):
            for info in target.list(directory) if directory else target.list():
                if info.key.startswith(".skyshift/") or posixpath.dirname(info.key) != directory:
                    continue
                index.add(fingerprint(target, info)[0])
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


class Rebuild:
    """Rebuild one object at the target from a source manifest."""

    def __init__(self, source: Store, target: Store, manifest: ObjectManifest, index: ChunkIndex,
                 report: Callable[[ObjectProgress, Totals], None]) -> None:  # fmt: skip
        self.source, self.target, self.manifest, self.index, self.report = source, target, manifest, index, report
        self.totals = Totals()

    def _fetch_remote(self, chunk: Chunk) -> bytes:
        for _ in range(REFETCH_ATTEMPTS):
            data = self.source.read_bytes(self.manifest.key, chunk.offset, chunk.offset + chunk.length)
            self.totals.bytes_transferred += len(data)
            self.totals.chunks_refetched += 1
            if digest(data) == chunk.digest:
                return data
        raise CorruptionError(
            f"{self.source.url}/{self.manifest.key}: chunk at {chunk.offset} (+{chunk.length}) fails its BLAKE3 check "
            f"after {REFETCH_ATTEMPTS + 1} reads; the source changed since fingerprinting or the path corrupts data. "
            "Nothing was committed."
        )

    def _verified_chunks(self, start_offset: int) -> Iterator[bytes]:
        """Each chunk's verified bytes, in order, from the chunk that holds `start_offset` on."""
        chunks = [c for c in self.manifest.chunks if c.offset + c.length > start_offset]
        for run in plan_runs(chunks, self.index):
            remote = run.local_key is None
            store, key = (self.source, self.manifest.key) if remote else (self.target, run.local_key)
            with store.open_read(key, run.start, run.end) as stream:
                for chunk in run.chunks:
                    data = _read_exact(stream, chunk.length)
                    if remote:
                        self.totals.bytes_transferred += len(data)
                        self.totals.chunks_transferred += 1
                    else:
                        self.totals.chunks_reused += 1
                    if len(data) != chunk.length or digest(data) != chunk.digest:
                        data = self._fetch_remote(chunk)  # corrupted in transit, or a stale local copy
                    yield data

    def run(self, resume: ObjectProgress | None) -> ObjectInfo:
        manifest, target = self.manifest, self.target
        if manifest.size <= PART_SIZE and resume is None:
            info = target.put_bytes(manifest.key, b"".join(self._verified_chunks(0)))
        else:
            info = self._multipart(resume)
        save_manifest(target, manifest.model_copy(update={"etag": info.etag}))
        return info

    def _multipart(self, resume: ObjectProgress | None) -> ObjectInfo:
        part_size = max(PART_SIZE, math.ceil(self.manifest.size / 9_000))  # S3 allows 10,000 parts
        # Parts in flight are lost if the worker dies: keep them under ~2.5% of the object.
        in_flight = max(1, min(MAX_PARTS_IN_FLIGHT, self.manifest.size // (40 * part_size)))
        writer = self.target.open_multipart(self.manifest.key, resume.upload_id if resume else None)
        parts = list(resume.parts) if resume else []
        progress = ObjectProgress(key=self.manifest.key, upload_id=writer.upload_id, parts=parts)
        done = sum(p.size for p in progress.parts)
        buffer = bytearray()
        skip = done - max((c.offset for c in self.manifest.chunks if c.offset <= done), default=0)
        pending: deque[Future[PartInfo]] = deque()
        next_number = len(progress.parts) + 1

        def settle(keep: int) -> None:
            """Wait for the oldest parts until at most `keep` are in flight; report them in order."""
            while len(pending) > keep:
                progress.parts.append(pending.popleft().result())
                self.report(progress, self.totals)

        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="skyshift-part") as uploads:
            try:
                for data in self._verified_chunks(done):
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
            except CorruptionError:
                for future in pending:
                    future.cancel()
                writer.abort()
                raise
        return writer.complete(progress.parts)


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
