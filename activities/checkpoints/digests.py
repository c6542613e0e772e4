"""Per-tensor digests: BLAKE3 of a tensor's C-contiguous bytes, the same whichever format holds the tensor.

safetensors stores each tensor's C-contiguous little-endian bytes, a torch zip file stores a contiguous
tensor's bytes inside its storage record, DCP stores chunks: hashing the logical row-major bytes (never the
file's bytes) makes a tensor's digest survive conversion between all three, so a migrated or converted
checkpoint is verified tensor by tensor against the source's inspection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import blake3

if TYPE_CHECKING:
    import torch

#: Bytes hashed per step when a tensor lives on a GPU: bounds the host copy of a large tensor.
DEVICE_STEP_BYTES = 64 << 20


def tensor_digest(tensor: torch.Tensor) -> str:
    """BLAKE3 (hex) of the tensor's elements in row-major order, as raw bytes of its dtype."""
    import torch

    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    raw = flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if raw.device.type == "cpu":
        hasher.update(raw.numpy())
    else:
        for start in range(0, raw.numel(), DEVICE_STEP_BYTES):
            hasher.update(raw[start : start + DEVICE_STEP_BYTES].cpu().numpy())
    return hasher.hexdigest()


def digest_root(named: Iterable[tuple[str, str | None]]) -> str:
    """One digest over (name, tensor digest) pairs in name order: equal roots mean every tensor is equal."""
    hasher = blake3.blake3()
    for name, digest in sorted(named):
        hasher.update(name.encode())
        hasher.update(b"\0")
        hasher.update((digest or "-").encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


class RangeHasher:
    """Digests of byte ranges of one stream read once in order: each range gets its own BLAKE3 as the
    stream passes it. Ranges may overlap (tied weights sharing a storage)."""

    def __init__(self, ranges: dict[str, tuple[int, int]]) -> None:
        self.ranges = ranges
        self.hashers = {name: blake3.blake3() for name in ranges}

    def feed(self, offset: int, data: bytes | memoryview) -> None:
        end = offset + len(data)
        view = memoryview(data)
        for name, (start, stop) in self.ranges.items():
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                self.hashers[name].update(view[lo - offset : hi - offset])

    def digests(self) -> dict[str, str]:
        return {name: hasher.hexdigest() for name, hasher in self.hashers.items()}
