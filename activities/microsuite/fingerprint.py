"""Environment fingerprint: driver, CUDA, torch, NCCL, cuDNN, Python, OS, CPU and GPUs, as this worker sees them.

Two clouds can sell the same GPU under different drivers and images; most "it was faster there"
surprises are in this list. Every value is read from the library that owns it (torch, NVML,
platform), never from a configuration file that might lie; what cannot be read is noted with why.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from activities.microsuite.models import EnvironmentFingerprint, GpuInfo


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: `SKYSHIFT_CPU_BF16=on|off` (likewise `_FP16`) overrides what /proc/cpuinfo says. The test suite runs
#: both branches on any CPU with it; an operator can use it to benchmark an emulated dtype on purpose.
FORCE_VARIABLE = "SKYSHIFT_CPU_{}"


def cpu_supports(dtype: str) -> bool:
    """Native CPU units for the dtype; without them torch emulates it, and a figure would measure the emulation."""
    forced = os.environ.get(FORCE_VARIABLE.format(dtype.upper()), "auto").strip().lower()
    if forced in ("on", "off"):
        return forced == "on"
    if forced not in ("", "auto"):
        raise ValueError(f"{FORCE_VARIABLE.format(dtype.upper())}={forced!r}: use on, off or auto")
    flags = cpu_flags()
    return {
        "fp32": True,
        "bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "fp16": bool(flags & {"avx512_fp16", "amx_fp16"}),
    }.get(dtype, False)


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _dotted(version: int, parts: tuple[int, ...]) -> str:
    """NVML and cuDNN pack versions as integers (12080 -> 12.8, 91002 -> 9.10.2)."""
    out = []
    for divisor in parts:
        out.append(str(version // divisor))
        version %= divisor
    return ".".join(out)


def cudnn_version(number: int) -> str:
    # cuDNN 9 packs major*10000 + minor*100 + patch; cuDNN 8 and older packed major*1000 + minor*100 + patch.
    return _dotted(number, (10000, 100, 1)) if number >= 90000 else _dotted(number, (1000, 100, 1))


def environment_fingerprint() -> EnvironmentFingerprint:
    import torch

    notes: list[str] = []
    cuda = torch.cuda.is_available()
    gpus: list[GpuInfo] = []
    nccl = cudnn = None
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=props.name,
                    memory_mib=props.total_memory // (1 << 20),
                    compute_capability=f"{props.major}.{props.minor}",
                )
            )
        try:
            version = torch.cuda.nccl.version()
            # torch returns (major, minor, patch); old releases returned NCCL_VERSION_CODE (2.9+: 21805 = 2.18.5).
            nccl = ".".join(map(str, version)) if isinstance(version, tuple) else _dotted(version, (10000, 100, 1))
        except (AttributeError, RuntimeError, TypeError) as error:
            notes.append(f"NCCL version unreadable: {error}")
    if torch.backends.cudnn.is_available() and (number := torch.backends.cudnn.version()):
        cudnn = cudnn_version(number)
    driver, cuda_driver = _driver(notes)
    capability = max((tuple(map(int, g.compute_capability.split("."))) for g in gpus), default=None)
    return EnvironmentFingerprint(
        python=platform.python_version(),
        os=os_name(),
        kernel=platform.release(),
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count() or 0,
        torch=torch.__version__,
        cuda_runtime=torch.version.cuda,
        cudnn=cudnn,
        nccl=nccl,
        driver=driver,
        cuda_driver=cuda_driver,
        gpus=gpus,
        bf16=capability >= (8, 0) if capability else cpu_supports("bf16"),
        fp8=bool(capability and capability >= (8, 9)),
        notes=notes if cuda else [*notes, "no CUDA device: GPU, driver, NCCL and CUDA fields are empty"],
    )


def _driver(notes: list[str]) -> tuple[str | None, str | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # no driver on this machine, or a library/driver mismatch
        notes.append(f"driver unreadable: NVML unavailable: {error}")
        return None, None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda_driver = _dotted(pynvml.nvmlSystemGetCudaDriverVersion(), (1000, 10))
        return (driver.decode() if isinstance(driver, bytes) else driver), cuda_driver
    finally:
        pynvml.nvmlShutdown()
