"""Safe inspection of a checkpoint in any store: format, every tensor with its digest, the training state it
holds, per-rank state for DCP, and what the files record about where they were made.

Runs on the worker of the environment that owns the storage (reads stay in-region) and streams: headers
and zip directories come from ranged reads, and each tensor's bytes pass once through BLAKE3. Nothing in a
checkpoint is ever executed: see `FORMATS` for what each format reader accepts and refuses.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.checkpoints import dcp_format, safetensors_format, torch_format
from activities.checkpoints.digests import digest_root
from activities.checkpoints.errors import CheckpointError, MalformedCheckpointError
from activities.checkpoints.fetch import checkpoint_files
from activities.checkpoints.layout import DCP_METADATA, Layout, check_shards, resolve, sniff
from activities.checkpoints.models import (
    MAX_TENSORS_IN_RESULT,
    MAX_VALUES_IN_RESULT,
    CheckpointInspection,
    DeviceFacts,
    FileInfo,
    FileScan,
    InspectInput,
    StateSummary,
    TensorInfo,
    WorkerEnvironment,
)
from activities.checkpoints.state import classify, state_group
from activities.errors import fail_fast_on_permanent_errors
from activities.stores import Store, join_key, open_store


class FormatSupport(BaseModel):
    format: str
    files: str
    read_by: str
    refused: str


#: What each format reader supports and refuses: the note the issue asks for, as data.
FORMATS: list[FormatSupport] = [
    FormatSupport(
        format="torch",
        files=".pt .pth .bin .ckpt (torch.save zip, torch >= 1.6); sharded with *.bin.index.json",
        read_by="allowlist unpickler over data.pkl (never torch.load); storages read as raw bytes, ranged",
        refused="any pickle global outside SAFE_GLOBALS (unsafe); sparse/quantized/subclass tensors; "
        "big-endian; the legacy pre-1.6 format",
    ),
    FormatSupport(
        format="safetensors",
        files=".safetensors, single or sharded with model.safetensors.index.json",
        read_by="header (<= 100 MB) validated, then one streamed pass over the data section",
        refused="header past EOF or over the limit, offsets outside the data, overlaps, holes, byte counts "
        "that do not match the shape; F4/F6 and other dtypes torch cannot hold",
    ),
    FormatSupport(
        format="dcp",
        files="directory with .metadata and __<rank>_<n>.distcp (torch.distributed.checkpoint FileSystemWriter)",
        read_by="allowlist unpickler over .metadata and every non-tensor item; chunks reassembled per tensor",
        refused="pickled values outside SAFE_GLOBALS (unsafe); items with transforms (compression, extensions)",
    ),
]


def worker_environment(name: str = "") -> WorkerEnvironment:
    """This worker's torch, CUDA and devices: the environment side of a checkpoint report."""
    import torch

    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(DeviceFacts(name=props.name, index=index, capability=f"{props.major}.{props.minor}",
                                       memory_gb=round(props.total_memory / 1e9, 2)))  # fmt: skip
    return WorkerEnvironment(environment=name, torch_version=torch.__version__, cuda_version=torch.version.cuda,
                             python_version=platform.python_version(), devices=devices)  # fmt: skip


def _scan_file(store: Store, key: str, size: int, label: str, digests: bool,
               progress: Callable[[int], None] | None) -> tuple[str, FileScan]:  # fmt: skip
    head = store.read_bytes(key, 0, min(size, 16)) if size else b""
    kind = sniff(head)
    if kind == "torch":
        return kind, torch_format.scan(store, key, size, label, digests=digests, progress=progress)
    if kind == "safetensors":
        return kind, safetensors_format.scan(store, key, size, label, digests=digests, progress=progress)
    torch_format.check_head(head, label)
    raise MalformedCheckpointError(label, "unrecognised file")


