"""A store object as a seekable file made of ranged reads: headers and zip directories without downloads.

`zipfile` reads a torch file's central directory from its end and each record where it lies; safetensors
needs 8 bytes and a header. Backed by `Store.open_read(key, start, end)`, each read fetches only what is
asked (rounded up to a small buffer), so inspecting a 10 GB shard's header costs kilobytes, not 10 GB.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

from activities.stores import Store

#: Read-ahead of the buffered reader: small, because most reads are headers and zip records.
BUFFER = 256 << 10
#: Bytes per read when a range is streamed through a hasher.
STREAM_STEP = 8 << 20
RESUMES = 3


def _transient() -> tuple[type[BaseException], ...]:
    """Errors of a body cut mid-stream, from whichever HTTP stack the store uses."""
    found: list[type[BaseException]] = [OSError, EOFError]
    try:
        from botocore.exceptions import ResponseStreamingError
        from urllib3.exceptions import ProtocolError

        found += [ResponseStreamingError, ProtocolError]
    except ImportError:
        pass
    return tuple(found)


_TRANSIENT = _transient()


class _RangedRaw(io.RawIOBase):
    def __init__(self, store: Store, key: str, size: int) -> None:
        self.store, self.key, self.size, self.position = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:  # type: ignore[override]
        end = min(self.size, self.position + len(buffer))
        if end <= self.position:
            return 0
        data = self.store.read_bytes(self.key, self.position, end)
        n = len(data)
        memoryview(buffer)[:n] = data
        self.position += n
        return n


def open_ranged(store: Store, key: str, size: int) -> io.BufferedReader:
    """A seekable, buffered reader of the object: every buffer refill is one ranged read."""
    return io.BufferedReader(_RangedRaw(store, key, size), buffer_size=BUFFER)


def stream_range(
    store: Store, key: str, start: int, end: int, progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, bytes) pieces of [start, end) of the object, streamed.

    A body cut mid-stream (boto3 does not retry `IncompleteRead`) is resumed with a ranged read from the
    byte where it broke, up to `RESUMES` times.
    """
    offset, resumes = start, 0
    while offset < end:
        try:
            with store.open_read(key, offset, end) as stream:
                while offset < end:
                    piece = stream.read(min(STREAM_STEP, end - offset))
                    if not piece:
                        raise EOFError(f"{store.url}/{key}: ended at byte {offset}, expected {end}")
                    yield offset, piece
                    offset += len(piece)
                    if progress is not None:
                        progress(len(piece))
        except _TRANSIENT as error:
            resumes += 1
            if resumes > RESUMES:
                raise OSError(
                    f"{store.url}/{key}: read failed at byte {offset} after {RESUMES} resumes: {error}"
                ) from error
