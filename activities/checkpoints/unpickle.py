"""Restricted unpickling: read the pickles inside torch files and DCP checkpoints without executing them.

A pickle is a program: GLOBAL names any importable callable and REDUCE calls it, so `torch.load` with
`weights_only=False` runs whatever the file names (and CVE-2025-32434 showed `weights_only=True` could be
bypassed before torch 2.6). Here every global a pickle names is looked up in `SAFE_GLOBALS`, an allowlist of
data-only constructors, and replaced by skyshift's own inert stand-in: tensors become `TensorRef` records
(where their bytes are, never the bytes), DCP metadata classes become `Record`s. Nothing the file names is
imported. BUILD (which would set attributes or call `__setstate__` on an object) is allowed only on those
stand-ins. This is the allowlist approach of torch's own weights-only unpickler, but it never hands the file
to torch, so it is safe on every torch version and also reads the DCP metadata torch opens with plain pickle.

The pure-Python unpickler is used because its opcode table can be overridden (BUILD); pickles in
checkpoints hold structure only (tensor bytes live outside them), so its speed does not matter.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from activities.checkpoints.errors import MalformedCheckpointError, UnsafeCheckpointError, UnsupportedCheckpointError

#: torch's typed-storage classes and the dtype each holds (what `torch.save` names in persistent ids).
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}  # fmt: skip
#: Bytes per element of every dtype skyshift reads.
ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1,
    "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1, "complex128": 16, "complex64": 8,
}  # fmt: skip
#: Data-only torch internals that skyshift does not read: refused as unsupported, not as unsafe.
UNSUPPORTED_GLOBALS = {
    ("torch._utils", "_rebuild_sparse_tensor"): "sparse tensors",
    ("torch._utils", "_rebuild_sparse_csr_tensor"): "sparse tensors",
    ("torch._utils", "_rebuild_qtensor"): "quantized tensors",
    ("torch._utils", "_rebuild_wrapper_subclass"): "tensor subclasses",
    ("torch._tensor", "_rebuild_from_type_v2"): "tensor subclasses",
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): "meta tensors",
    ("torch._utils", "_rebuild_nested_tensor"): "nested tensors",
}


class TorchDtype(str):
    """A torch dtype named in a pickle (`torch.float16`), kept as its name."""


@dataclass(frozen=True)
class StorageType:
    """`torch.FloatStorage` & co.: a storage class, kept as the dtype it holds (None: untyped, bytes)."""

    dtype: str | None


@dataclass(frozen=True)
class StorageRef:
    """A storage record of a torch zip file: its bytes are `data/<key>`; `location` is the device it was saved on."""

    key: str
    dtype: str | None
    numel: int
    location: str

    @property
    def nbytes(self) -> int:
        return self.numel if self.dtype is None else self.numel * ITEMSIZE[self.dtype]


@dataclass
class TensorRef:
    """A tensor as a view of a storage: where its elements are, not what they are."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool = False
    parameter: bool = False

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def extent(self) -> int:
        """Elements of the storage this view reaches, from the storage's start."""
        if self.numel == 0:
            return self.offset
        return self.offset + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride, strict=True)) + 1


class Record:
    """A stand-in for an allowed data class (DCP metadata): its pickled state, nothing else."""

    kind = "Record"
    args: tuple[Any, ...] = ()  # NEWOBJ creates records without calling __init__
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.state = args, kwargs or None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        self.state = state

    def get(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default) if isinstance(self.state, dict) else default

    def __repr__(self) -> str:
        return f"{self.kind}({self.args or ''}{self.state!r})"


def _record_type(name: str) -> type[Record]:
    return type(name, (Record,), {"kind": name})


class _NumpyDtype(Record):
    kind = "numpy.dtype"

    def value(self):
        import numpy as np

        name = self.args[0] if self.args else None
        byteorder = self.state[1] if isinstance(self.state, tuple) and len(self.state) > 1 else "="
        if not isinstance(name, str) or not isinstance(byteorder, str):
            raise ValueError("numpy dtype without a name")
        dtype = np.dtype(name).newbyteorder(byteorder if byteorder in "<>" else "=")
        if dtype.kind not in "biufcSUmM":  # object and void dtypes would carry pickled objects
            raise ValueError(f"numpy dtype {name!r} is not plain data")
        return dtype