def inspect_path(store: Store, path: str, *, digests: bool = True, progress: Callable[[int], None] | None = None,
                 environment: WorkerEnvironment | None = None,
                 limit: int | None = MAX_TENSORS_IN_RESULT) -> CheckpointInspection:  # fmt: skip
    """Inspect the checkpoint at `path` (a file, a directory or prefix, a shard index or a DCP `.metadata`)."""
    directory, keys, _ = checkpoint_files(store, path)
    label = f"{store.url.rstrip('/')}/{directory}".rstrip("/")
    url = f"{store.url.rstrip('/')}/{path.strip('/')}".rstrip("/")
    layout = resolve(keys, label)
    files = [FileInfo(key=k, format="other", bytes=size) for k, size in sorted(keys.items())]
    formats: dict[str, str] = {}
    scans: list[FileScan] = []
    if layout.kind == "dcp":
        scans.append(dcp_format.scan(store, directory, keys, label, digests=digests, progress=progress))
        formats = {k: "dcp" for k in keys if k.endswith(".distcp")} | {DCP_METADATA: "metadata"}
    else:
        names = _shard_plan(store, directory, layout, label)
        found: dict[str, set[str]] = {}
        for key in names:
            file_label = f"{label}/{key}"
            kind, scan = _scan_file(store, join_key(directory, key), keys[key], file_label, digests, progress)
            prefix = layout.prefix(key)
            for tensor in scan.tensors:
                tensor.name, tensor.file = prefix + tensor.name, key
                tensor.category = classify(tensor.name, tensor.dtype)
            scan.values = [prefix + v for v in scan.values]
            found[key] = {t.name for t in scan.tensors}
            formats[key] = kind
            scans.append(scan)
        if layout.index is not None:
            formats[layout.index] = "index"
            check_shards(_weight_map(store, directory, layout, label), found, f"{label}/{layout.index}")
    for file in files:
        file.format = formats.get(file.key, "other")  # type: ignore[assignment]
    return summarize(url, layout, files, scans, environment, limit)


def _weight_map(store: Store, directory: str, layout: Layout, label: str) -> dict[str, str]:
    assert layout.index is not None
    return safetensors_format.parse_index(
        store.read_bytes(join_key(directory, layout.index)), f"{label}/{layout.index}"
    )


def _shard_plan(store: Store, directory: str, layout: Layout, label: str) -> list[str]:
    if layout.index is None:
        return layout.files
    shards = sorted(set(_weight_map(store, directory, layout, label).values()))
    missing = [s for s in shards if s not in layout.files]
    if missing:
        raise MalformedCheckpointError(f"{label}/{layout.index}", f"shard {missing[0]} named by the index is missing")
    return shards


def summarize(
    label: str,
    layout: Layout,
    files: list[FileInfo],
    scans: list[FileScan],
    environment: WorkerEnvironment | None,
    limit: int | None = MAX_TENSORS_IN_RESULT,
) -> CheckpointInspection:
    """Sum the per-file scans up; `limit` bounds the tensors listed (None: all, for use on the worker itself)."""
    tensors: list[TensorInfo] = sorted((t for s in scans for t in s.tensors), key=lambda t: t.name)
    values = sorted(v for s in scans for v in s.values)
    model = [t for t in tensors if t.category == "model" and t.dtype.startswith(("float", "bfloat"))]
    dtypes: dict[str, int] = {}
    for t in model:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.numel
    names = [*(t.name for t in tensors), *values]
    state = StateSummary(
        model_tensors=sum(t.category == "model" for t in tensors),
        optimizer_tensors=sum(t.category == "optimizer" for t in tensors),
        optimizer_values=sum(classify(v) == "optimizer" for v in values),
        dataloader=sorted({state_group(n) for n in names if classify(n) == "dataloader"}),
        rng=sorted({state_group(t.name) for t in tensors if t.category == "rng"}
                   | {state_group(v) for v in values if classify(v) == "rng"}),
        other_values=sum(classify(v) in ("model", "other") for v in values),
    )  # fmt: skip
    recorded: dict[str, str] = {}
    for scan in scans:
        recorded.update(scan.recorded)
    dcp = next((s for s in scans if s.world_size is not None or s.ranks), None)
    kinds = {f.format for f in files if f.format in ("torch", "safetensors", "dcp")}
    return CheckpointInspection(
        url=label,
        format="dcp" if layout.kind == "dcp" else ("safetensors" if kinds == {"safetensors"} else "torch"),
        files=files,
        tensors=tensors[:limit],
        tensors_total=len(tensors),
        tensors_truncated=limit is not None and len(tensors) > limit,
        tensor_bytes=sum(t.bytes for t in tensors),
        parameters=sum(t.numel for t in model),
        parameter_bytes=sum(t.bytes for t in model),
        dtypes=dtypes,
        digest_root=digest_root((t.name, t.digest) for t in tensors),
        state=state,
        values=values[:MAX_VALUES_IN_RESULT] if limit is not None else values,
        world_size=dcp.world_size if dcp else None,
        ranks=dcp.ranks if dcp else [],
        recorded=recorded,
        devices=sorted({t.device for t in tensors if t.device}),
        environment=environment,
    )


