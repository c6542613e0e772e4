"""Compatibility matrix: both environments' fingerprints in one table, flagging what migration guides warn about.

The checks are the ones that break a moved workload before any figure does: a CUDA major change
(custom kernels and extensions must be rebuilt), a target driver older than the CUDA the image
carries, a torch minor change (numerics and defaults move), bf16/fp8 missing on the target, and
less GPU memory (the model needs quantization or a smaller batch). `fail` means the workload will
not run as it is; `warn` means a person should look before approving.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from activities.microsuite.models import CompatibilityMatrix, CompatRow, EnvironmentFingerprint

#: Oldest Linux driver that runs anything built with a CUDA major (minor-version compatibility), from
#: https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html (Table 1, checked 2026-11-29):
#: 11.x needs >= 450.80.02, 12.x >= 525(.60.13, the 12.0 GA driver), 13.x >= 580. Under it a newer minor runs with a
#: limited feature set (no PTX JIT of code newer than the driver).
CUDA_DRIVER_FLOORS: dict[int, tuple[int, ...]] = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580,)}


def _numbers(version: str | None) -> tuple[int, ...]:
    """Leading dotted integers: '2.5.1+cu124' -> (2, 5, 1); '' or None -> ()."""
    if not version:
        return ()
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def _show(value: object) -> str:
    return "-" if value in (None, "", []) else str(value)


def _same_or(item: str, source: object, target: object, status: str, detail: str) -> CompatRow:
    if source == target:
        return CompatRow(item=item, source=_show(source), target=_show(target), status="same")
    return CompatRow(item=item, source=_show(source), target=_show(target), status=status, detail=detail)


def _gpu(s: EnvironmentFingerprint, t: EnvironmentFingerprint) -> CompatRow:
    def describe(f: EnvironmentFingerprint) -> str:
        return f"{len(f.gpus)}x {f.gpu_name}" if f.gpus else "none (CPU)"

    source, target = describe(s), describe(t)
    if len(t.gpus) < len(s.gpus):
        return CompatRow(item="GPUs", source=source, target=target, status="warn",
                         detail=f"fewer GPUs on the target ({len(t.gpus)} < {len(s.gpus)}): "
                         "parallelism layouts sized for the source do not fit")  # fmt: skip
    return _same_or("GPUs", source, target, "info", "different GPU model: compare the suite's figures")


def _memory(s: EnvironmentFingerprint, t: EnvironmentFingerprint) -> CompatRow:
    source, target = s.gpu_memory_mib, t.gpu_memory_mib
    row = CompatRow(item="GPU memory per GPU", source=f"{source / 1024:.0f} GiB" if source else "-",
                    target=f"{target / 1024:.0f} GiB" if target else "-", status="same")  # fmt: skip
    if source and target and target < source:
        row.status = "warn"
        row.detail = (
            f"the target has {target / 1024:.0f} GiB per GPU, {100 * (1 - target / source):.0f}% less than the "
            "source: a model sized for the source needs quantization or a smaller batch"
        )
    elif source and not target:
        row.status, row.detail = "fail", "the target has no GPU memory to hold what runs on the source's GPUs"
    elif source != target:
        row.status = "ok"
    return row


def _capability(s: EnvironmentFingerprint, t: EnvironmentFingerprint) -> CompatRow:
    def caps(f: EnvironmentFingerprint) -> str:
        return ",".join(sorted({g.compute_capability for g in f.gpus})) or "-"

    why = "kernels built only for the source's architecture (no PTX) will not load on the target"
    return _same_or("compute capability", caps(s), caps(t), "info", why)


Rule = Callable[[EnvironmentFingerprint, EnvironmentFingerprint], CompatRow]


def _feature(name: str, why: str, severity: str) -> Rule:
    def check(s: EnvironmentFingerprint, t: EnvironmentFingerprint) -> CompatRow:
        source, target = getattr(s, name), getattr(t, name)
        row = CompatRow(item=name, source="yes" if source else "no", target="yes" if target else "no", status="same")
        if source and not target:
            row.status, row.detail = severity, f"the source has {name} and the target does not: {why}"
        elif source != target:
            row.status = "ok"
        return row

    return check


def _cuda_runtime(s: EnvironmentFingerprint, t: EnvironmentFingerprint) -> CompatRow:
    source, target = _numbers(s.cuda_runtime), _numbers(t.cuda_runtime)
    row = _same_or("CUDA runtime", s.cuda_runtime, t.cuda_runtime, "info", "CUDA minor version changes")
    if source and target and source[0] != target[0]:
        row.status = "warn"
        row.detail = (
            f"CUDA major changes {s.cuda_runtime} -> {t.cuda_runtime}: custom CUDA extensions and kernels built "
            "for one major must be rebuilt for the other"
        )
    elif bool(source) != bool(target):
        row.status, row.detail = "info", "one side has no CUDA build of torch"
    return row


def driver_check(runtime: str, driver: str | None, cuda_driver: str | None) -> tuple[str, str]:
    """(status, why) of running CUDA `runtime` on a driver; ('ok', ...) when it is new enough."""
    needed, supported, installed = _numbers(runtime), _numbers(cuda_driver), _numbers(driver)
    floor = CUDA_DRIVER_FLOORS.get(needed[0]) if needed else None
    floor_text = ".".join(map(str, floor)) if floor else "?"
    if not supported:
        return "warn", f"the target's driver is unreadable; CUDA {runtime} needs a driver >= {floor_text}"
    if supported[0] < needed[0] or (floor and installed and installed < floor):
        return "fail", (
            f"driver {driver} supports CUDA up to {cuda_driver}, older than the CUDA {runtime} the image needs "
            f"(CUDA {needed[0]}.x needs a driver >= {floor_text})"
        )
    if supported[:2] < needed[:2]:
        return "warn", (
            f"driver {driver} supports CUDA {cuda_driver} < {runtime}: runs only under minor-version compatibility "
            "(no PTX JIT of newer code); upgrade the driver to the runtime's release"
        )
    return "ok", f"driver {driver} supports CUDA {cuda_driver} >= {runtime}"


def _driver(s: EnvironmentFingerprint, t: EnvironmentFingerprint) -> CompatRow:
    row = _same_or("driver (CUDA it supports)", f"{_show(s.driver)} ({_show(s.cuda_driver)})",
                   f"{_show(t.driver)} ({_show(t.cuda_driver)})", "ok", "")  # fmt: skip
    if not t.gpus:
        return row
    # The image moved from the source carries the source's runtime; the target's own build may differ.
    needs = sorted({r for r in (s.cuda_runtime, t.cuda_runtime) if r}, key=_numbers)
    verdicts = [driver_check(runtime, t.driver, t.cuda_driver) for runtime in needs]
    order = {"ok": 0, "warn": 1, "fail": 2}
    worst = max(verdicts, key=lambda v: order[v[0]], default=("ok", ""))
    if worst[0] != "ok":
        row.status, row.detail = worst[0], worst[1]
    elif row.status != "same":
        row.detail = worst[1]
    return row


def _torch(s: EnvironmentFingerprint, t: EnvironmentFingerprint) -> CompatRow:
    source, target = _numbers(s.torch), _numbers(t.torch)
    row = _same_or("torch", s.torch, t.torch, "info", "same torch release, different build (CUDA/CPU variant)")
    if source[:1] != target[:1]:
        row.status, row.detail = "warn", f"torch major changes {s.torch} -> {t.torch}: APIs and defaults change"
    elif source[:2] != target[:2]:
        row.status = "warn"
        row.detail = (
            f"torch minor changes {s.torch} -> {t.torch}: kernels, numerics and defaults can change; "
            "compare the parallel run before trusting the target"
        )
    elif source != target and s.torch != t.torch:
        row.detail = "torch patch release changes"
    return row


def _python(s: EnvironmentFingerprint, t: EnvironmentFingerprint) -> CompatRow:
    minor = _numbers(s.python)[:2] != _numbers(t.python)[:2]
    why = "Python minor changes: compiled wheels differ per minor" if minor else "Python patch release changes"
    return _same_or("Python", s.python, t.python, "info", why)


def _plain(item: str, field: str, detail: str) -> Rule:
    return lambda s, t: _same_or(item, getattr(s, field), getattr(t, field), "info", detail)


#: The matrix's rows, in the order shown; each rule sees both fingerprints and returns one row.
RULES: list[Rule] = [
    _gpu,
    _memory,
    _capability,
    _feature("bf16", "bf16 training and inference recipes do not run as they are", "fail"),
    _feature("fp8", "fp8 recipes (Transformer Engine, fp8 inference) fall back or fail", "warn"),
    _cuda_runtime,
    _driver,
    _torch,
    _plain("NCCL", "nccl", "collective performance and bugs differ between NCCL releases"),
    _plain("cuDNN", "cudnn", "convolution/attention kernels differ between cuDNN releases"),
    _python,
    _plain("OS", "os", ""),
    _plain("kernel", "kernel", ""),
    _plain("CPU", "cpu_model", ""),
    _plain("CPU cores", "cpu_count", ""),
]


def compatibility_matrix(
    source: EnvironmentFingerprint, target: EnvironmentFingerprint, source_name: str = "source",
    target_name: str = "target",
) -> CompatibilityMatrix:  # fmt: skip
    return CompatibilityMatrix(
        source_environment=source_name,
        target_environment=target_name,
        rows=[rule(source, target) for rule in RULES],
    )
