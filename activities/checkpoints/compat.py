"""Will this checkpoint work on the target? A compatibility report from the target worker, after the sync.

The target worker re-inspects its own copy and compares every tensor's digest with the source worker's
inspection; loads it for real with this worker's torch and devices (`map_location` when CUDA storages meet
a CPU-only or smaller host), checking the loaded tensors are the bytes inspected; checks every dtype
against the target GPUs' compute capability (`DTYPE_MIN_CAPABILITY`); fits the *real* parameter count
into the target's memory; and, for checkpoints with per-rank state, says whether each kind of state can be
resharded to the target's world size. Each check is a `validate.Check`, so the verdict renders like every
other verdict; a failing check is a blocker, and a blocker fails the verdict before cutover starts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio import activity

from activities.analysis import Check, Verdict, verdict
from activities.assess import GPU_MEMORY_GB, SERVE_OVERHEAD, TRAIN_OVERHEAD
from activities.checkpoints.errors import CheckpointError
from activities.checkpoints.fetch import fetch_checkpoint, local_location
from activities.checkpoints.inspect import Heartbeat, inspect_path, worker_environment
from activities.checkpoints.layout import resolve
from activities.checkpoints.models import CheckpointInspection, DeviceFacts, WorkerEnvironment
from activities.checkpoints.sealed import SealedError
from activities.errors import fail_fast_on_permanent_errors
from activities.stores import StoreSpec, open_store

#: Lowest CUDA compute capability with hardware support for a dtype (bf16: Ampere; fp8: Ada/Hopper).
DTYPE_MIN_CAPABILITY: dict[str, tuple[int, int]] = {
    "bfloat16": (8, 0),
    "float8_e4m3fn": (8, 9),
    "float8_e5m2": (8, 9),
}
#: Compute capability of the GPU types plans name (the catalogue of activities.assess); None: not CUDA.
GPU_COMPUTE_CAPABILITY: dict[str, tuple[int, int] | None] = {
    "T4": (7, 5),
    "V100-16GB": (7, 0),
    "V100-32GB": (7, 0),
    "A10G": (8, 6),
    "L4": (8, 9),
    "L40S": (8, 9),
    "A40": (8, 6),
    "A100-40GB": (8, 0),
    "A100-80GB": (8, 0),
    "H100-80GB": (9, 0),
    "H100": (9, 0),
    "H200": (9, 0),
    "GH200": (9, 0),
    "B200": (10, 0),
    "MI250X": None,
    "MI300X": None,
}
#: torch versions before this one let `weights_only=True` be bypassed (CVE-2025-32434): never torch.load there.
SAFE_TORCH = (2, 6)


class CompatibilityInput(BaseModel):
    name: str = Field(description="Checkpoint workload name")
    store: StoreSpec = Field(description="The target's storage")
    path: str = Field(description="The synced checkpoint in it")
    source: CheckpointInspection = Field(description="The source worker's inspection")
    environment: str = Field("", description="This (target) environment's name")
    target_gpu_type: str | None = Field(None, description="Plan's GPU type: judged when this worker has no CUDA device")
    target_gpu_count: int = 0
    target_world_size: int | None = Field(None, description="Ranks that will load it (default: GPU count, >= 1)")
    load_check: bool = Field(True, description="Load it for real with torch on this worker")
    sealed: bool = Field(
        False, description="Kept sealed at rest (`path/sealed/`): decrypted only into this worker's scratch"
    )


class MemoryFit(BaseModel):
    parameters: int
    weights_gb: float
    serve_gb: float
    train_gb: float
    memory_gb: float | None
    memory_source: str = Field(description="worker GPUs, plan GPUs, or host memory")
    fits_serving: bool | None
    fits_training: bool | None


class CompatibilityReport(BaseModel):
    name: str
    source_url: str
    target_url: str
    source_environment: WorkerEnvironment | None
    target_environment: WorkerEnvironment
    tensors_compared: int = 0
    mismatched: list[str] = Field(default_factory=list, description="Tensors whose digests differ (first 20)")
    map_location: str | None = Field(None, description="What loading needed on this worker, e.g. cpu")
    devices_recorded: list[str] = Field(default_factory=list)
    memory: MemoryFit | None = None
    source_world_size: int | None = None
    target_world_size: int = 1
    blockers: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    verdict: Verdict


def _torch_version() -> tuple[int, int]:
    import torch

    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def map_location_for(recorded: list[str], devices: list[DeviceFacts]) -> str | dict[str, str] | None:
    """None when every recorded device exists here; else where storages must go: `cpu` on a host without
    CUDA, or a mapping of each missing device to cuda:0 on a host with fewer (or other) devices."""
    here = {"cpu", "cuda"} | {f"cuda:{d.index}" for d in devices} if devices else {"cpu"}
    missing = sorted(d for d in recorded if d not in here)
    if not missing:
        return None
    return "cpu" if not devices else dict.fromkeys(missing, "cuda:0")


def _describe(location: str | dict[str, str] | None) -> str | None:
    if location is None or isinstance(location, str):
        return location
    return ", ".join(f"{k}->{v}" for k, v in sorted(location.items()))


def _digest_check(source: CheckpointInspection, target: CheckpointInspection) -> tuple[Check, list[str]]:
    """Every tensor the source listed against the target's full inspection, and the roots over all tensors."""
    want, got = source.digests(), target.digests()
    missing = sorted(want.keys() - got.keys())
    extra = [] if source.tensors_truncated else sorted(got.keys() - want.keys())
    wrong = sorted(n for n in want.keys() & got.keys() if want[n] != got[n])
    bad = missing + extra + wrong
    roots = source.digest_root == target.digest_root and source.tensors_total == target.tensors_total
    if not bad and roots:
        detail = f"all {target.tensors_total} tensors have the source's BLAKE3 digest (roots equal)"
    elif not bad:
        detail = f"digest roots differ over {target.tensors_total} tensors (beyond the {len(want)} listed by name)"
    else:
        detail = (f"{len(wrong)} differ, {len(missing)} missing, {len(extra)} extra on the target: "
                  + ", ".join(repr(n) for n in bad[:5]))  # fmt: skip
    return Check(metric="digests", outcome="pass" if roots and not bad else "fail", source=source.tensors_total,
                 target=target.tensors_total, observed=len(bad), threshold=0, detail=detail), bad[:20]  # fmt: skip


