"""torch.distributed.checkpoint (DCP) directories: `.metadata` plus one `__<rank>_<n>.distcp` file per writer.

torch reads `.metadata` with plain `pickle.load` and non-tensor items with `torch.load(weights_only=False)`:
loading an untrusted DCP checkpoint with torch runs whatever it names. Here `.metadata` and every non-tensor
item go through `unpickle.restricted_loads` (the allowlist) and tensor items are read as torch zip records
without unpickling code, so after `scan` has passed a directory, torch's own DCP functions (`dcp_to_torch_save`,
`dcp.load`) only meet data. Tensors split into chunks (FSDP/TP shards) are reassembled from every chunk the
metadata lists; each file's rank comes from its name, so the report says what each saving rank wrote and
which per-rank state (names with `rank_<n>`) exists.

Supported: the FileSystemWriter layout with torch.save or raw (safetensors-serialized) items, any sharding.
Refused: items with transform descriptors (compression/extensions), storage layouts other than files in the
checkpoint directory.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from activities.checkpoints.digests import tensor_digest
from activities.checkpoints.errors import MalformedCheckpointError, UnsupportedCheckpointError
from activities.checkpoints.models import FileScan, RankState, TensorInfo
from activities.checkpoints.state import classify, rank_of, state_group
from activities.checkpoints.torch_format import TorchArchive, is_torch_zip, load_bytes
from activities.checkpoints.unpickle import ITEMSIZE, Record, TorchDtype, restricted_loads
from activities.stores import Store

if TYPE_CHECKING:
    import torch

METADATA = ".metadata"
#: FileSystemWriter's data files: `__<rank>_<index>.distcp`.
DISTCP = re.compile(r"^__(\d+)_(\d+)\.distcp$")
METADATA_LIMIT = 256 << 20


@dataclass(frozen=True)
class Item:
    file: str
    offset: int
    length: int


@dataclass
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    item: Item


@dataclass
class DcpTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for size in self.shape:
            n *= size
        return n


@dataclass
class DcpMetadata:
    tensors: dict[str, DcpTensor]
    values: dict[str, Item]
    version: str | None

    def files(self) -> set[str]:
        return {c.item.file for t in self.tensors.values() for c in t.chunks} | {i.file for i in self.values.values()}


def rank_of_file(name: str) -> int | None:
    match = DISTCP.match(name)
    return int(match.group(1)) if match else None


def parse_metadata(blob: bytes, label: str) -> DcpMetadata:
    """Parse `.metadata` through the allowlist into tensors (with every chunk's location) and value items."""
    if len(blob) > METADATA_LIMIT:
        raise UnsupportedCheckpointError(label, f".metadata is larger than {METADATA_LIMIT >> 20} MiB")
    tree, _ = restricted_loads(blob, label)
    if not isinstance(tree, Record) or tree.kind != "Metadata" or not isinstance(tree.state, dict):
        raise MalformedCheckpointError(label, "not DCP metadata (no Metadata record)")
    declared, storage = tree.get("state_dict_metadata"), tree.get("storage_data")
    if not isinstance(declared, dict) or not isinstance(storage, dict):
        raise MalformedCheckpointError(label, "DCP metadata without state_dict_metadata/storage_data")
    located: dict[tuple[str, tuple[int, ...] | None], Item] = {}
    for index, info in storage.items():
        if not (isinstance(index, Record) and isinstance(info, Record)) or info.kind != "_StorageInfo":
            raise MalformedCheckpointError(label, "storage_data entries must be MetadataIndex -> _StorageInfo")
        fqn, offset = index.get("fqn"), index.get("offset")
        file, start, length = info.get("relative_path"), info.get("offset"), info.get("length")
        if info.get("transform_descriptors"):
            raise UnsupportedCheckpointError(
                label, f"item {fqn!r} is stored with transforms {info.get('transform_descriptors')}"
            )
        if not isinstance(fqn, str) or not isinstance(file, str) or not _ints(start, length):
            raise MalformedCheckpointError(label, f"bad storage record for {fqn!r}")
        if not file or "/" in file or "\\" in file or file in (".", ".."):
            raise MalformedCheckpointError(label, f"item {fqn!r} names file {file!r} outside the checkpoint directory")
        located[(fqn, tuple(offset) if offset is not None else None)] = Item(file=file, offset=start, length=length)
    tensors: dict[str, DcpTensor] = {}
    values: dict[str, Item] = {}
    for fqn, spec in declared.items():
        if not isinstance(fqn, str) or not isinstance(spec, Record):
            raise MalformedCheckpointError(label, "state_dict_metadata entries must be name -> metadata record")
        if spec.kind == "BytesStorageMetadata":
            if (fqn, None) not in located:
                raise MalformedCheckpointError(label, f"value {fqn!r} has no storage record")
            values[fqn] = located[(fqn, None)]
        elif spec.kind == "TensorStorageMetadata":
            tensors[fqn] = _tensor(fqn, spec, located, label)
        else:
            raise MalformedCheckpointError(label, f"{fqn!r}: unknown metadata record {spec.kind}")
    version = tree.get("version")
    return DcpMetadata(tensors=tensors, values=values, version=str(version) if version is not None else None)


def _ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _dtype_of(properties: Any) -> Any:
    if isinstance(properties, Record):
        state = properties.state
        if isinstance(state, tuple) and state:
            return state[0]
        if isinstance(state, dict):
            return state.get("dtype")
    return None


def _tensor(fqn: str, spec: Record, located: dict, label: str) -> DcpTensor:
    dtype, shape, chunks = _dtype_of(spec.get("properties")), spec.get("size"), spec.get("chunks")
    if not isinstance(dtype, TorchDtype) or str(dtype) not in ITEMSIZE:
        raise UnsupportedCheckpointError(label, f"tensor {fqn!r}: dtype {dtype!r} is not read by skyshift")
    if not isinstance(shape, tuple) or not _ints(*shape) or not isinstance(chunks, list):
        raise MalformedCheckpointError(label, f"tensor {fqn!r}: bad size or chunk list")
    tensor = DcpTensor(name=fqn, dtype=str(dtype), shape=shape)
    covered = 0
    for chunk in chunks:
        offsets, sizes = (
            chunk.get("offsets") if isinstance(chunk, Record) else None,
            chunk.get("sizes") if isinstance(chunk, Record) else None,
        )
        if not (isinstance(offsets, tuple) and isinstance(sizes, tuple) and len(offsets) == len(sizes) == len(shape)):
            raise MalformedCheckpointError(label, f"tensor {fqn!r}: chunk without offsets/sizes of its rank")
        if not _ints(*offsets, *sizes) or any(o + s > d for o, s, d in zip(offsets, sizes, shape, strict=True)):
            raise MalformedCheckpointError(label, f"tensor {fqn!r}: chunk at {offsets} of {sizes} exceeds {shape}")
        item = located.get((fqn, offsets))
        if item is None:
            raise MalformedCheckpointError(label, f"tensor {fqn!r}: chunk at {offsets} has no storage record")
        tensor.chunks.append(Chunk(offsets=offsets, sizes=sizes, item=item))
        n = 1
        for s in sizes:
            n *= s
        covered += n
    numel = 1
    for s in shape:
        numel *= s
    if covered != numel:
        raise MalformedCheckpointError(label, f"tensor {fqn!r}: chunks cover {covered:,} of {numel:,} elements")
    return tensor


class _Reader:
    """Ranged reads of DCP files, by file name, from a store prefix or a local directory."""

    def __init__(self, read: Callable[[str, int, int], bytes], sizes: dict[str, int], label: str) -> None:
        self.read, self.sizes, self.label = read, sizes, label

    def item(self, item: Item) -> bytes:
        size = self.sizes.get(item.file)
        if size is None:
            raise MalformedCheckpointError(self.label, f"data file {item.file} is missing")
        if item.offset + item.length > size:
            raise MalformedCheckpointError(self.label, f"an item runs past the end of {item.file} ({size:,} bytes)")
        return self.read(item.file, item.offset, item.offset + item.length)


def _chunk_tensor(blob: bytes, tensor: DcpTensor, chunk: Chunk, label: str) -> torch.Tensor:
    import torch

    if is_torch_zip(blob):
        found, _ = load_bytes(blob, f"{label}/{chunk.item.file}")
        if len(found) != 1:
            raise MalformedCheckpointError(label, f"tensor {tensor.name!r}: item is not one tensor")
        value = next(iter(found.values()))
    else:  # SerializationFormat.SAFETENSORS: the chunk's raw bytes
        value = torch.frombuffer(bytearray(blob), dtype=torch.uint8).view(getattr(torch, tensor.dtype)) if blob else (
            torch.empty(0, dtype=getattr(torch, tensor.dtype)))  # fmt: skip
        value = value.reshape(chunk.sizes) if value.numel() == _numel(chunk.sizes) else value
    if tuple(value.shape) != chunk.sizes or str(value.dtype).removeprefix("torch.") != tensor.dtype:
        raise MalformedCheckpointError(
            label, f"tensor {tensor.name!r}: chunk at {chunk.offsets} holds {tuple(value.shape)} "
            f"{value.dtype}, metadata says {chunk.sizes} {tensor.dtype}"
        )  # fmt: skip
    return value


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def assemble(reader: _Reader, tensor: DcpTensor, label: str) -> torch.Tensor:
    """The whole tensor from its chunks (one chunk covering it all is returned as read)."""
    import torch

    if len(tensor.chunks) == 1 and tensor.chunks[0].sizes == tensor.shape:
        chunk = tensor.chunks[0]
        return _chunk_tensor(reader.item(chunk.item), tensor, chunk, label)
    whole = torch.empty(tensor.shape, dtype=getattr(torch, tensor.dtype))
    for chunk in tensor.chunks:
        value = _chunk_tensor(reader.item(chunk.item), tensor, chunk, label)
        region = whole
        for dim, (offset, size) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
            region = region.narrow(dim, offset, size)
        region.copy_(value)
    return whole


def check_values(reader: _Reader, metadata: DcpMetadata, label: str) -> None:
    """Every non-tensor item through the allowlist: torch would load these with weights_only=False."""
    for name, item in metadata.values.items():
        blob = reader.item(item)
        item_label = f"{label}/{item.file} (item {name!r})"
        if not is_torch_zip(blob):
            raise MalformedCheckpointError(label, f"value {name!r} in {item.file} is not a torch.save record")
        TorchArchive(io.BytesIO(blob), item_label)


def _scan(reader: _Reader, metadata: DcpMetadata, label: str, digests: bool,
          progress: Callable[[int], None] | None) -> FileScan:  # fmt: skip
    check_values(reader, metadata, label)
    tensors = []
    for name, tensor in sorted(metadata.tensors.items()):
        digest = None
        if digests:
            digest = tensor_digest(assemble(reader, tensor, label))
            if progress is not None:
                progress(tensor.nbytes)
        first = min(tensor.chunks, key=lambda c: c.offsets).item.file if tensor.chunks else None
        tensors.append(
            TensorInfo(name=name, dtype=tensor.dtype, shape=list(tensor.shape), bytes=tensor.nbytes, digest=digest,
                       category=classify(name, tensor.dtype), rank=rank_of_file(first) if first else None,
                       file=first)
        )  # fmt: skip
    ranks = _ranks(metadata, reader.sizes)
    recorded = {"dcp_version": metadata.version} if metadata.version else {}
    world = max([r.rank for r in ranks], default=-1) + 1
    return FileScan(tensors=tensors, values=sorted(metadata.values), recorded=recorded, world_size=world or None,
                    ranks=ranks)  # fmt: skip


def _ranks(metadata: DcpMetadata, sizes: dict[str, int]) -> list[RankState]:
    ranks: dict[int, RankState] = {}

    def state(rank: int) -> RankState:
        return ranks.setdefault(rank, RankState(rank=rank))

    for file, size in sizes.items():
        rank = rank_of_file(file)
        if rank is not None:
            state(rank).files.append(file)
            state(rank).bytes += size
    items = [(c.item, n) for n, t in metadata.tensors.items() for c in t.chunks] + [
        (i, n) for n, i in metadata.values.items()
    ]
    for item, _ in items:
        rank = rank_of_file(item.file)
        if rank is not None:
            state(rank).items += 1
    names = [*metadata.tensors, *metadata.values]
    for name in names:
        rank = rank_of(name)
        if rank is None:
            continue
        dtype = metadata.tensors[name].dtype if name in metadata.tensors else None
        category = classify(name, dtype)
        if category in ("dataloader", "rng", "optimizer"):
            bucket, group = getattr(state(rank), category), state_group(name)
            if group not in bucket:
                bucket.append(group)
    return [ranks[r] for r in sorted(ranks)]


def scan(store: Store, path: str, sizes: dict[str, int], label: str, *, digests: bool = True,
         progress: Callable[[int], None] | None = None) -> FileScan:  # fmt: skip
    """Inspect a DCP checkpoint in a store. `sizes`: its files (names relative to `path`) and their sizes."""
    from activities.stores import join_key

    if METADATA not in sizes:
        raise MalformedCheckpointError(label, "no .metadata: not a DCP checkpoint")
    metadata = parse_metadata(store.read_bytes(join_key(path, METADATA)), f"{label}/{METADATA}")
    reader = _Reader(lambda file, start, end: store.read_bytes(join_key(path, file), start, end), sizes, label)
    return _scan(reader, metadata, label, digests, progress)


def _local_reader(directory: Path, label: str) -> tuple[_Reader, DcpMetadata]:
    sizes = {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()}
    if METADATA not in sizes:
        raise MalformedCheckpointError(label, "no .metadata: not a DCP checkpoint")
    metadata = parse_metadata((directory / METADATA).read_bytes(), f"{label}/{METADATA}")

    def read(file: str, start: int, end: int) -> bytes:
        with open(directory / file, "rb") as handle:
            handle.seek(start)
            return handle.read(end - start)

    return _Reader(read, sizes, label), metadata


def load(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a local DCP checkpoint, reassembled, by its DCP name (values are checked, not returned)."""
    label = str(directory)
    reader, metadata = _local_reader(directory, label)
    check_values(reader, metadata, label)
    return {name: assemble(reader, tensor, label) for name, tensor in sorted(metadata.tensors.items())}
