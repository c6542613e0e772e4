"""Content-defined chunking (FastCDC) of streams, with a BLAKE3 digest per chunk.

Chunk boundaries depend only on content, so an insertion near the start of a file moves the
boundaries of O(1) chunks and every later chunk keeps its digest: only the changed chunks cross
clouds. fastcdc's Cython kernel chunks a buffer; this module drives it over a stream with a
bounded window, cutting exactly where whole-file chunking would (a cut depends on at most
`max_size` bytes after a chunk's start, so chunks are accepted only while that much is buffered).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import blake3
from fastcdc.fastcdc_cy import fastcdc_cy
from pydantic import BaseModel, Field, model_validator

KiB, MiB = 1 << 10, 1 << 20


class ChunkParams(BaseModel):
    """FastCDC sizes in bytes. The same params must fingerprint both versions of an object."""

    min_size: int = Field(ge=64, le=64 * MiB)
    avg_size: int = Field(ge=256, le=256 * MiB)
    max_size: int = Field(ge=1024, le=1024 * MiB)

    @model_validator(mode="after")
    def _ordered(self) -> ChunkParams:
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(
                f"chunk sizes must satisfy min <= avg <= max, got {self.min_size}/{self.avg_size}/{self.max_size}"
            )
        return self


#: Size classes: (largest object size, params). Few classes, so an object that grows a little keeps
#: its class and its boundaries; the numbers are justified by `make bench` (README table).
SIZE_CLASSES: list[tuple[int, ChunkParams]] = [
    (4 * MiB, ChunkParams(min_size=16 * KiB, avg_size=64 * KiB, max_size=256 * KiB)),
    (256 * MiB, ChunkParams(min_size=64 * KiB, avg_size=256 * KiB, max_size=1 * MiB)),
]
LARGE = ChunkParams(min_size=256 * KiB, avg_size=1 * MiB, max_size=4 * MiB)


def params_for_size(size: int) -> ChunkParams:
    return next((params for limit, params in SIZE_CLASSES if size <= limit), LARGE)


class Chunk(BaseModel):
    offset: int
    length: int
    digest: str = Field(description="BLAKE3 of the chunk, hex")


def digest(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def chunk_stream(stream: BinaryIO, params: ChunkParams, window: int = 64 * MiB) -> Iterator[tuple[Chunk, bytes]]:
    """Yield (chunk, its bytes) for a stream, holding at most about `window` bytes."""
    window = max(window, 4 * params.max_size)
    buffer = bytearray()
    base = 0  # stream offset of buffer[0]
    eof = False
    while True:
        while not eof and len(buffer) < window:
            block = stream.read(window - len(buffer))
            if not block:
                eof = True
            else:
                buffer += block
        if not buffer:
            return
        cuts, consumed = [], 0
        with memoryview(buffer) as view:
            chunker = fastcdc_cy(view, params.min_size, params.avg_size, params.max_size)
            for item in chunker:
                # Near the window's end a cut may be premature: re-chunk from there with more data.
                if not eof and item.offset + params.max_size > len(buffer):
                    break
                cuts.append((item.offset, item.length))
                consumed = item.offset + item.length
            chunker.close()  # it holds a view of the buffer until closed
            del chunker
        for start, length in cuts:
            data = bytes(buffer[start : start + length])
            yield Chunk(offset=base + start, length=length, digest=digest(data)), data
        if eof and consumed == len(buffer):
            return
        del buffer[:consumed]
        base += consumed


def merkle_root(chunks: list[Chunk]) -> str:
    """Root over the ordered chunk digests: equal roots mean equal bytes, chunk by chunk."""
    hasher = blake3.blake3()
    for chunk in chunks:
        hasher.update(bytes.fromhex(chunk.digest))
        hasher.update(chunk.length.to_bytes(8, "little"))
    return hasher.hexdigest()
