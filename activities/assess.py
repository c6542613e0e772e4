"""Assessment: what would move, what it costs, whether it fits and whether it may move at all."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from temporalio import activity

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import StoreSpec, open_store
from activities.transfer.layout import user_objects

#: Memory per device in GB. Data, not branches: add a row to support a new accelerator.
GPU_MEMORY_GB: dict[str, float] = {
    "T4": 16, "V100-16GB": 16, "V100-32GB": 32, "A10G": 24, "L4": 24, "L40S": 48, "A40": 48,
    "A100-40GB": 40, "A100-80GB": 80, "H100-80GB": 80, "H100": 80, "H200": 141, "GH200": 96,
    "B200": 192, "MI250X": 128, "MI300X": 192,
}  # fmt: skip
#: Serving needs the weights plus KV cache and activations; full fine-tuning with Adam roughly
#: weights + gradients + two optimizer moments. Rules of thumb, reported as estimates.
SERVE_OVERHEAD = 1.2
TRAIN_OVERHEAD = 4.0


class WorkloadInventory(BaseModel):
    name: str
    kind: Literal["dataset", "checkpoint"]
    path: str
    objects: int
    bytes: int


class InventoryInput(BaseModel):
    store: StoreSpec
    workloads: list[tuple[str, Literal["dataset", "checkpoint"], str]] = Field(description="(name, kind, path)")


class Inventory(BaseModel):
    workloads: list[WorkloadInventory]

    @property
    def total_bytes(self) -> int:
        return sum(w.bytes for w in self.workloads)

    @property
    def total_objects(self) -> int:
        return sum(w.objects for w in self.workloads)


class GpuFit(BaseModel):
    checkpoint: str
    weights_gb: float
    serve_gb: float
    train_gb: float
    target_memory_gb: float | None
    fits_serving: bool | None
    fits_training: bool | None


class EnvironmentFacts(BaseModel):
    """What assessment needs to know about an environment (built by the workflow from the plan)."""

    name: str
    region: str
    egress_per_gb_usd: float
    bandwidth_gbps: float
    allowed_data_regions: list[str] = Field(default_factory=list)
    gpu_type: str
    gpu_count: int


class CheckpointFacts(BaseModel):
    name: str
    parameters_billion: float | None = None


class AssessInput(BaseModel):
    source: EnvironmentFacts
    target: EnvironmentFacts
    checkpoints: list[CheckpointFacts]
    egress_budget_usd: float
    inventory: Inventory


class AssessReport(BaseModel):
    inventory: Inventory
    total_bytes: int
    total_objects: int
    egress_cost_usd: float
    transfer_seconds: float
    over_budget: bool
    residency_ok: bool
    residency_detail: str
    gpu_fit: list[GpuFit]
    warnings: list[str]


@activity.defn
@fail_fast_on_permanent_errors
def inventory_storage(request: InventoryInput) -> Inventory:
    """Runs on the source worker so listing stays in-region."""
    store = open_store(request.store)
    items = []
    for name, kind, path in request.workloads:
        count = size = 0
        for info in user_objects(store, path):  # a stream: a million objects are counted, not held
            count, size = count + 1, size + info.size
            if count % 1000 == 0:
                activity.heartbeat(f"{name}: {count} objects")
        items.append(WorkloadInventory(name=name, kind=kind, path=path, objects=count, bytes=size))
        activity.heartbeat(name)
    return Inventory(workloads=items)


def _residency(source: EnvironmentFacts, target: EnvironmentFacts) -> tuple[bool, str]:
    if not source.allowed_data_regions:
        return True, f"{source.name} sets no residency limit"
    if target.region in source.allowed_data_regions:
        return True, f"{target.region} is allowed for {source.name}'s data ({', '.join(source.allowed_data_regions)})"
    return False, (
        f"{target.name} is in {target.region}, but {source.name}'s data may only move to "
        f"{', '.join(source.allowed_data_regions)}"
    )


def _gpu_fit(request: AssessInput) -> tuple[list[GpuFit], list[str]]:
    compute = request.target
    per_device = GPU_MEMORY_GB.get(compute.gpu_type)
    memory = per_device * compute.gpu_count if per_device is not None else None
    fits, warnings = [], []
    if per_device is None and compute.gpu_count:
        warnings.append(f"target GPU type {compute.gpu_type!r} is not in skyshift's catalogue; memory fit not checked")
    sizes = {w.name: w.bytes for w in request.inventory.workloads if w.kind == "checkpoint"}
    for checkpoint in request.checkpoints:
        weights = (
            checkpoint.parameters_billion * 2 if checkpoint.parameters_billion else sizes.get(checkpoint.name, 0) / 1e9
        )
        fit = GpuFit(
            checkpoint=checkpoint.name,
            weights_gb=round(weights, 3),
            serve_gb=round(weights * SERVE_OVERHEAD, 3),
            train_gb=round(weights * TRAIN_OVERHEAD, 3),
            target_memory_gb=memory,
            fits_serving=None if memory is None else weights * SERVE_OVERHEAD <= memory,
            fits_training=None if memory is None else weights * TRAIN_OVERHEAD <= memory,
        )
        if fit.fits_serving is False:
            warnings.append(
                f"checkpoint {checkpoint.name!r} needs ~{fit.serve_gb} GB to serve but the target has {memory} GB "
                f"({compute.gpu_count}x {compute.gpu_type}): quantize to 8-bit or add GPUs"
            )
        elif fit.fits_training is False:
            warnings.append(
                f"checkpoint {checkpoint.name!r} fits for serving but not full fine-tuning (~{fit.train_gb} GB)"
            )
        fits.append(fit)
    return fits, warnings


@activity.defn
def project_assessment(request: AssessInput) -> AssessReport:
    """Control side: price and time the move, map GPUs, check residency. Pure computation on facts."""
    source, target, inventory = request.source, request.target, request.inventory
    total = inventory.total_bytes
    cost = total / 1e9 * source.egress_per_gb_usd
    bandwidth = min(source.bandwidth_gbps, target.bandwidth_gbps) * 1e9 / 8
    residency_ok, residency_detail = _residency(source, target)
    fits, warnings = _gpu_fit(request)
    if cost > request.egress_budget_usd:
        warnings.append(f"projected egress ${cost:,.2f} exceeds the budget ${request.egress_budget_usd:,.2f}")
    return AssessReport(
        inventory=inventory,
        total_bytes=total,
        total_objects=inventory.total_objects,
        egress_cost_usd=round(cost, 6),
        transfer_seconds=round(total / bandwidth, 3),
        over_budget=cost > request.egress_budget_usd,
        residency_ok=residency_ok,
        residency_detail=residency_detail,
        gpu_fit=fits,
        warnings=warnings,
    )