def load_check(local: Path, report: CheckpointInspection, location: str | dict[str, str] | None) -> Check:
    """Load the copy with this worker's torch as a user would, and check the loaded tensors are the bytes
    that were inspected (and that passed the allowlist: nothing here runs before that)."""
    from activities.checkpoints.compare import load_tensors
    from activities.checkpoints.digests import tensor_digest

    how = f"torch.load(weights_only=True, map_location={_describe(location) or 'None'})"
    try:
        if _torch_version() < SAFE_TORCH:
            loaded, how = load_tensors(local), "skyshift's reader (this torch is older than 2.6: no torch.load)"
        elif report.format == "dcp":
            loaded, how = _load_dcp(local), "dcp_to_torch_save on one process (world size 1), then torch.load"
        elif report.format == "safetensors":
            loaded, how = _load_safetensors(local, location), "safetensors.torch.load_file"
        else:
            loaded = _load_torch(local, location)
    except Exception as error:  # the report says why it does not load; nothing to retry
        return Check(metric="load", outcome="fail", detail=f"{how} failed: {type(error).__name__}: {error}")
    expected = report.digests()
    wrong = sorted(n for n, t in loaded.items() if n in expected and expected[n] != tensor_digest(t))
    missing = sorted(expected.keys() - loaded.keys())
    if wrong or missing:
        names = ", ".join(repr(n) for n in (wrong + missing)[:5])
        return Check(
            metric="load",
            outcome="fail",
            detail=f"{how}: {len(wrong)} tensors load differently, {len(missing)} missing: {names}",
        )
    return Check(
        metric="load",
        outcome="pass",
        observed=len(loaded),
        detail=f"{how}: {len(loaded)} tensors load bit-identical to the inspected bytes",
    )