class _NumpyArray(Record):
    kind = "numpy.ndarray"

    def __setstate__(self, state: Any) -> None:
        import numpy as np

        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _NumpyDtype)):
            raise ValueError("numpy array state is not (version, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(raw, bytes | bytearray):
            raise ValueError("numpy array of Python objects")
        self.array = np.frombuffer(bytes(raw), dtype=dtype.value()).reshape(shape, order="F" if fortran else "C")


def _numpy_reconstruct(cls: Any, shape: Any, typecode: Any) -> _NumpyArray:
    if not (isinstance(cls, _Marker) and cls.name == "numpy.ndarray"):
        raise ValueError("numpy _reconstruct of something other than ndarray")
    return _NumpyArray()


def _numpy_scalar(dtype: Any, raw: Any = None) -> Any:
    import numpy as np

    if not isinstance(dtype, _NumpyDtype) or not isinstance(raw, bytes):
        raise ValueError("numpy scalar without a plain dtype and bytes")
    return np.frombuffer(raw, dtype=dtype.value())[0]


@dataclass(frozen=True)
class _Marker:
    """A class named only to be passed to another allowed global (numpy.ndarray)."""

    name: str


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       hooks: Any = None, metadata: Any = None) -> TensorRef:  # fmt: skip
    if not isinstance(storage, StorageRef) or storage.dtype is None:
        raise ValueError("tensor record without a typed storage")
    return _tensor(storage, offset, size, stride, storage.dtype, requires_grad)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
                       dtype: Any, metadata: Any = None) -> TensorRef:  # fmt: skip
    if not isinstance(storage, StorageRef) or not isinstance(dtype, TorchDtype):
        raise ValueError("tensor record without a storage or a dtype")
    return _tensor(storage, offset, size, stride, str(dtype), requires_grad)


def _tensor(storage: StorageRef, offset: Any, size: Any, stride: Any, dtype: str, requires_grad: Any) -> TensorRef:
    if dtype not in ITEMSIZE:
        raise ValueError(f"unsupported dtype {dtype}")
    ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if ints is None or len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise ValueError("tensor record with a bad offset, size or stride")
    return TensorRef(storage, offset, tuple(size), tuple(stride), dtype, bool(requires_grad))


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any = None) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise ValueError("parameter record without a tensor")
    data.requires_grad, data.parameter = bool(requires_grad), True
    return data


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("_codecs.encode is allowed only for pickled bytes (latin1)")
    return text.encode("latin1")


def _device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str):
        raise ValueError("torch.device of a non-string")
    return kind if index is None else f"{kind}:{index}"


def _size(values: Any = ()) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _layout(name: Any) -> str:
    return str(name)


def _path(*parts: Any) -> str:
    return "/".join(str(p) for p in parts)


