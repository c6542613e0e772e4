"""Fingerprinting one large object on every core: segments chunked in worker processes, stitched exactly.

fastcdc's Cython kernel holds the GIL, so threads cannot chunk one object on two cores. A large
object is cut into `SEGMENT`-byte segments; a process per core reads its segment straight from the
store (plus `max_size` bytes beyond, so its last chunk is cut where a whole-object pass would cut
it), chunks it as if a chunk began at the segment's start, and hashes the chunks.

A content-defined chunking depends only on where its first chunk starts: once the whole-object
sequence and a segment's sequence share a cut, they agree from there on. The stitch walks the
object in order: at the end of the true sequence so far it re-chunks the head of the segment that
follows (its first bytes come back with its chunks) until a cut lands on one of that segment's
cuts, then takes the segment's chunks. The result is the chunk list a single pass produces, cut
for cut, so manifests and caches do not depend on the number of cores. Where no cut is shared
within the head (a run of identical bytes longer than the head crossing a segment start) the
stitch reads on from the store in this process until one is: slower, never different.
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from fastcdc.fastcdc_cy import fastcdc_cy

from activities.stores import ObjectInfo, Store, StoreSpec, open_store
from activities.transfer.chunking import Chunk, ChunkParams, chunk_stream, digest

MiB = 1 << 20
#: Bytes each process chunks at a time: big enough that the stitch's re-chunking (a few chunks) is noise.
SEGMENT = 64 * MiB
#: Objects this large are spread over processes (smaller ones take well under a second on one core).
PARALLEL_FROM = 4 * SEGMENT
#: Head of each segment returned for the stitch, in units of the largest chunk.
HEAD_CHUNKS = 4


class Cancelled(RuntimeError):
    """The caller's stop event was set while segments were being chunked."""


def processes() -> int:
    """Processes that fingerprint one object: `SKYSHIFT_FINGERPRINT_PROCESSES`, else the usable cores."""
    configured = os.environ.get("SKYSHIFT_FINGERPRINT_PROCESSES")
    if configured:
        return max(1, int(configured))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worth_it(size: int) -> bool:
    # A daemonic process (a multiprocessing worker) may not start processes of its own.
    return size >= PARALLEL_FROM and processes() > 1 and not multiprocessing.current_process().daemon


@dataclass
class Segment:
    start: int
    stop: int = 0
    chunks: list[Chunk] | None = None
    head: bytes = b""
    starts: dict[int, int] | None = None


# -- in the worker processes ------------------------------------------------------------------------

_stores: dict[str, Store] = {}
#: One chunking buffer per pool process, reused by every segment it chunks (a process runs one at a time).
_scratch = bytearray()


class _Head(io.RawIOBase):
    """A stream that keeps a copy of its first `size` bytes."""

    def __init__(self, stream, size: int) -> None:
        self.stream, self.size, self.head = stream, size, bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = self.stream.readinto(buffer)
        if n and len(self.head) < self.size:
            self.head += memoryview(buffer)[: min(n, self.size - len(self.head))]
        return n


def chunk_segment(spec_json: str, key: str, start: int, stop: int, end: int, sizes: tuple[int, int, int],
                  head: int) -> tuple[list[tuple[int, int, bytes]], bytes]:  # fmt: skip
    """Chunks starting in [start, stop) of bytes [start, end), chunked as if a chunk began at `start`,
    and the first `head` bytes. Runs in a pool process: it opens the store itself."""
    store = _stores.get(spec_json)
    if store is None:
        store = _stores[spec_json] = open_store(StoreSpec.model_validate_json(spec_json))
    global _scratch
    params = ChunkParams(min_size=sizes[0], avg_size=sizes[1], max_size=sizes[2])
    found: list[tuple[int, int, bytes]] = []
    window = max(64 * MiB, 4 * params.max_size)
    if len(_scratch) < window:
        _scratch = bytearray(window)
    with store.open_read(key, start, end) as stream:
        tee = _Head(stream, head)
        for chunk, _ in chunk_stream(io.BufferedReader(tee, 8 * MiB), params, window, with_data=False,
                                     scratch=_scratch):  # fmt: skip
            if start + chunk.offset >= stop:
                break
            found.append((start + chunk.offset, chunk.length, bytes.fromhex(chunk.digest)))
    return found, bytes(tee.head)


# -- in the activity's process ----------------------------------------------------------------------

