"""Object manifests: chunks, their BLAKE3 digests and a Merkle root, computed from the bytes.

A manifest is computed by the worker that can read the object in-region and cached on that worker
(`activities.transfer.cache`) for the exact version it describes. Nothing is ever read back from a
store as a manifest: the stores hold only the user's data, so a planted file cannot steer what is
committed, and the target checks every written byte against the source worker's manifest anyway.

`fingerprint_many` is the batch form a key range uses: one cache query for the range, small objects
(one chunk, one BLAKE3) read in slices by a bounded pool, large ones chunked each on its own (on
every core: `parallel`), one cache write for the range.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from activities.stores import ObjectInfo, Store, StoreError
from activities.transfer import parallel
from activities.transfer.cache import manifest_cache
from activities.transfer.chunking import (
    SMALL_OBJECT,
    Chunk,
    ObjectManifest,
    chunk_stream,
    digest,
    merkle_root,
    params_for_size,
)
from activities.transfer.pool import Counter, raise_if_cancelled, run_pool, slices

#: Report progress while chunking a large object every this many bytes (heartbeats show it).
PROGRESS_EVERY = 16 << 20


def small_manifest(info: ObjectInfo, data: bytes) -> ObjectManifest:
    """The manifest of a small object from its bytes (one chunk, one BLAKE3)."""
    chunks = [Chunk(offset=0, length=len(data), digest=digest(data))] if data else []
    return ObjectManifest(key=info.key, size=info.size, etag=info.etag,
                                          params=params_for_size(info.size), chunks=chunks,
                                          root=merkle_root(chunks))  # fmt: skip


def compute_manifest(store: Store, info: ObjectInfo, progress: Callable[[int], None] | None = None,
                     stop: threading.Event | None = None) -> ObjectManifest:  # fmt: skip
    """Read the object once and fingerprint it; a size that differs from the listing is an error.

    `progress(bytes)` is called as a large object is chunked and `stop` is checked as it goes, so a
    caller can heartbeat and cancel during an object that takes minutes."""
    params = params_for_size(info.size)
    if info.size <= SMALL_OBJECT:
        data = store.read_bytes(info.key)
        if len(data) != info.size:
            raise StoreError(f"{store.url}/{info.key}: read {len(data)} bytes, listed {info.size} (changed meanwhile?)")
        return small_manifest(info, data)
    chunks: list[Chunk] | None = None
    if parallel.worth_it(info.size):
        try:
            chunks, _ = parallel.chunk_object(store, info, params, progress, stop)
        except BrokenProcessPool:
            chunks = None  # a pool process died (memory, a signal): this object is chunked here instead
    if chunks is None:
        chunks, reported = [], 0
        with store.open_read(info.key) as stream:
            for chunk, _ in chunk_stream(stream, params, with_data=False, size_hint=info.size):
                chunks.append(chunk)
                if chunk.offset - reported >= PROGRESS_EVERY:
                    if stop is not None and stop.is_set():
                        raise parallel.Cancelled(f"{store.url}/{info.key}: fingerprinting stopped")
                    if progress is not None:
                        progress(chunk.offset - reported)
                    reported = chunk.offset
        if progress is not None:
            progress(info.size - reported)
    if sum(c.length for c in chunks) != info.size:
        raise StoreError(f"{store.url}/{info.key}: read {sum(c.length for c in chunks)} bytes, listed {info.size}")
    return ObjectManifest(
        key=info.key, size=info.size, etag=info.etag, params=params, chunks=chunks, root=merkle_root(chunks)
    )


def load_manifest(store: Store, info: ObjectInfo) -> ObjectManifest | None:
    """This worker's cached manifest of exactly this version of the object, if it has one."""
    return manifest_cache().get(store, info)


def fingerprint(store: Store, info: ObjectInfo) -> tuple[ObjectManifest, bool]:
    """The object's manifest and whether its bytes had to be read (False: served from this worker's cache)."""
    cache = manifest_cache()
    cached = cache.get(store, info)
    if cached is not None:
        return cached, False
    manifest = compute_manifest(store, info)
    cache.put(store, manifest)
    return manifest, True


@dataclass
class Fingerprinted:
    """Manifests of a batch of objects, by key; the bytes read to compute the uncached ones; and the bytes
    of the uncached small objects kept (up to a budget) to hand to the target with the manifests."""

    manifests: dict[str, ObjectManifest]
    bytes_read: int = 0
    bodies: dict[str, bytes] = field(default_factory=dict)


def fingerprint_many(store: Store, infos: list[ObjectInfo], stop: threading.Event, beat: Callable[[], None],
                     hashed: Counter | None = None, keep_bytes: int = 0) -> Fingerprinted:  # fmt: skip
    """Manifests of many objects of one store: cached ones in one query, the rest read with bounded
    concurrency (`store.capabilities.parallel_requests`), small ones in slices; one cache write.

    `keep_bytes`: keep the bytes of small objects that had to be read (new or changed since this worker
    last saw them: the ones the target most likely lacks), up to that many bytes in all."""
    cache = manifest_cache()
    found = cache.get_many(store, infos)
    missing = [info for info in infos if info.key not in found]
    counter = hashed or Counter()
    workers = store.capabilities.parallel_requests
    bodies: dict[str, bytes] = {}
    budget = Counter(keep_bytes)

    def small_task(part: list[ObjectInfo]) -> Callable[[], list[ObjectManifest]]:
        def task() -> list[ObjectManifest]:
            done = []
            for info in part:
                raise_if_cancelled(stop)
                data = store.read_bytes(info.key) if info.size else b""
                if len(data) != info.size:
                    raise StoreError(f"{store.url}/{info.key}: read {len(data)} bytes, listed {info.size} "
                                     "(changed meanwhile?)")  # fmt: skip
                done.append(small_manifest(info, data))
                if keep_bytes and budget.take(len(data)):
                    bodies[info.key] = data
            counter.add(sum(i.size for i in part))
            return done

        return task

    def large_task(info: ObjectInfo) -> Callable[[], list[ObjectManifest]]:
        def task() -> list[ObjectManifest]:
            raise_if_cancelled(stop)
            return [compute_manifest(store, info, counter.add, stop)]

        return task

    small = [info for info in missing if info.size <= SMALL_OBJECT]
    large = [info for info in missing if info.size > SMALL_OBJECT]
    tasks = [small_task(list(part)) for part in slices(small, workers)] + [large_task(info) for info in large]
    computed: list[ObjectManifest] = []
    outcomes = run_pool(tasks, workers, stop, beat)
    raise_if_cancelled(stop)
    for _, outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        computed.extend(outcome)
    cache.put_many(store, computed)
    found.update((m.key, m) for m in computed)
    return Fingerprinted(manifests=found, bytes_read=sum(i.size for i in missing), bodies=bodies)