def _flat(state) -> dict:
    import torch

    from activities.checkpoints.unpickle import walk

    return {name: value for name, value in walk(state) if isinstance(value, torch.Tensor)}


def _files(local: Path) -> list[tuple[Path, str]]:
    """(file, name prefix) as inspection names them (`layout.Layout.prefix`)."""
    if local.is_file():
        return [(local, "")]
    layout = resolve(
        {p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()}, str(local)
    )
    return [(local / key, layout.prefix(key)) for key in layout.files]


def _load_torch(local: Path, location) -> dict:
    import torch

    loaded: dict = {}
    for file, prefix in _files(local):
        state = torch.load(file, map_location=location, weights_only=True, mmap=True)
        loaded.update({prefix + k: v for k, v in _flat(state).items()})
    return loaded


def _load_safetensors(local: Path, location) -> dict:
    from safetensors.torch import load_file

    device = "cpu" if location == "cpu" or location is None else "cuda:0"
    loaded: dict = {}
    for file, prefix in _files(local):
        loaded.update({prefix + k: v for k, v in load_file(str(file), device=device).items()})
    return loaded


def _load_dcp(local: Path) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(prefix="skyshift-dcp-load-") as scratch:
        single = Path(scratch) / "single.pt"
        dcp_to_torch_save(local, single)
        return {k: v.clone() for k, v in _flat(torch.load(single, map_location="cpu", weights_only=True)).items()}