_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _executor(size: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            # spawn, not fork: the worker process runs threads (Temporal's runtime, pools) a fork would copy mid-lock.
            _pool = ProcessPoolExecutor(max_workers=size, mp_context=multiprocessing.get_context("spawn"))
            _pool_size = size
        return _pool


def shutdown() -> None:
    """Stop the pool's processes and wait for them (a process that owns the pool calls this before it
    exits). Waiting matters: a multiprocessing child joins its children before interpreter shutdown
    would tell the pool's processes to stop, so without it the child waits forever (seen: a bench
    worker process still waiting for its idle pool 15 minutes after its last task)."""
    _reset(wait=True)


atexit.register(shutdown)


def _reset(wait: bool = False) -> None:
    """Drop the pool (a broken one is replaced on next use); `wait`: until its processes have exited."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=wait, cancel_futures=True)


def chunk_object(store: Store, info: ObjectInfo, params: ChunkParams, progress: Callable[[int], None] | None = None,
                 stop: threading.Event | None = None, workers: int | None = None
                 ) -> tuple[list[Chunk], int]:  # fmt: skip
    """The object's chunks, computed by `workers` processes; and the bytes read again by the stitch."""
    size, spec = info.size, store.spec.model_dump_json()
    head = HEAD_CHUNKS * params.max_size
    sizes = (params.min_size, params.avg_size, params.max_size)
    segments = [Segment(start=s, stop=min(size, s + SEGMENT)) for s in range(0, size, SEGMENT)]
    try:
        pool = _executor(workers or processes())
        futures: dict[Future, Segment] = {
            pool.submit(chunk_segment, spec, info.key, seg.start, seg.stop, min(size, seg.stop + params.max_size),
                        sizes, head): seg
            for seg in segments
        }  # fmt: skip
    except BrokenProcessPool:
        _reset()
        raise
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                seg = futures[future]
                try:
                    found, seg.head = future.result()
                except BrokenProcessPool:
                    _reset()
                    raise
                seg.chunks = [Chunk(offset=o, length=n, digest=d.hex()) for o, n, d in found]
                seg.starts = {c.offset: i for i, c in enumerate(seg.chunks)}
                if progress is not None:
                    progress(seg.stop - seg.start)
            if stop is not None and stop.is_set():
                raise Cancelled(f"{store.url}/{info.key}: fingerprinting stopped")
    finally:
        for future in pending:
            future.cancel()
    return stitch(segments, size, params, lambda offset: store.open_read(info.key, offset))


def stitch(segments: list[Segment], size: int, params: ChunkParams, reopen: Callable[[int], io.BufferedIOBase]
           ) -> tuple[list[Chunk], int]:  # fmt: skip
    """The whole-object chunk sequence from per-segment chunkings (see the module docstring); and the
    bytes read again from the store where a segment's head was not enough."""
    chain: list[Chunk] = []
    position, reread, index = 0, 0, 0
    while position < size:
        while index + 1 < len(segments) and segments[index + 1].start <= position:
            index += 1
        seg = segments[index]
        assert seg.chunks is not None and seg.starts is not None
        at = seg.starts.get(position)
        if at is not None:  # in step with this segment: its chunks are the true ones
            chain.extend(seg.chunks[at:])
            position = chain[-1].offset + chain[-1].length
            continue
        moved = _rechunk_head(seg, position, size, params, chain)
        if moved:
            position = moved
            continue
        position, read = _rechunk_store(segments, index, position, size, params, chain, reopen)
        reread += read
    return chain, reread


def _rechunk_head(seg: Segment, position: int, size: int, params: ChunkParams, chain: list[Chunk]) -> int:
    """Chunk from `position` within the segment's head until a cut meets one of the segment's; return the
    new position, or 0 when the head holds too few bytes to decide a single cut."""
    assert seg.starts is not None
    offset = position - seg.start
    if offset < 0 or offset >= len(seg.head):
        return 0
    data = memoryview(seg.head)[offset:]
    complete = seg.start + len(seg.head) >= size  # the head reaches the object's end
    moved = 0
    for item in fastcdc_cy(data, params.min_size, params.avg_size, params.max_size):
        if not complete and item.offset + params.max_size > len(data):
            break  # this cut could depend on bytes past the head
        piece = data[item.offset : item.offset + item.length]
        chain.append(Chunk(offset=position + item.offset, length=item.length, digest=digest(piece)))
        moved = position + item.offset + item.length
        if moved in seg.starts or moved >= size:
            break
    return moved


def _rechunk_store(segments: list[Segment], index: int, position: int, size: int, params: ChunkParams,
                   chain: list[Chunk], reopen: Callable[[int], io.BufferedIOBase]) -> tuple[int, int]:  # fmt: skip
    """Chunk from `position` reading the store until a cut meets a segment's cut (or the object ends)."""
    read = 0
    with reopen(position) as stream:
        for chunk, _ in chunk_stream(stream, params, with_data=False):
            chunk = Chunk(offset=position + chunk.offset, length=chunk.length, digest=chunk.digest)
            chain.append(chunk)
            read += chunk.length
            end = chunk.offset + chunk.length
            while index + 1 < len(segments) and segments[index + 1].start <= end:
                index += 1
            starts = segments[index].starts
            if end >= size or (starts is not None and end in starts):
                return end, read
    return chain[-1].offset + chain[-1].length if chain else size, read
