"""torch zip checkpoints (`torch.save` since 1.6: .pt/.pth/.bin/.ckpt), read without running their pickle.

The file is a zip: `<archive>/data.pkl` (the structure, a pickle) and `<archive>/data/<key>` (each storage's
raw bytes, stored uncompressed and 64-byte aligned). The pickle goes through `unpickle.restricted_loads`,
so a file that would import anything outside the data-only allowlist is refused and nothing of it runs;
tensors come back as `TensorRef`s and their bytes are read straight from the storage records: streamed
through BLAKE3 for inspection, memory-mapped for loading. torch itself never unpickles the file here.

Supported: dense tensors of every dtype in `ITEMSIZE` (fp8 and uint16+ included), Parameters, nested
dicts/lists, numpy arrays and scalars, any device location (recorded, not needed). Refused: pickles naming
anything else (unsafe), sparse/quantized/subclass tensors (unsupported), big-endian files, the legacy
pre-1.6 tar/pickle format.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from activities.checkpoints.digests import RangeHasher, tensor_digest
from activities.checkpoints.errors import MalformedCheckpointError, UnsupportedCheckpointError
from activities.checkpoints.models import FileScan, TensorInfo
from activities.checkpoints.ranged import open_ranged, stream_range
from activities.checkpoints.state import classify
from activities.checkpoints.unpickle import ITEMSIZE, StorageRef, TensorRef, restricted_loads, walk
from activities.stores import Store

if TYPE_CHECKING:
    import torch

ZIP_MAGIC = b"PK\x03\x04"
#: The pre-1.6 format starts with a pickled magic number (a raw pickle stream): never unpickled here.
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
#: A data.pkl holds structure only (a state dict of 100k tensors is ~10 MiB); one larger is refused.
PICKLE_LIMIT = 64 << 20
#: Bytes inflated per read: zipfile's read() of a whole member inflates up to 2 GiB in one call.
READ_CHUNK = 1 << 20


def is_torch_zip(head: bytes) -> bool:
    return head.startswith(ZIP_MAGIC)


class TorchArchive:
    """A torch zip file opened for reading: the pickled structure as refs, and where each storage's bytes lie."""

    def __init__(self, fileobj: BinaryIO, label: str) -> None:
        self.fileobj, self.label = fileobj, label
        try:
            self.zip = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise MalformedCheckpointError(label, f"not a readable torch zip file: {error}") from None
        pickles = [n for n in self.zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise MalformedCheckpointError(label, "not a torch checkpoint: expected one <archive>/data.pkl record")
        self.prefix = pickles[0][: -len("data.pkl")]
        byteorder = self._small("byteorder") or "little"
        if byteorder != "little":
            raise UnsupportedCheckpointError(label, f"byte order {byteorder!r}: only little-endian files are read")
        self.recorded = {
            f"torch_zip_{name.strip('.').replace('/', '_')}": value
            for name in ("version", ".format_version", ".storage_alignment")
            if (value := self._small(name)) is not None
        }
        if self.zip.getinfo(pickles[0]).file_size > PICKLE_LIMIT:
            raise UnsupportedCheckpointError(label, f"data.pkl is larger than {PICKLE_LIMIT >> 20} MiB")
        self.tree, self.storages = restricted_loads(self._read(pickles[0]), label, storages=True)
        self.tensors: list[tuple[str, TensorRef]] = []
        self.values: list[str] = []
        for name, leaf in walk(self.tree, label=label):
            if isinstance(leaf, TensorRef):
                self.tensors.append((name, leaf))
            else:
                self.values.append(name)
                if "version" in name.lower() and isinstance(leaf, str | int | float) and "." not in name:
                    self.recorded[name] = str(leaf)
        self._offsets: dict[str, int] = {}
        self._check()

    def _small(self, name: str) -> str | None:
        try:
            info = self.zip.getinfo(self.prefix + name)
        except KeyError:
            return None
        return self._read(info).decode(errors="replace").strip() if info.file_size < 4096 else None

    def _read(self, member: str | zipfile.ZipInfo) -> bytes:
        """A record's bytes, inflated a chunk at a time: never more than the size it declares (zipfile stops
        there and checks the CRC), never a whole bomb in one call."""
        info = member if isinstance(member, zipfile.ZipInfo) else self.zip.getinfo(member)
        parts: list[bytes] = []
        try:
            with self.zip.open(info) as stream:
                while chunk := stream.read(READ_CHUNK):
                    parts.append(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise MalformedCheckpointError(
                self.label, f"record {info.filename} is damaged: {error} (it declares {info.file_size:,} bytes; "
                "nothing past them was inflated)") from None  # fmt: skip
        return b"".join(parts)

    def _member(self, storage: StorageRef) -> zipfile.ZipInfo:
        try:
            return self.zip.getinfo(f"{self.prefix}data/{storage.key}")
        except KeyError:
            raise MalformedCheckpointError(self.label, f"storage record data/{storage.key} is missing") from None

    def _check(self) -> None:
        for storage in self.storages.values():
            if storage.dtype is not None and storage.dtype not in ITEMSIZE:
                raise UnsupportedCheckpointError(self.label, f"storage dtype {storage.dtype}")
            member = self._member(storage)
            if member.file_size != storage.nbytes:
                raise MalformedCheckpointError(
                    self.label, f"storage data/{storage.key} holds {member.file_size} bytes, its record says "
                    f"{storage.nbytes}"
                )  # fmt: skip
        for name, ref in self.tensors:
            if ref.storage.dtype is not None and ref.storage.dtype != ref.dtype:
                raise MalformedCheckpointError(
                    self.label, f"tensor {name!r} is {ref.dtype} in a {ref.storage.dtype} storage"
                )
            if ref.extent() * ITEMSIZE[ref.dtype] > ref.storage.nbytes:
                raise MalformedCheckpointError(
                    self.label, f"tensor {name!r} reaches past the end of its storage data/{ref.storage.key}"
                )

    def data_offset(self, storage: StorageRef) -> int:
        """Absolute offset of the storage's first byte in the file (records are stored, never compressed)."""
        if storage.key not in self._offsets:
            member = self._member(storage)
            if member.compress_type != zipfile.ZIP_STORED:
                raise UnsupportedCheckpointError(self.label, f"storage data/{storage.key} is compressed")
            self.fileobj.seek(member.header_offset)
            header = self.fileobj.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != ZIP_MAGIC:
                raise MalformedCheckpointError(self.label, f"bad zip record header for data/{storage.key}")
            fields = _LOCAL_HEADER.unpack(header)
            self._offsets[storage.key] = member.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
        return self._offsets[storage.key]

    def read_storage(self, storage: StorageRef) -> bytes:
        return self._read(self._member(storage))


def tensor_from_storage(ref: TensorRef, raw: Any) -> torch.Tensor:
    """Build the tensor `ref` describes over a storage's bytes (a bytes-like or a uint8 tensor), without copying."""
    import torch

    dtype = getattr(torch, ref.dtype)
    base = raw if isinstance(raw, torch.Tensor) else torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    if base.numel() == 0:
        return torch.empty(ref.shape, dtype=dtype)
    typed = base.view(dtype)
    return torch.as_strided(typed, ref.shape, ref.stride, ref.offset)


def scan(store: Store, key: str, size: int, label: str, *, digests: bool = True,
         progress: Callable[[int], None] | None = None) -> FileScan:  # fmt: skip
    """Inspect a torch file in a store: structure from ranged reads; with `digests`, each storage streamed once."""
    with open_ranged(store, key, size) as fileobj:
        archive = TorchArchive(fileobj, label)
        found: dict[str, str] = {}
        if digests:
            by_storage: dict[str, list[tuple[str, TensorRef]]] = {}
            for name, ref in archive.tensors:
                by_storage.setdefault(ref.storage.key, []).append((name, ref))
            ordered = sorted(by_storage.values(), key=lambda refs: archive.data_offset(refs[0][1].storage))
            for refs in ordered:
                found.update(_storage_digests(archive, store, key, refs, progress))
    tensors = [
        TensorInfo(name=name, dtype=ref.dtype, shape=list(ref.shape), bytes=ref.nbytes, digest=found.get(name),
                   category=classify(name, ref.dtype), device=ref.storage.location)
        for name, ref in archive.tensors
    ]  # fmt: skip
    return FileScan(tensors=tensors, values=archive.values, recorded=archive.recorded)


def _storage_digests(archive: TorchArchive, store: Store, key: str, refs: list[tuple[str, TensorRef]],
                     progress: Callable[[int], None] | None) -> dict[str, str]:  # fmt: skip
    storage = refs[0][1].storage
    start = archive.data_offset(storage)
    contiguous = {name: ref for name, ref in refs if ref.contiguous}
    ranges = {
        name: (start + ref.offset * ITEMSIZE[ref.dtype], start + ref.offset * ITEMSIZE[ref.dtype] + ref.nbytes)
        for name, ref in contiguous.items()
    }
    hasher = RangeHasher(ranges)
    whole = bytearray() if len(contiguous) < len(refs) else None  # a strided view needs the storage in memory
    for offset, piece in stream_range(store, key, start, start + storage.nbytes, progress):
        hasher.feed(offset, piece)
        if whole is not None:
            whole += piece
    digests = hasher.digests()
    if whole is not None:
        for name, ref in refs:
            if name not in contiguous:
                digests[name] = tensor_digest(tensor_from_storage(ref, whole))
    return digests


def load(path: Path, label: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a local torch file by dotted name, memory-mapped copy-on-write (nothing is unpickled)."""
    import numpy as np
    import torch

    label = label or str(path)
    with open(path, "rb") as fileobj:
        archive = TorchArchive(fileobj, label)
        mapped: dict[str, torch.Tensor] = {}
        for storage in archive.storages.values():
            if storage.nbytes == 0:
                mapped[storage.key] = torch.empty(0, dtype=torch.uint8)
                continue
            offset = archive.data_offset(storage)
            array = np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(storage.nbytes,))
            mapped[storage.key] = torch.from_numpy(array)
        return {name: tensor_from_storage(ref, mapped[ref.storage.key]) for name, ref in archive.tensors}


def load_bytes(blob: bytes, label: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Tensors (and the raw tree) of a torch zip held in memory: a DCP item is one `torch.save` of a chunk."""
    archive = TorchArchive(io.BytesIO(blob), label)
    storages = {key: archive.read_storage(ref) for key, ref in archive.storages.items()}
    tensors = {name: tensor_from_storage(ref, storages[ref.storage.key]) for name, ref in archive.tensors}
    return tensors, archive.tree


def check_head(head: bytes, label: str) -> None:
    """Refuse what is not a torch zip file before anything else reads it."""
    if head.startswith(LEGACY_MAGIC[:3]) or head[:2] == b"\x80\x02":
        raise UnsupportedCheckpointError(
            label,
            "legacy (pre-1.6) torch format: a raw pickle stream, never unpickled here; re-save it with torch >= 1.6",
        )
    if not is_torch_zip(head):
        raise MalformedCheckpointError(label, "not a torch zip file, safetensors file or DCP checkpoint")
