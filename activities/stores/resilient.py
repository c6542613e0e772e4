"""Reads that survive a body cut mid-stream: reopen a ranged read at the byte where it broke.

Clients retry a request that fails before its body starts (botocore: 500, 503, resets), but not a
body truncated or reset halfway (`IncompleteRead`): a retry of the whole activity would restart a
multi-gigabyte read, and with a few percent of replies failing such a read may never finish. A
`ResumingReader` counts the bytes it has handed out and, on a streaming error or a premature end,
opens the same object again from that offset, a bounded number of times in a row.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import time
from collections.abc import Callable
from typing import BinaryIO

import urllib3.exceptions

from activities.stores.base import StoreError

#: Errors that mean "the connection broke while the body was streaming", for every client we use.
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    http.client.IncompleteRead,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.IncompleteRead,
    ConnectionError,
    TimeoutError,
)
try:  # botocore wraps urllib3's errors in its own
    from botocore.exceptions import (
        ConnectionClosedError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    STREAM_ERRORS += (IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ConnectionClosedError)
except ImportError:  # pragma: no cover - boto3 is a dependency
    pass
try:  # google-cloud-storage streams through requests
    import requests.exceptions

    STREAM_ERRORS += (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)
except ImportError:  # pragma: no cover
    pass

#: Consecutive reopen attempts without progress before the read fails (and the activity retries).
REOPEN_ATTEMPTS = 6


class ResumingReader(io.RawIOBase):
    """Bytes [start, end) of an object; `opener(offset, end)` opens a stream from `offset`."""

    def __init__(self, opener: Callable[[int, int], BinaryIO], start: int, end: int, what: str,
                 attempts: int = REOPEN_ATTEMPTS) -> None:  # fmt: skip
        self.opener, self.position, self.end, self.what, self.attempts = opener, start, end, what, attempts
        self.reopens = 0
        self._stream: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        wanted = min(len(buffer), self.end - self.position)
        if wanted <= 0:
            return 0
        failures = 0
        while True:
            error: BaseException | None = None
            try:
                if self._stream is None:
                    self._stream = self.opener(self.position, self.end)
                data = self._stream.read(wanted)
            except STREAM_ERRORS as caught:
                data, error = b"", caught
            if data:
                n = len(data)
                memoryview(buffer)[:n] = data
                self.position += n
                return n
            # Empty before `end`: the body ended early (truncated) or the connection broke.
            failures += 1
            self.reopens += 1
            self._close_stream()
            if failures > self.attempts:
                raise StoreError(
                    f"{self.what}: the read kept breaking at byte {self.position} of {self.end} "
                    f"({failures} attempts; last: {error or 'premature end of body'})"
                )
            time.sleep(min(2.0, 0.05 * 2**failures))  # backed off: a flapping link gets time to recover

    def _close_stream(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):  # a broken stream may fail to close; it is dropped either way
                self._stream.close()
            self._stream = None

    def close(self) -> None:
        self._close_stream()
        super().close()


def resuming(opener: Callable[[int, int], BinaryIO], start: int, end: int, what: str) -> BinaryIO:
    """A buffered, resuming stream of bytes [start, end)."""
    size = max(1, min(1 << 20, end - start))
    return io.BufferedReader(ResumingReader(opener, start, end, what), buffer_size=size)  # type: ignore[return-value]
