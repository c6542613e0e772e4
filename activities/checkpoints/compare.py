"""Compare two checkpoints tensor by tensor: what is only on one side, what changed shape or dtype, and for
the rest whether it is bitwise equal, within tolerance or different, with the largest differences, ranked.

Values are compared in float64 on the CPU, `CHUNK_ELEMENTS` at a time, so memory stays bounded whatever
the tensor's size (local checkpoints are memory-mapped by `load_tensors`, never read whole). An element
differs when |a - b| > atol + rtol * |b| (numpy's `isclose` rule, b the reference); NaNs in the same place
and equal infinities are equal. When a tensor's dtype changed, it is judged at the coarser dtype's precision
(`DTYPE_TOLERANCES`, torch.testing's defaults): a bf16 copy of an fp32 checkpoint is *within tolerance*
and reported as a dtype change, not as millions of different elements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from activities.checkpoints.digests import tensor_digest
from activities.checkpoints.errors import CheckpointError, MalformedCheckpointError
from activities.checkpoints.layout import DCP_METADATA, INDEX_SUFFIX, check_shards, resolve, sniff

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPE_TOLERANCES",
    "TensorComparison",
    "TensorDiff",
    "compare_tensors",
    "load_tensors",
    "load_tensors_from_bytes",
    "tensor_digest",
]

Status = Literal["equal", "within_tolerance", "different", "only_in_a", "only_in_b", "shape_changed"]
#: Worst first: structure breaks before values differ.
SEVERITY: dict[str, int] = {
    "shape_changed": 0, "only_in_a": 1, "only_in_b": 2, "different": 3, "within_tolerance": 4, "equal": 5,
}  # fmt: skip
#: (rtol, atol) a dtype can represent: torch.testing's defaults; fp8 at one unit in the last place.
DTYPE_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-7), "float32": (1.3e-6, 1e-5), "float16": (1e-3, 1e-5), "bfloat16": (1.6e-2, 1e-5),
    "float8_e4m3fn": (0.125, 2.0**-9), "float8_e5m2": (0.25, 2.0**-16),
    "complex128": (1e-7, 1e-7), "complex64": (1.3e-6, 1e-5),
}  # fmt: skip
#: Elements compared per step (float64: 16 MiB per operand, ~5 operands live).
CHUNK_ELEMENTS = 1 << 21


class TensorDiff(BaseModel):
    name: str
    status: Status
    dtype_a: str | None
    dtype_b: str | None
    shape_a: list[int] | None
    shape_b: list[int] | None
    dtype_changed: bool
    numel: int
    differing_elements: int = Field(description="Elements outside atol + rtol*|b|")
    max_abs: float | None
    max_rel: float | None
    rtol: float | None = Field(None, description="Relative tolerance this tensor was judged with")
    atol: float | None = Field(None, description="Absolute tolerance this tensor was judged with")


class TensorComparison(BaseModel):
    rtol: float
    atol: float
    tensors: list[TensorDiff] = Field(description="Worst first: status severity, then max_rel, then max_abs")
    equal: int
    within_tolerance: int
    different: int
    only_in_a: int
    only_in_b: int
    shape_changed: int
    outcome: Literal["identical", "within_tolerance", "different"]


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def tolerance_for(dtype_a: str, dtype_b: str, rtol: float, atol: float) -> tuple[float, float]:
    """The tolerance a tensor is judged with: the caller's, loosened to the coarser dtype's when dtype changed."""
    if dtype_a == dtype_b:
        return rtol, atol
    coarse = max((DTYPE_TOLERANCES.get(d, (0.0, 0.0)) for d in (dtype_a, dtype_b)), key=lambda t: t[0])
    return max(rtol, coarse[0]), max(atol, coarse[1])


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    flat_a, flat_b = a.detach().reshape(-1), b.detach().reshape(-1)
    if flat_a.numel() == 0:
        return True
    bytes_a, bytes_b = flat_a.contiguous().view(torch.uint8), flat_b.contiguous().view(torch.uint8)
    step = CHUNK_ELEMENTS * 8
    for start in range(0, bytes_a.numel(), step):
        if not torch.equal(bytes_a[start : start + step].cpu(), bytes_b[start : start + step].cpu()):
            return False
    return True


def _value_diff(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> tuple[int, float, float]:
    """(elements outside tolerance, max |a-b|, max |a-b|/|b| over b != 0), chunk by chunk in float64.

    The all-finite chunk (the usual one) takes a fast path of in-place operations; NaNs and infinities
    take the careful one."""
    import torch

    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    flat_a, flat_b = a.detach().reshape(-1), b.detach().reshape(-1)
    differing, max_abs, max_rel = 0, 0.0, 0.0
    for start in range(0, flat_a.numel(), CHUNK_ELEMENTS):
        x = flat_a[start : start + CHUNK_ELEMENTS].to("cpu", wide)
        y = flat_b[start : start + CHUNK_ELEMENTS].to("cpu", wide)
        diff = (x - y).abs()
        reference = y.abs()
        if bool(torch.isfinite(diff).all()) and bool(torch.isfinite(reference).all()):
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float(diff.div(reference).nan_to_num_(nan=0.0, posinf=0.0).max()))
            differing += int(torch.count_nonzero(diff > reference.mul_(rtol).add_(atol)))
            continue
        same = (x == y) | (torch.isnan(x) & torch.isnan(y))
        diff = torch.where(same, torch.zeros((), dtype=torch.float64), diff.nan_to_num(nan=math.inf))
        limit = atol + rtol * reference
        # An infinity on either side that is not matched is a difference whatever the tolerance.
        outside = (diff > limit) | (~same & (torch.isinf(diff) | torch.isinf(reference)))
        differing += int(outside.sum())
        max_abs = max(max_abs, float(diff.max()))
        nonzero = reference > 0
        if bool(nonzero.any()):
            max_rel = max(max_rel, float((diff[nonzero] / reference[nonzero]).max()))
    return differing, max_abs, max_rel


def compare_pair(name: str, a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> TensorDiff:
    dtype_a, dtype_b = _dtype(a), _dtype(b)
    shape_a, shape_b = list(a.shape), list(b.shape)
    common = dict(name=name, dtype_a=dtype_a, dtype_b=dtype_b, shape_a=shape_a, shape_b=shape_b,
                  dtype_changed=dtype_a != dtype_b, numel=a.numel())  # fmt: skip
    if shape_a != shape_b:
        return TensorDiff(**common, status="shape_changed", differing_elements=a.numel(), max_abs=None, max_rel=None)
    if dtype_a == dtype_b and _bitwise_equal(a, b):
        return TensorDiff(
            **common, status="equal", differing_elements=0, max_abs=0.0, max_rel=0.0, rtol=rtol, atol=atol
        )
    used_rtol, used_atol = tolerance_for(dtype_a, dtype_b, rtol, atol)
    differing, max_abs, max_rel = _value_diff(a, b, used_rtol, used_atol)
    return TensorDiff(**common, status="different" if differing else "within_tolerance", differing_elements=differing,
                      max_abs=max_abs, max_rel=max_rel, rtol=used_rtol, atol=used_atol)  # fmt: skip


def _one_side(name: str, tensor: torch.Tensor, status: Status) -> TensorDiff:
    dtype, shape = _dtype(tensor), list(tensor.shape)
    side_a = status == "only_in_a"
    return TensorDiff(name=name, status=status, dtype_a=dtype if side_a else None, dtype_b=None if side_a else dtype,
                      shape_a=shape if side_a else None, shape_b=None if side_a else shape, dtype_changed=False,
                      numel=tensor.numel(), differing_elements=tensor.numel(), max_abs=None, max_rel=None)  # fmt: skip


def rank_key(diff: TensorDiff) -> tuple:
    return (SEVERITY[diff.status], -(diff.max_rel or 0.0), -(diff.max_abs or 0.0), diff.name)


def compare_tensors(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *, rtol: float = 1e-5, atol: float = 1e-8
) -> TensorComparison:
    """Compare two name -> tensor maps (b is the reference for relative differences)."""
    if rtol < 0 or atol < 0 or math.isnan(rtol) or math.isnan(atol):
        raise ValueError(f"rtol and atol must be non-negative numbers, got rtol={rtol} atol={atol}")
    diffs = [compare_pair(name, a[name], b[name], rtol, atol) for name in sorted(a.keys() & b.keys())]
    diffs += [_one_side(name, a[name], "only_in_a") for name in sorted(a.keys() - b.keys())]
    diffs += [_one_side(name, b[name], "only_in_b") for name in sorted(b.keys() - a.keys())]
    diffs.sort(key=rank_key)
    counts = {status: sum(d.status == status for d in diffs) for status in SEVERITY}
    if counts["different"] or counts["only_in_a"] or counts["only_in_b"] or counts["shape_changed"]:
        outcome = "different"
    elif counts["within_tolerance"]:
        outcome = "within_tolerance"
    else:
        outcome = "identical"
    return TensorComparison(rtol=rtol, atol=atol, tensors=diffs, outcome=outcome, **counts)


def _load_file(path: Path, label: str) -> dict[str, torch.Tensor]:
    from activities.checkpoints import safetensors_format, torch_format

    with open(path, "rb") as file:
        head = file.read(16)
    kind = sniff(head)
    if kind == "torch":
        return torch_format.load(path, label)
    if kind == "safetensors":
        return safetensors_format.load(path, label)
    torch_format.check_head(head, label)  # raises with the reason
    raise MalformedCheckpointError(label, "unrecognised file")


def _load_sharded(directory: Path, index: str) -> dict[str, torch.Tensor]:
    from activities.checkpoints.safetensors_format import parse_index

    label = str(directory / index)
    weight_map = parse_index((directory / index).read_bytes(), label)
    tensors: dict[str, torch.Tensor] = {}
    found: dict[str, set[str]] = {}
    for shard in sorted(set(weight_map.values())):
        if not (directory / shard).is_file():
            raise MalformedCheckpointError(label, f"shard {shard} named by the index is missing")
        loaded = _load_file(directory / shard, str(directory / shard))
        found[shard] = set(loaded)
        tensors.update(loaded)
    check_shards(weight_map, found, label)
    return tensors


def load_tensors_from_bytes(blob: bytes, label: str) -> dict[str, torch.Tensor]:
    """The tensors of one torch or safetensors file held in memory, by dotted name, without executing it:
    what an endpoint or a training job should load a state dict with (`model.load_state_dict(...)`)."""
    from activities.checkpoints import safetensors_format, torch_format

    kind = sniff(blob[:16])
    if kind == "torch":
        return torch_format.load_bytes(blob, label)[0]
    if kind == "safetensors":
        import torch

        header = safetensors_format.parse_header(lambda start, end: blob[start:end], len(blob), label)
        data = memoryview(blob)
        return {
            e.name: torch.frombuffer(bytearray(data[e.start : e.end]), dtype=torch.uint8)
            .view(getattr(torch, e.dtype))
            .reshape(e.shape)
            if e.end > e.start
            else torch.empty(e.shape, dtype=getattr(torch, e.dtype))
            for e in header.entries
        }
    torch_format.check_head(blob[:16], label)
    raise MalformedCheckpointError(label, "unrecognised file")


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a local checkpoint by dotted name, loaded without executing anything in it.

    `path`: a torch zip file (.pt/.pth/.bin/.ckpt), a safetensors file, a shard index or a directory
    holding a sharded set, a DCP checkpoint (.metadata + .distcp) or several checkpoint files. Nested state
    is flattened with dotted names (as DCP names it). Raises a CheckpointError naming the file when it would
    run code (UnsafeCheckpointError) or is malformed.
    """
    from activities.checkpoints import dcp_format

    path = Path(path)
    label = str(path)
    if not path.exists():
        raise CheckpointError(label, "no such file or directory")
    if path.is_file():
        if path.name == DCP_METADATA:
            return dcp_format.load(path.parent)
        if path.name.endswith(INDEX_SUFFIX):
            return _load_sharded(path.parent, path.name)
        return _load_file(path, label)
    keys = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and not p.relative_to(path).as_posix().startswith(".skyshift/")
    }
    layout = resolve(keys, label)
    if layout.kind == "dcp":
        return dcp_format.load(path)
    if layout.kind == "sharded":
        assert layout.index is not None
        return _load_sharded(path, layout.index)
    tensors: dict[str, torch.Tensor] = {}
    for key in layout.files:
        prefix = layout.prefix(key)
        tensors.update({prefix + name: t for name, t in _load_file(path / key, str(path / key)).items()})
    return tensors
