"""GPU/CPU micro-benchmark: the same suite on source and target, with telemetry, fingerprints, ceilings and judging.

`run_benchmark` (activity `run_benchmark`) runs the suite and fingerprints the environment on one
worker; `judge_bench` (activity `judge_bench`) holds both sides against each other, the plan's
tolerances and each device's datasheet ceiling, and puts both fingerprints in one compatibility
matrix. The judge lives in `activities.microsuite.judge` (not re-exported: it builds on `activities.windows`,
which imports this package). Importing this package does not import torch.
"""

from activities.microsuite.ceilings import CEILINGS, CeilingFigure, DeviceCeiling, ceiling_for, ceiling_of
from activities.microsuite.compat import compatibility_matrix
from activities.microsuite.fingerprint import environment_fingerprint
from activities.microsuite.models import (
    AllReducePoint,
    AllReduceResult,
    BenchInput,
    BenchProgress,
    BenchResult,
    BenchTrial,
    CompatibilityMatrix,
    CompatRow,
    EnvironmentFingerprint,
    GpuInfo,
    GpuTelemetry,
    Measurement,
    Skipped,
    Stat,
    SuiteResult,
    SustainedResult,
    TelemetrySample,
    TelemetrySummary,
    Topology,
)
from activities.microsuite.suite import resolve_device, run_benchmark, run_benchmark_activity, run_suite

__all__ = [
    "CEILINGS",
    "AllReducePoint",
    "AllReduceResult",
    "BenchInput",
    "BenchProgress",
    "BenchResult",
    "BenchTrial",
    "CeilingFigure",
    "CompatRow",
    "CompatibilityMatrix",
    "DeviceCeiling",
    "EnvironmentFingerprint",
    "GpuInfo",
    "GpuTelemetry",
    "Measurement",
    "Skipped",
    "Stat",
    "SuiteResult",
    "SustainedResult",
    "TelemetrySample",
    "TelemetrySummary",
    "Topology",
    "ceiling_for",
    "ceiling_of",
    "compatibility_matrix",
    "environment_fingerprint",
    "resolve_device",
    "run_benchmark",
    "run_benchmark_activity",
    "run_suite",
]
