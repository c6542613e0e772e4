"""Resharding and conversion on the target worker: DCP -> one torch file (any world size -> 1), one torch file
-> DCP, torch -> safetensors; every output verified tensor by tensor against the source's digests.

The checkpoint is copied to the worker's disk, inspected there first (the allowlist check every pickle in it
must pass: torch's DCP loader unpickles `.metadata` with plain pickle and values with
`weights_only=False`), converted with torch's own functions, inspected again, and uploaded only when every
tensor's digest equals the source's. torch -> DCP loads with `weights_only=True` and saves with `dcp.save`
(what `torch_save_to_dcp` does, minus its `weights_only=False` load).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.checkpoints.errors import CheckpointError
from activities.checkpoints.fetch import fetch_checkpoint, local_location
from activities.checkpoints.inspect import Heartbeat, as_activity_error, inspect_path
from activities.checkpoints.models import CheckpointInspection
from activities.errors import fail_fast_on_permanent_errors
from activities.stores import Store, StoreSpec, join_key, open_store

Conversion = Literal["dcp_to_torch", "torch_to_dcp", "torch_to_safetensors"]


class ConvertInput(BaseModel):
    store: StoreSpec = Field(description="The target's storage, holding the synced checkpoint")
    source_path: str
    dest_path: str = Field(description="A file key (dcp_to_torch, torch_to_safetensors) or a directory (torch_to_dcp)")
    destination: StoreSpec | None = Field(None, description="Where dest_path is; None: the same store as the source")
    kind: Conversion
    source: CheckpointInspection | None = Field(
        None, description="The source worker's inspection to verify against; None: this copy's own digests"
    )


class ConvertResult(BaseModel):
    kind: Conversion
    source_url: str
    dest_url: str
    tensors: int
    verified: int = Field(description="Tensors whose digest equals the source's")
    digest_root: str
    dropped: list[str] = Field(default_factory=list, description="Non-tensor entries the output format cannot hold")
    bytes_written: int


class ConversionMismatch(CheckpointError):
    """A converted tensor does not match its source: nothing was uploaded."""


def _local(path: Path) -> tuple[Store, str]:
    spec, key = local_location(path)
    return open_store(spec), key


def convert_local(source: Path, output: Path, kind: Conversion) -> None:
    """Convert a local checkpoint that has passed inspection (never call it on one that has not)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from activities.checkpoints import safetensors_format
    from activities.checkpoints.compare import load_tensors

    if kind == "dcp_to_torch":
        dcp_to_torch_save(source, output)
    elif kind == "torch_to_dcp":
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(output), no_dist=True)
    else:
        safetensors_format.save(load_tensors(source), output, metadata={"format": "pt"})


def verify(converted: CheckpointInspection, expected: CheckpointInspection, label: str) -> int:
    """Every tensor the source lists has its digest after conversion, and the roots over all tensors are equal;
    returns the tensors verified."""
    want, got = expected.digests(), converted.digests()
    missing = sorted(want.keys() - got.keys())
    if missing:
        raise ConversionMismatch(label, f"{len(missing)} tensors missing after conversion, e.g. {missing[0]!r}")
    wrong = sorted(n for n in want if got[n] != want[n])
    if wrong:
        raise ConversionMismatch(
            label, f"{len(wrong)} tensors differ from the source after conversion, e.g. {wrong[0]!r}"
        )
    if converted.digest_root != expected.digest_root:
        raise ConversionMismatch(label, "converted tensors differ from the source's (digest roots differ)")
    return converted.tensors_total


def _upload(store: Store, output: Path, dest_path: str) -> int:
    if output.is_file():
        store.put_file(dest_path, output)
        return output.stat().st_size
    written = 0
    for file in sorted(p for p in output.rglob("*") if p.is_file()):
        store.put_file(join_key(dest_path, file.relative_to(output).as_posix()), file)
        written += file.stat().st_size
    return written


def convert(request: ConvertInput, scratch: Path) -> ConvertResult:
    """Fetch, check, convert, verify, upload. torch's converters cannot report progress: give the activity a
    heartbeat timeout longer than one conversion, or none."""
    store = open_store(request.store)
    beat = Heartbeat(f"{request.kind} {request.source_path}")
    local = fetch_checkpoint(store, request.source_path, scratch / "in", beat)
    label = f"{store.url.rstrip('/')}/{request.source_path}"
    before = inspect_path(*_local(local), limit=None, progress=beat)  # the allowlist check, before torch sees it
    output = scratch / ("out" if request.kind == "torch_to_dcp" else "out.bin")
    if request.kind == "dcp_to_torch" and before.format != "dcp":
        raise CheckpointError(label, f"dcp_to_torch needs a DCP checkpoint; this is {before.format}")
    if request.kind != "dcp_to_torch" and (before.format != "torch" or not local.is_file()):
        raise CheckpointError(label, f"{request.kind} needs one torch file; this is {before.format}")
    convert_local(local, output, request.kind)
    dropped = before.values if request.kind == "torch_to_safetensors" else []
    after = inspect_path(*_local(output), limit=None, progress=beat)
    verified = verify(after, request.source or before, label)
    target = open_store(request.destination) if request.destination else store
    written = _upload(target, output, request.dest_path)
    return ConvertResult(kind=request.kind, source_url=label, dest_url=f"{target.url.rstrip('/')}/{request.dest_path}",
                         tensors=after.tensors_total, verified=verified, digest_root=after.digest_root,
                         dropped=dropped, bytes_written=written)  # fmt: skip


@activity.defn
@fail_fast_on_permanent_errors
def convert_checkpoint(request: ConvertInput) -> ConvertResult:
    """Convert a synced checkpoint on the target worker; upload only what verifies against the source."""
    with tempfile.TemporaryDirectory(prefix="skyshift-convert-") as scratch:
        activity.heartbeat({"what": f"convert {request.source_path}"})
        try:
            return convert(request, Path(scratch))
        except CheckpointError as error:
            raise as_activity_error(error) from None
        except RuntimeError as error:  # torch could not load or save it: retrying the same bytes will not help
            raise ApplicationError(f"{request.source_path}: {request.kind} failed: {error}", type="ConversionError",
                                   non_retryable=True) from None  # fmt: skip
