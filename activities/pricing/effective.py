"""Effective cost per GPU-hour: what an hour of *useful* GPU work costs on an environment.

A list price per GPU-hour ranks offers wrongly when their throughput differs: an H100 cluster whose
all-reduce runs at 15 % of its network (skypilot#3592) does less work per dollar than its price says.
So the cost here is (instance price + storage + egress amortized over the work) ÷ the *measured*
useful throughput — the job's own samples/s when the POC ran it, else the micro-suite's per-GPU
figure scaled by two stated factors: the all-reduce bus bandwidth measured against the nominal one
the communication share was stated at, and the topology (a job spanning NVLink islands all-reduces
at the slower across-island busbw). It is expressed back in GPU-hours of a *reference* throughput
(the source's, by default), so "effective $/GPU-hour" is comparable across GPUs and clouds.
Pure functions over pydantic inputs; every input carries its source and age.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

HOURS_PER_MONTH = 730.0


class Sourced(BaseModel):
    """A number with where it came from and when: what the report prints beside it."""

    value: float = Field(allow_inf_nan=False)
    source: str
    as_of: datetime | None = None
    stale: bool = False

    def describe(self, now: datetime | None = None) -> str:
        age = ""
        if self.as_of is not None and now is not None:
            hours = (now - self.as_of).total_seconds() / 3600
            age = f", {hours:.1f} h old" if hours >= 1 else f", {hours * 60:.0f} min old"
        return f"{self.value:,.6g} from {self.source}{age}{', STALE' if self.stale else ''}"


class Factor(BaseModel):
    name: str
    value: float
    reason: str


class EffectiveInputs(BaseModel):
    environment: str
    price_per_hour: Sourced = Field(description="USD per instance-hour (all its GPUs)")
    gpu_count: int = Field(ge=1)
    throughput: Sourced = Field(
        description="Useful samples/s: the job's for the whole instance, or the micro-suite's per GPU"
    )
    throughput_basis: Literal["job", "micro-suite"]
    storage_gb: float = Field(0.0, ge=0)
    storage_usd_per_gb_month: Sourced | None = None
    egress_usd: Sourced | None = Field(None, description="One-off egress to bring the data here")
    amortize_hours: float = Field(730.0, gt=0, description="Hours of work the one-off egress is spread over")
    comm_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of a step spent in all-reduce at nominal busbw (stated)"
    )
    nominal_busbw_gbps: float | None = Field(None, gt=0, description="The busbw comm_fraction was stated at")
    busbw_in_island_gbps: Sourced | None = Field(None, description="Measured all-reduce busbw within one NVLink island")
    busbw_across_islands_gbps: Sourced | None = Field(None, description="Measured all-reduce busbw across islands")
    gpus_per_nvlink_island: int = Field(8, ge=1)


class Effective(BaseModel):
    environment: str
    usd_per_hour: float = Field(description="Price + storage + amortized egress, per instance-hour")
    useful_samples_per_s: float
    usd_per_million_samples: float
    effective_usd_per_gpu_hour: float = Field(description="USD per GPU-hour of the reference throughput")
    reference_samples_per_gpu_s: float
    factors: list[Factor]
    inputs: dict[str, str] = Field(description="Each input with its source and age")


def _comm_efficiency(comm_fraction: float, nominal: float, measured: float) -> float:
    """A step = compute + comm; comm time scales with nominal/measured busbw (Amdahl over the all-reduce)."""
    return 1.0 / (1.0 + comm_fraction * (nominal / measured - 1.0))


def scaling_factors(inputs: EffectiveInputs) -> list[Factor]:
    if inputs.throughput_basis == "job":
        return [
            Factor(
                name="topology x all-reduce",
                value=1.0,
                reason="already in the job's measured samples/s (it ran on this topology)",
            )
        ]
    if inputs.comm_fraction == 0 or inputs.nominal_busbw_gbps is None or inputs.gpu_count == 1:
        return [
            Factor(
                name="topology x all-reduce",
                value=1.0,
                reason="no communication share stated, or one GPU: per-GPU throughput x GPUs",
            )
        ]
    nominal = inputs.nominal_busbw_gbps
    in_island = inputs.busbw_in_island_gbps.value if inputs.busbw_in_island_gbps else nominal
    busbw = _comm_efficiency(inputs.comm_fraction, nominal, in_island)
    factors = [
        Factor(
            name="all-reduce busbw",
            value=busbw,
            reason=f"measured {in_island:,.4g} of nominal {nominal:,.4g} GB/s in an island; "
            f"{inputs.comm_fraction:.0%} of a step in all-reduce at nominal",
        )
    ]
    islands = math.ceil(inputs.gpu_count / inputs.gpus_per_nvlink_island)
    if islands > 1:
        if inputs.busbw_across_islands_gbps is None:
            raise ValueError(
                f"{inputs.environment}: {inputs.gpu_count} GPUs span {islands} NVLink islands: "
                "busbw_across_islands_gbps is needed (measure it with the all-reduce suite)"
            )
        across = inputs.busbw_across_islands_gbps.value
        whole = _comm_efficiency(inputs.comm_fraction, nominal, across)
        factors.append(
            Factor(
                name="topology",
                value=whole / busbw,
                reason=f"{inputs.gpu_count} GPUs span {islands} NVLink islands of "
                f"{inputs.gpus_per_nvlink_island}: all-reduce at {across:,.4g} GB/s across them",
            )
        )
    else:
        factors.append(Factor(name="topology", value=1.0, reason=f"{inputs.gpu_count} GPUs fit one NVLink island"))
    return factors


def effective_cost(
    inputs: EffectiveInputs, reference_samples_per_gpu_s: float | None = None, now: datetime | None = None
) -> Effective:
    """(price + storage + amortized egress) ÷ useful throughput, in GPU-hours of a reference throughput."""
    storage = (
        inputs.storage_gb * inputs.storage_usd_per_gb_month.value / HOURS_PER_MONTH
        if inputs.storage_usd_per_gb_month
        else 0.0
    )
    egress = inputs.egress_usd.value / inputs.amortize_hours if inputs.egress_usd else 0.0
    per_hour = inputs.price_per_hour.value + storage + egress
    factors = scaling_factors(inputs)
    scale = math.prod(f.value for f in factors)
    raw = inputs.throughput.value
    useful = raw * scale if inputs.throughput_basis == "job" else raw * inputs.gpu_count * scale
    if useful <= 0:
        raise ValueError(f"{inputs.environment}: useful throughput {useful:g} samples/s: nothing to divide the cost by")
    per_million = per_hour / (useful * 3600) * 1e6
    reference = reference_samples_per_gpu_s or useful / inputs.gpu_count
    described = {"price_per_hour": inputs.price_per_hour.describe(now), "throughput": inputs.throughput.describe(now)}
    for key in ("storage_usd_per_gb_month", "egress_usd", "busbw_in_island_gbps", "busbw_across_islands_gbps"):
        value = getattr(inputs, key)
        if value is not None:
            described[key] = value.describe(now)
    return Effective(
        environment=inputs.environment,
        usd_per_hour=per_hour,
        useful_samples_per_s=useful,
        usd_per_million_samples=per_million,
        effective_usd_per_gpu_hour=per_million * reference * 3600 / 1e6,
        reference_samples_per_gpu_s=reference,
        factors=factors,
        inputs=described,
    )
