"""safetensors checkpoints, single files and sharded with `model.safetensors.index.json`: read by header only.

A safetensors file is 8 bytes of header length, a JSON header (name -> dtype, shape, data_offsets) and the
tensors' raw little-endian bytes; there is nothing to execute. What can go wrong is a header that lies,
so it is validated before any tensor is read, as the reference implementation does: a header over
`HEADER_LIMIT` bytes or past the end of the file, an unknown dtype, a byte length that does not match the
shape, offsets outside the data section, overlapping tensors or holes between them are all refused with
the file and the tensor named. Inspection reads the header with two ranged reads and streams the data
section once through one BLAKE3 per tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from activities.checkpoints.digests import RangeHasher
from activities.checkpoints.errors import MalformedCheckpointError, UnsupportedCheckpointError
from activities.checkpoints.models import FileScan, TensorInfo
from activities.checkpoints.ranged import stream_range
from activities.checkpoints.state import classify
from activities.checkpoints.unpickle import ITEMSIZE
from activities.stores import Store

if TYPE_CHECKING:
    import torch

#: The reference implementation's limit: a larger header is refused before it is read.
HEADER_LIMIT = 100_000_000
#: safetensors dtype codes and the torch dtypes they are.
DTYPES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool", "C64": "complex64",
}  # fmt: skip
INDEX_SUFFIX = ".index.json"


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int


@dataclass(frozen=True)
class Header:
    entries: list[Entry]  # in file order
    metadata: dict[str, str]
    data_start: int


def parse_header(read: Callable[[int, int], bytes], size: int, label: str) -> Header:
    """Read and validate the header of a file of `size` bytes through `read(start, end)`."""
    if size < 8:
        raise MalformedCheckpointError(label, f"{size} bytes: too short for a safetensors header")
    length = int.from_bytes(read(0, 8), "little")
    if length > HEADER_LIMIT:
        raise MalformedCheckpointError(label, f"header of {length:,} bytes is over the {HEADER_LIMIT:,}-byte limit")
    if 8 + length > size:
        raise MalformedCheckpointError(
            label, f"header length {length:,} runs past the end of the file ({size:,} bytes)"
        )
    try:
        header = json.loads(read(8, 8 + length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedCheckpointError(label, f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise MalformedCheckpointError(label, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise MalformedCheckpointError(label, "__metadata__ must map strings to strings")
    data_start, data_size = 8 + length, size - 8 - length
    entries = [_entry(name, spec, data_start, data_size, label) for name, spec in header.items()]
    entries.sort(key=lambda e: (e.start, e.end))
    position = data_start
    for previous, entry in zip([None, *entries], entries, strict=False):
        if entry.start < position:
            raise MalformedCheckpointError(
                label, f"tensors {previous.name!r} and {entry.name!r} overlap (bytes {entry.start - data_start:,}"
                f"..{previous.end - data_start:,} of the data section)"  # type: ignore[union-attr]
            )  # fmt: skip
        if entry.start > position:
            raise MalformedCheckpointError(
                label, f"a hole of {entry.start - position:,} bytes before tensor {entry.name!r}"
            )
        position = entry.end
    if position != size:
        raise MalformedCheckpointError(label, f"{size - position:,} bytes after the last tensor belong to no tensor")
    return Header(entries=entries, metadata={str(k): v for k, v in metadata.items()}, data_start=data_start)


def _entry(name: str, spec: object, data_start: int, data_size: int, label: str) -> Entry:
    if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
        raise MalformedCheckpointError(label, f"tensor {name!r}: entry needs dtype, shape and data_offsets")
    code, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if code not in DTYPES:
        raise UnsupportedCheckpointError(label, f"tensor {name!r}: dtype {code!r} is not read by skyshift")
    ok_shape = isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ok_offsets = (
        isinstance(offsets, list) and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    )  # fmt: skip
    if not ok_shape or not ok_offsets:
        raise MalformedCheckpointError(label, f"tensor {name!r}: shape and data_offsets must be non-negative integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise MalformedCheckpointError(
            label,
            f"tensor {name!r}: data_offsets [{begin:,}, {end:,}] fall outside the {data_size:,}-byte data section",
        )
    numel = 1
    for s in shape:
        numel *= s
    dtype = DTYPES[code]
    if end - begin != numel * ITEMSIZE[dtype]:
        raise MalformedCheckpointError(
            label,
            f"tensor {name!r}: {end - begin:,} bytes for {numel:,} {dtype} elements ({numel * ITEMSIZE[dtype]:,})",
        )
    return Entry(name=name, dtype=dtype, shape=tuple(shape), start=data_start + begin, end=data_start + end)


def read_header(store: Store, key: str, size: int, label: str) -> Header:
    return parse_header(lambda start, end: store.read_bytes(key, start, end), size, label)


def scan(store: Store, key: str, size: int, label: str, *, digests: bool = True,
         progress: Callable[[int], None] | None = None) -> FileScan:  # fmt: skip
    """Inspect a safetensors file in a store: two ranged reads for the header, one stream for the digests."""
    header = read_header(store, key, size, label)
    found: dict[str, str] = {}
    if digests and header.entries:
        hasher = RangeHasher({e.name: (e.start, e.end) for e in header.entries})
        for offset, piece in stream_range(store, key, header.data_start, size, progress):
            hasher.feed(offset, piece)
        found = hasher.digests()
    tensors = [
        TensorInfo(name=e.name, dtype=e.dtype, shape=list(e.shape), bytes=e.end - e.start, digest=found.get(e.name),
                   category=classify(e.name, e.dtype))
        for e in header.entries
    ]  # fmt: skip
    return FileScan(tensors=tensors, recorded={f"safetensors.{k}": v for k, v in header.metadata.items()})


def load(path: Path, label: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a local safetensors file, memory-mapped copy-on-write, after the header is validated."""
    import numpy as np
    import torch

    label = label or str(path)
    size = path.stat().st_size
    with open(path, "rb") as file:

        def read(start: int, end: int) -> bytes:
            file.seek(start)
            return file.read(end - start)

        header = parse_header(read, size, label)
    tensors: dict[str, torch.Tensor] = {}
    for entry in header.entries:
        dtype = getattr(torch, entry.dtype)
        if entry.end == entry.start:
            tensors[entry.name] = torch.empty(entry.shape, dtype=dtype)
            continue
        raw = torch.from_numpy(
            np.memmap(path, dtype=np.uint8, mode="c", offset=entry.start, shape=(entry.end - entry.start,))
        )
        tensors[entry.name] = raw.view(dtype).reshape(entry.shape)
    return tensors


def parse_index(data: bytes, label: str) -> dict[str, str]:
    """A sharded checkpoint's index (`*.index.json`): tensor name -> shard file, shard names checked."""
    try:
        index = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedCheckpointError(label, f"index is not JSON: {error}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise MalformedCheckpointError(label, "index needs a weight_map of tensor name -> shard file")
    for shard in set(weight_map.values()):
        if not shard or shard.startswith("/") or ".." in shard.split("/") or "\\" in shard:
            raise MalformedCheckpointError(label, f"index names shard {shard!r} outside the checkpoint directory")
    return weight_map


def save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors (the library's writer); tensors sharing memory are written as copies."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    owned = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        owned[name] = (
            tensor.detach().cpu().contiguous().clone() if pointer in seen else tensor.detach().cpu().contiguous()
        )
        seen.add(pointer)
    save_file(owned, str(path), metadata=metadata)