def _capability_text(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


def dtype_check(
    report: CheckpointInspection, devices: list[DeviceFacts], plan_gpu: str | None
) -> tuple[Check, list[str]]:
    """Every floating dtype the checkpoint uses against the target GPUs (this worker's, else the plan's)."""
    used = sorted({t.dtype for t in report.tensors} | set(report.dtypes))
    needing = {d: DTYPE_MIN_CAPABILITY[d] for d in used if d in DTYPE_MIN_CAPABILITY}
    warnings: list[str] = []
    if devices:
        targets = [
            (f"{d.name} (cuda:{d.index})", tuple(int(x) for x in d.capability.split(".")))
            for d in devices
            if d.capability
        ]
    elif plan_gpu and plan_gpu.lower() != "cpu":
        capability = GPU_COMPUTE_CAPABILITY.get(plan_gpu)
        if capability is None:
            return Check(
                metric="dtype_support",
                outcome="pass",
                detail=f"{plan_gpu} is not a CUDA GPU in skyshift's catalogue: {', '.join(used)} not checked",
            ), [f"dtype support on {plan_gpu} not checked"]
        targets = [(f"{plan_gpu} (plan)", capability)]
    else:
        if any(d.startswith("float8") for d in needing):
            warnings.append("float8 tensors on a CPU-only target: stored and loadable, but CPU kernels are few")
        return Check(
            metric="dtype_support",
            outcome="pass",
            detail=f"CPU target: {', '.join(used) or 'no'} dtypes load on the CPU",
        ), warnings
    short = [
        f"{dtype} needs compute capability >= {_capability_text(need)}, {name} has {_capability_text(have)}"
        for dtype, need in needing.items()
        for name, have in targets
        if have < need
    ]
    if short:
        return Check(
            metric="dtype_support",
            outcome="fail",
            detail="; ".join(short) + " (convert, e.g. bf16 -> fp16 after checking value ranges, or choose newer GPUs)",
        ), warnings
    checked = (
        ", ".join(f"{d} (>= {_capability_text(n)})" for d, n in needing.items()) or "no dtype needing a GPU feature"
    )
    return Check(
        metric="dtype_support", outcome="pass", detail=f"{checked} on {', '.join(n for n, _ in targets)}"
    ), warnings


def _size(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.3g} MB"


def _host_memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def memory_check(
    report: CheckpointInspection, devices: list[DeviceFacts], plan_gpu: str | None, plan_count: int
) -> tuple[Check, MemoryFit, list[str]]:
    """The real parameter count (the bytes of the model tensors as stored) against the target's memory."""
    weights = report.parameter_bytes / 1e9
    if devices and all(d.memory_gb for d in devices):
        memory, source = sum(d.memory_gb or 0 for d in devices), f"{len(devices)} worker GPU(s)"
    elif plan_gpu and plan_count and plan_gpu in GPU_MEMORY_GB:
        memory, source = GPU_MEMORY_GB[plan_gpu] * plan_count, f"{plan_count}x {plan_gpu} (plan)"
    else:
        memory, source = _host_memory_gb(), "host memory"
    fit = MemoryFit(
        parameters=report.parameters,
        weights_gb=round(weights, 4),
        serve_gb=round(weights * SERVE_OVERHEAD, 4),
        train_gb=round(weights * TRAIN_OVERHEAD, 4),
        memory_gb=round(memory, 2) if memory else None,
        memory_source=source,
        fits_serving=None if memory is None else weights * SERVE_OVERHEAD <= memory,
        fits_training=None if memory is None else weights * TRAIN_OVERHEAD <= memory,
    )
    warnings: list[str] = []
    numbers = f"{report.parameters:,} parameters ({_size(report.parameter_bytes)} as stored)"
    if fit.fits_serving is False:
        check = Check(
            metric="memory_fit",
            outcome="fail",
            source=fit.serve_gb,
            target=fit.memory_gb,
            detail=f"{numbers} need ~{fit.serve_gb} GB to serve, {source} has {fit.memory_gb} GB: quantize "
            f"to 8-bit (~{round(fit.serve_gb / 2, 3)} GB) or 4-bit, or add GPUs",
        )
    else:
        if fit.fits_training is False:
            warnings.append(
                f"{numbers} fit for serving but full training needs ~{fit.train_gb} GB of {fit.memory_gb}: "
                "reduce the batch size, use activation checkpointing or shard optimizer state (FSDP/ZeRO)"
            )
        detail = (
            f"{numbers}: serve ~{_size(fit.serve_gb * 1e9)}, train ~{_size(fit.train_gb * 1e9)}, "
            f"{source}: {fit.memory_gb} GB"
        )
        check = Check(metric="memory_fit", outcome="pass", source=fit.serve_gb, target=fit.memory_gb, detail=detail)
    return check, fit, warnings


def resharding_check(report: CheckpointInspection, target_world: int) -> tuple[Check, list[str]]:
    """Per-rank state against the target's world size. Tensors (model, optimizer) reshard through DCP's
    chunks; per-rank dataloader positions do not (ranks beyond the source's would have none, data would be
    repeated or skipped); per-rank RNG streams cannot be mapped to another world size (runs stop being
    bit-reproducible)."""
    source_world = report.world_size or 1
    warnings: list[str] = []
    per_rank_loader = sorted({g for r in report.ranks for g in r.dataloader})
    per_rank_rng = sorted({g for r in report.ranks for g in r.rng})
    failures = []
    if per_rank_loader and target_world != source_world:
        failures.append(
            f"dataloader state saved per rank ({', '.join(per_rank_loader)}) for {source_world} ranks "
            f"cannot be resharded to {target_world}: re-partition the sampler state or keep "
            f"{source_world} ranks"
        )
    if per_rank_rng and target_world != source_world:
        warnings.append(
            f"RNG state of {source_world} ranks ({', '.join(per_rank_rng)}) cannot map to {target_world} "
            "ranks: training resumes, but not bit-reproducibly"
        )
    shared_loader = [g for g in report.state.dataloader if g not in per_rank_loader]
    if shared_loader and source_world > 1:
        warnings.append(
            f"one dataloader state ({', '.join(shared_loader)}) for {source_world} saving ranks: DCP keeps a "
            "single copy of a key every rank writes, so per-rank positions may have been dropped"
        )
    missing = _params_without_optimizer_state(report)
    if missing:
        warnings.append(
            f"no optimizer state for {len(missing)} model tensors (buffers, frozen parameters or "
            f"parameters that never got a gradient), e.g. {missing[0]!r}: load the optimizer with "
            "strict=False when resharding"
        )
    tensors = "model and optimizer tensors reshard through DCP chunks"
    if report.format != "dcp":
        tensors = "a single-file checkpoint: every rank loads the whole state"
    if failures:
        return Check(
            metric="resharding", outcome="fail", source=source_world, target=target_world, detail="; ".join(failures)
        ), warnings
    return Check(
        metric="resharding",
        outcome="pass",
        source=source_world,
        target=target_world,
        detail=f"world size {source_world} -> {target_world}: {tensors}",
    ), warnings


def _params_without_optimizer_state(report: CheckpointInspection) -> list[str]:
    """Model tensors with no `...state.<name>.` optimizer entry, when optimizer state is keyed by name (DCP)."""
    keyed = {
        t.name.split(".state.", 1)[1].rsplit(".", 1)[0]
        for t in report.tensors
        if t.category == "optimizer" and ".state." in t.name
    }
    if not keyed or all(k.isdigit() for k in keyed):
        return []
    model = [t.name for t in report.tensors if t.category == "model" and t.dtype.startswith(("float", "bfloat"))]
    return sorted(n for n in model if n not in keyed and n.split(".", 1)[-1] not in keyed)


def check_compatibility(request: CompatibilityInput, scratch: Path) -> CompatibilityReport:
    environment = worker_environment(request.environment)
    store = open_store(request.store)
    target_url = f"{store.url.rstrip('/')}/{request.path}"
    world = request.target_world_size or max(1, request.target_gpu_count)
    base = dict(
        name=request.name,
        source_url=request.source.url,
        target_url=target_url,
        source_environment=request.source.environment,
        target_environment=environment,
        source_world_size=request.source.world_size,
        target_world_size=world,
    )
    try:
        if request.sealed:
            from activities.checkpoints.at_rest import decrypt_to

            local, _ = decrypt_to(request.store, request.path, scratch / "sealed")
        else:
            local = fetch_checkpoint(store, request.path, scratch / "copy", Heartbeat(f"fetch {request.name}"))
        spec, path = local_location(local)
        source = open_store(spec)
        target = inspect_path(
            source, path, progress=Heartbeat(f"compatibility {request.name}"), environment=environment, limit=None
        )
    except (CheckpointError, SealedError) as error:
        check = Check(metric="safety", outcome="fail", detail=f"the target copy cannot be read safely: {error}")
        return CompatibilityReport(
            **base, blockers=[check.detail], verdict=verdict(f"checkpoint {request.name}", [check])
        )
    checks, warnings = [], []
    digests, mismatched = _digest_check(request.source, target)
    checks.append(digests)
    location = map_location_for(target.devices, environment.devices)
    if location is not None:
        warnings.append(f"saved on {', '.join(target.devices)}: this worker needs map_location={_describe(location)}")
    if request.load_check:
        checks.append(load_check(local, target, location))
    dtype, dtype_warnings = dtype_check(target, environment.devices, request.target_gpu_type)
    memory, fit, memory_warnings = memory_check(
        target, environment.devices, request.target_gpu_type, request.target_gpu_count
    )
    reshard, reshard_warnings = resharding_check(target, world)
    checks += [dtype, memory, reshard]
    warnings += dtype_warnings + memory_warnings + reshard_warnings
    if _torch_version() < SAFE_TORCH:
        warnings.append("this worker's torch is older than 2.6: weights_only=True can be bypassed (CVE-2025-32434)")
    result = verdict(f"checkpoint {request.name}", checks)
    return CompatibilityReport(
        **base,
        tensors_compared=target.tensors_total,
        mismatched=mismatched,
        map_location=_describe(location),
        devices_recorded=target.devices,
        memory=fit,
        blockers=[f"{c.metric}: {c.detail}" for c in checks if c.outcome == "fail"],
        warnings=warnings,
        verdict=result,
    )


@activity.defn
@fail_fast_on_permanent_errors
def checkpoint_compatibility(request: CompatibilityInput) -> CompatibilityReport:
    """Target worker, after the sync: is the copy identical, loadable, supported and does it fit?"""
    with tempfile.TemporaryDirectory(prefix="skyshift-compat-") as scratch:
        return check_compatibility(request, Path(scratch))
