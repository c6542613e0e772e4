"""BLAKE3 digests of streams: the ground truth for "this byte arrived intact" across providers."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import blake3

READ_SIZE = 8 << 20


def hash_stream(stream: BinaryIO, sink: Callable[[bytes], object] | None = None) -> tuple[str, int]:
    """Hash a stream to its end, passing each block to `sink` (e.g. a temp file's write)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    while block := stream.read(READ_SIZE):
        hasher.update(block)
        size += len(block)
        if sink is not None:
            sink(block)
    return hasher.hexdigest(), size


def hash_object(store, key: str) -> tuple[str, int]:
    with store.open_read(key) as stream:
        return hash_stream(stream)
