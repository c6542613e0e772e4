"""Placement: rank offers for a job by expected total cost, subject to fit, topology, residency, deadline.

Expected total cost of running the job on an offer =
  price/h x wall hours, where wall hours = compute hours / (1 - interruption rate x loss per interruption)
  (each preemption loses half a checkpoint interval of work plus the restart time; Poisson arrivals)
+ egress to bring the dataset there once (spread over the planned epochs in the per-epoch figure)
+ storage of the dataset for the wall hours.
Compute hours come from the offer's *measured* useful throughput for this job (the POC's samples/s,
or the effective figure from `effective.py`), never from its list price per GPU.

A pure function over offers; an offer that cannot run the job is kept in the answer with the reason,
so `skyshift place` can say why the cheapest-looking one was not chosen.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from activities.pricing.quotes import Market

HOURS_PER_MONTH = 730.0


class Offer(BaseModel):
    """One way to run the job: an environment, an instance, a market, and what was measured there."""

    id: str = Field(min_length=1)
    provider: str
    region: str
    instance_type: str
    gpu: str | None = None
    gpu_count: int = Field(ge=1)
    gpu_memory_gb: float = Field(ge=0)
    gpus_per_nvlink_island: int = Field(8, ge=1)
    market: Market = "on_demand"
    usd_per_hour: float = Field(gt=0, description="Instance-hour price (the price book's quote)")
    samples_per_s: float = Field(gt=0, description="Measured useful throughput of this job on this offer")
    interruption_rate_per_hour: float = Field(0.0, ge=0, description="Expected preemptions per hour (spot)")
    available: bool = True
    egress_usd_per_gb: float = Field(0.0, ge=0, description="To bring the dataset here from where it is (0 in place)")
    storage_usd_per_gb_month: float = Field(0.0, ge=0)
    price_source: str = ""
    stale: bool = False


class PlacementJob(BaseModel):
    name: str = "job"
    samples_per_epoch: float = Field(gt=0)
    epochs: int = Field(1, ge=1)
    dataset_gb: float = Field(0.0, ge=0)
    min_gpu_memory_gb: float = Field(0.0, ge=0, description="Per GPU: the model, optimizer and activations fit")
    min_gpus: int = Field(1, ge=1)
    single_island: bool = Field(False, description="Needs all its GPUs inside one NVLink island")
    allowed_regions: list[str] | None = Field(None, description="Residency: None means anywhere")
    deadline_hours: float | None = Field(None, gt=0)
    checkpoint_interval_hours: float = Field(0.5, gt=0)
    restart_hours: float = Field(0.1, ge=0, description="Time to get a new instance and resume after a preemption")


class Ranked(BaseModel):
    offer: Offer
    feasible: bool
    reason: str = ""
    expected_usd: float = math.inf
    compute_hours: float = math.inf
    wall_hours: float = math.inf
    compute_usd: float = 0.0
    egress_usd: float = 0.0
    storage_usd: float = 0.0
    usd_per_epoch: float = math.inf


def expected_cost(job: PlacementJob, offer: Offer) -> Ranked:
    """One offer's expected total cost for the job, or why it cannot run it."""
    reason = ""
    if not offer.available:
        reason = "no capacity now"
    elif job.allowed_regions is not None and offer.region not in job.allowed_regions:
        reason = f"residency: region {offer.region} is not in {', '.join(job.allowed_regions)}"
    elif offer.gpu_memory_gb < job.min_gpu_memory_gb:
        reason = f"memory: {offer.gpu_memory_gb:g} GB per GPU < {job.min_gpu_memory_gb:g} GB needed"
    elif offer.gpu_count < job.min_gpus:
        reason = f"GPUs: {offer.gpu_count} < {job.min_gpus} needed"
    elif job.single_island and offer.gpu_count > offer.gpus_per_nvlink_island:
        reason = f"topology: {offer.gpu_count} GPUs span NVLink islands of {offer.gpus_per_nvlink_island}"
    if reason:
        return Ranked(offer=offer, feasible=False, reason=reason)
    compute_hours = job.samples_per_epoch * job.epochs / (offer.samples_per_s * 3600)
    lost_per_interruption = job.checkpoint_interval_hours / 2 + job.restart_hours
    progress = 1.0 - offer.interruption_rate_per_hour * lost_per_interruption
    if progress <= 0.05:
        return Ranked(
            offer=offer,
            feasible=False,
            reason=(
                f"preemption: {offer.interruption_rate_per_hour:g}/h x {lost_per_interruption:.2f} h lost each leaves "
                "no progress"
            ),
        )
    wall = compute_hours / progress
    if job.deadline_hours is not None and wall > job.deadline_hours:
        return Ranked(
            offer=offer,
            feasible=False,
            wall_hours=wall,
            compute_hours=compute_hours,
            reason=f"deadline: {wall:,.1f} h expected > {job.deadline_hours:g} h",
        )
    compute = offer.usd_per_hour * wall
    egress = job.dataset_gb * offer.egress_usd_per_gb
    storage = job.dataset_gb * offer.storage_usd_per_gb_month * wall / HOURS_PER_MONTH
    total = compute + egress + storage
    return Ranked(
        offer=offer,
        feasible=True,
        expected_usd=total,
        compute_hours=compute_hours,
        wall_hours=wall,
        compute_usd=compute,
        egress_usd=egress,
        storage_usd=storage,
        usd_per_epoch=total / job.epochs,
    )


def place(job: PlacementJob, offers: list[Offer]) -> list[Ranked]:
    """Every offer, feasible ones first by expected total cost, then the others with their reason."""
    ranked = [expected_cost(job, offer) for offer in offers]
    return sorted(ranked, key=lambda r: (not r.feasible, r.expected_usd, r.offer.id))


def cheapest_hourly(job: PlacementJob, offers: list[Offer]) -> Offer | None:
    """The baseline placement: the lowest price per GPU-hour that has capacity and enough GPU memory."""
    fits = [
        o for o in offers if o.available and o.gpu_memory_gb >= job.min_gpu_memory_gb and o.gpu_count >= job.min_gpus
    ]
    return min(fits, key=lambda o: (o.usd_per_hour / o.gpu_count, o.id), default=None)