_DCP = "torch.distributed.checkpoint"
_DCP_CLASSES = {
    (f"{_DCP}.metadata", name): _record_type(name)
    for name in ("Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
                 "ChunkStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {(f"{_DCP}.filesystem", name): _record_type(name) for name in ("_StorageInfo", "_StoragePrefix")}  # fmt: skip

#: Every global a checkpoint pickle may name, and skyshift's stand-in for it. Anything else is refused.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _latin1_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    ("torch.serialization", "_get_layout"): _layout,
    ("torch", "UntypedStorage"): StorageType(None),
    ("torch.storage", "UntypedStorage"): StorageType(None),
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", dtype): TorchDtype(dtype) for dtype in ITEMSIZE},
    **{("pathlib", name): _path for name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")},
    **{(module, "_reconstruct"): _numpy_reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _numpy_scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _Marker("numpy.ndarray"),
    ("numpy", "dtype"): _NumpyDtype,
    **_DCP_CLASSES,
}


#: Opcodes one pickle may run: a state dict of 100k tensors takes ~2M; a small file of millions of Nones
#: (or any other cheap value) would otherwise grow without bound in memory.
MAX_PICKLE_OPS = 4_000_000
#: Entries a walk of the unpickled structure may visit: shared references (the memo) let a 1 KB pickle
#: describe 2**48 entries ("billion laughs"); real state dicts have well under a million.
MAX_WALK = 2_000_000


@dataclass
class _Context:
    label: str
    storages: dict[str, StorageRef] = field(default_factory=dict)


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes, context: _Context, persistent: bool) -> None:
        super().__init__(io.BytesIO(data))
        self.context, self.persistent = context, persistent

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if (module, name) in UNSUPPORTED_GLOBALS:
            raise UnsupportedCheckpointError(
                self.context.label,
                f"holds {UNSUPPORTED_GLOBALS[(module, name)]} ({module}.{name}), not read by skyshift",
            )
        raise UnsafeCheckpointError(
            self.context.label,
            f"refused: its pickle names {module}.{name}, which loading it with pickle would import and may run. "
            "Nothing of it was executed. Re-save the checkpoint as safetensors or a plain state dict of tensors.",
        )

    def persistent_load(self, pid: Any) -> Any:
        ok = self.persistent and isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
        if not ok or not isinstance(pid[1], StorageType) or not isinstance(pid[2], str) or not isinstance(pid[4], int):
            raise ValueError(f"unexpected persistent id {pid!r}")
        key, location, numel = pid[2], str(pid[3]), pid[4]
        if not key or "/" in key or ".." in key or numel < 0:
            raise ValueError(f"bad storage record {key!r}")
        ref = StorageRef(key=key, dtype=pid[1].dtype, numel=numel, location=location)
        known = self.context.storages.setdefault(key, ref)
        if known != ref:
            raise ValueError(f"storage {key!r} described twice differently")
        return known

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Record):
            inst.__setstate__(state)
        elif isinstance(inst, dict) and (state is None or isinstance(state, dict)):
            pass  # an OrderedDict's attributes (a state dict's `_metadata`): not needed, never applied
        else:
            raise UnsafeCheckpointError(
                self.context.label, f"refused: its pickle sets the state of a {type(inst).__name__}, which is not data"
            )

    dispatch[pickle.BUILD[0]] = _load_build

    ops = 0

    def _count(self) -> None:
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise UnsupportedCheckpointError(
                self.context.label,
                f"its pickle runs more than {MAX_PICKLE_OPS:,} operations (a checkpoint's structure takes far "
                "fewer; this one would grow without bound in memory): refused, nothing more was read",
            )


def _counted(handler):  # every opcode handler counts first: bounded objects, memo reuse and work
    def run(self: _RestrictedUnpickler) -> None:
        self._count()
        handler(self)

    return run


_RestrictedUnpickler.dispatch = {code: _counted(fn) for code, fn in _RestrictedUnpickler.dispatch.items()}


def restricted_loads(data: bytes, label: str, *, storages: bool = False) -> tuple[Any, dict[str, StorageRef]]:
    """Unpickle `data` through the allowlist; return the object tree and the storage records it names.

    `storages`: accept torch's persistent storage ids (a torch zip file's data.pkl). Raises
    UnsafeCheckpointError for any global outside SAFE_GLOBALS, MalformedCheckpointError for a damaged pickle.
    """
    context = _Context(label)
    try:
        value = _RestrictedUnpickler(data, context, storages).load()
    except (UnsafeCheckpointError, UnsupportedCheckpointError):
        raise
    except RecursionError:
        raise MalformedCheckpointError(label, "pickle nests too deeply") from None
    except Exception as error:
        raise MalformedCheckpointError(label, f"damaged pickle: {type(error).__name__}: {error}") from None
    return value, context.storages


def _terminal(value: Any) -> bool:
    if isinstance(value, dict):
        return False
    if isinstance(value, tuple):  # DCP pickles tuples whole; one holding tensors is still walked for them
        return not any(isinstance(v, TensorRef) for v in value)
    if not isinstance(value, list):
        return True
    return not any(isinstance(v, TensorRef) or (isinstance(v, dict | list) and not _terminal(v)) for v in value)


def walk(value: Any, prefix: str = "", *, label: str = "checkpoint", limit: int = MAX_WALK) -> list[tuple[str, Any]]:
    """Flatten nested state into (dotted name, leaf) as DCP's `traverse_state_dict` does: mappings always,
    lists only when they hold tensors or containers, tuples only when they hold tensors (DCP would store
    such a tuple as one opaque value). So a value has the same name in a torch file and in the DCP
    checkpoint made from it."""
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any]] = [(prefix, value)]
    visited = 0
    while stack:
        name, item = stack.pop()
        visited += 1
        if visited > limit:
            raise UnsupportedCheckpointError(
                label,
                f"its structure has more than {limit:,} entries once shared references are followed (a pickle "
                "can reuse one object many times over, a 'billion laughs'): refused",
            )
        if isinstance(item, dict):
            stack.extend((f"{name}.{key}" if name else str(key), child) for key, child in reversed(item.items()))
        elif not _terminal(item):
            stack.extend((f"{name}.{i}" if name else str(i), child) for i, child in reversed(list(enumerate(item))))
        else:
            out.append((name, item))
    return out