class Heartbeat:
    """Progress for long reads: heartbeats at most every `interval` seconds and stops promptly on cancel."""

    def __init__(self, what: str, interval: float = 2.0) -> None:
        self.what, self.interval, self.done, self.last = what, interval, 0, 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        if not activity.in_activity():  # the same code runs in the CLI and in tests
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            activity.heartbeat({"what": self.what, "bytes": self.done})
        if activity.is_cancelled():
            raise CancelledError(f"{self.what} cancelled after {self.done:,} bytes")


def as_activity_error(error: CheckpointError) -> ApplicationError:
    """A refused checkpoint never heals by retrying: a non-retryable failure naming the file."""
    return ApplicationError(str(error), type=type(error).__name__, non_retryable=True)


@activity.defn
@fail_fast_on_permanent_errors
def inspect_checkpoint(request: InspectInput) -> CheckpointInspection:
    """Inspect a checkpoint in this environment's own storage (runs on that environment's worker)."""
    store = open_store(request.store)
    try:
        return inspect_path(store, request.path, digests=request.digests,
                            progress=Heartbeat(f"inspect {request.path}"),
                            environment=worker_environment(request.environment))  # fmt: skip
    except CheckpointError as error:
        raise as_activity_error(error) from None


def inspection_text(report: CheckpointInspection, limit: int = 20) -> str:
    """Human-readable summary for the CLI."""
    lines = [
        f"{report.url}: {report.format}, {len(report.files)} file(s), {report.tensors_total} tensors, "
        f"{report.tensor_bytes / 1e6:,.1f} MB",
        f"  parameters {report.parameters:,} ({', '.join(f'{d} {n:,}' for d, n in report.dtypes.items()) or '-'})",
        f"  optimizer state: {'yes' if report.state.optimizer else 'no'}; dataloader: "
        f"{', '.join(report.state.dataloader) or 'no'}; rng: {', '.join(report.state.rng) or 'no'}",
    ]
    if report.world_size:
        lines.append(f"  saved by {report.world_size} rank(s): " + "; ".join(
            f"rank {r.rank}: {r.items} items, {r.bytes / 1e6:,.2f} MB"
            + (f", own state {', '.join(r.dataloader + r.rng + r.optimizer)}" if r.dataloader or r.rng or r.optimizer
               else "")
            for r in report.ranks
        ))  # fmt: skip
    if report.devices:
        lines.append(f"  devices recorded: {', '.join(report.devices)}")
    if report.recorded:
        lines.append("  recorded: " + ", ".join(f"{k}={v}" for k, v in sorted(report.recorded.items())))
    lines.append(f"  digest root {report.digest_root}")
    width = max((len(t.name) for t in report.tensors[:limit]), default=4)
    for t in report.tensors[:limit]:
        lines.append(f"  {t.name:<{width}}  {t.dtype:<13} {t.shape!s:<18} {t.category:<10} {(t.digest or '-')[:16]}")
    if report.tensors_total > limit:
        lines.append(f"  ... {report.tensors_total - limit} more (--json lists them)")
    return "\n".join(lines)
