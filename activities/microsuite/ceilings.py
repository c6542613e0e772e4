"""Device ceilings: datasheet peaks per GPU model, each with its source, so a figure is read against its device.

An A100 at a third of its fp32 peak can still beat a slower source; only the ceiling shows it is
sick. Peaks are dense (NVIDIA datasheets print tensor figures "with sparsity", twice the dense
rate; the table holds the dense half). Memory is the HBM/GDDR bandwidth, which counts reads and
writes together, as the suite's device copy does. PCIe is per direction (datasheets print both
directions summed), which is what one host->device copy can use. `as_of` is when a figure was
taken from its source into this table.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from activities.microsuite.models import Measurement


class DeviceCeiling(BaseModel):
    model: str
    pattern: str = Field(description="Regular expression matched against torch.cuda.get_device_name()")
    matmul_tflops: dict[str, float] = Field(description="Dense peak: fp32 (no tensor cores), tf32, bf16, fp16")
    memory_gbps: float = Field(description="Device memory bandwidth, GB/s (reads + writes)")
    pcie_gbps: float = Field(description="Host link, GB/s per direction")
    source: str
    as_of: str


_H100 = "NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/ (sparse figures halved)"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h200/ (sparse figures halved)"
_A100 = (
    "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), "
    "https://www.nvidia.com/en-us/data-center/a100/"
)
_L4 = "NVIDIA L4 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/l4/ (sparse figures halved)"
_L40S = "NVIDIA L40S GPU datasheet, https://www.nvidia.com/en-us/data-center/l40s/ (sparse figures halved)"
_A10 = "NVIDIA A10 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/products/a10-gpu/"
_AS_OF = "2026-11-29"

#: Hopper SXM parts: 989.4 dense bf16/fp16, 494.7 tf32, 66.9 fp32 (datasheet: 1,979 / 989 "with sparsity", 67).
_HOPPER_SXM = {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}
_AMPERE_A100 = {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}

CEILINGS: list[DeviceCeiling] = [
    DeviceCeiling(model="H100 SXM5 80GB", pattern=r"H100.*(HBM3|SXM)", matmul_tflops=_HOPPER_SXM,
                  memory_gbps=3350, pcie_gbps=64, source=_H100, as_of=_AS_OF),
    DeviceCeiling(model="H100 PCIe 80GB", pattern=r"H100.*PCIe",
                  matmul_tflops={"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
                  memory_gbps=2000, pcie_gbps=64, source=_H100, as_of=_AS_OF),
    DeviceCeiling(model="H200 SXM 141GB", pattern=r"H200(?!.*NVL)", matmul_tflops=_HOPPER_SXM,
                  memory_gbps=4800, pcie_gbps=64, source=_H200, as_of=_AS_OF),
    DeviceCeiling(model="A100 SXM4 80GB", pattern=r"A100.*SXM4?-80GB", matmul_tflops=_AMPERE_A100,
                  memory_gbps=2039, pcie_gbps=32, source=_A100, as_of=_AS_OF),
    DeviceCeiling(model="A100 SXM4 40GB", pattern=r"A100.*SXM4?-40GB", matmul_tflops=_AMPERE_A100,
                  memory_gbps=1555, pcie_gbps=32, source=_A100, as_of=_AS_OF),
    DeviceCeiling(model="A100 PCIe 80GB", pattern=r"A100 80GB PCIe", matmul_tflops=_AMPERE_A100,
                  memory_gbps=1935, pcie_gbps=32, source=_A100, as_of=_AS_OF),
    DeviceCeiling(model="A100 PCIe 40GB", pattern=r"A100-PCIE-40GB", matmul_tflops=_AMPERE_A100,
                  memory_gbps=1555, pcie_gbps=32, source=_A100, as_of=_AS_OF),
    DeviceCeiling(model="L40S", pattern=r"L40S", matmul_tflops={"fp32": 91.6, "tf32": 183.0, "bf16": 362.05,
                  "fp16": 362.05}, memory_gbps=864, pcie_gbps=32, source=_L40S, as_of=_AS_OF),
    DeviceCeiling(model="L4", pattern=r"\bL4\b", matmul_tflops={"fp32": 30.3, "tf32": 60.0, "bf16": 121.0,
                  "fp16": 121.0}, memory_gbps=300, pcie_gbps=32, source=_L4, as_of=_AS_OF),
    DeviceCeiling(model="A10", pattern=r"\bA10$", matmul_tflops={"fp32": 31.2, "tf32": 62.5, "bf16": 125.0,
                  "fp16": 125.0}, memory_gbps=600, pcie_gbps=32, source=_A10, as_of=_AS_OF),
]  # fmt: skip


class CeilingFigure(BaseModel):
    """A measured figure against its ceiling."""

    model: str
    ceiling: float
    unit: str
    fraction: float = Field(description="measured / ceiling")
    basis: str = Field(description="Which datasheet line, e.g. 'bf16 dense tensor TFLOP/s'")
    source: str
    as_of: str


def ceiling_for(device_name: str) -> DeviceCeiling | None:
    return next((c for c in CEILINGS if re.search(c.pattern, device_name)), None)


def ceiling_of(device_name: str, measurement: Measurement) -> CeilingFigure | None:
    """The datasheet line a measurement is comparable to; None for unknown devices or figures without one."""
    entry = ceiling_for(device_name)
    if entry is None:
        return None
    if measurement.kind in ("matmul", "sustained") and measurement.dtype in entry.matmul_tflops:
        peak, basis = entry.matmul_tflops[measurement.dtype], f"{measurement.dtype} dense TFLOP/s"
    elif measurement.kind == "device_copy":
        peak, basis = entry.memory_gbps, "memory bandwidth GB/s"
    elif measurement.kind in ("h2d", "d2h"):
        peak, basis = entry.pcie_gbps, "PCIe GB/s per direction"
    else:
        return None
    return CeilingFigure(
        model=entry.model,
        ceiling=peak,
        unit=measurement.unit,
        fraction=round(measurement.median / peak, 4),
        basis=basis,
        source=entry.source,
        as_of=entry.as_of,
    )
