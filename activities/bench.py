"""GPU/CPU benchmarks and NVML telemetry: the same suite on source and target, compared by median.

The suite measures what a training job feels: dense matmul throughput (TFLOP/s) and the
samples/second of a small MLP's forward+backward+optimizer step. On a machine without CUDA it
runs on the CPU and says so; GPU telemetry then reports why it is absent instead of inventing it.
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import torch
from pydantic import BaseModel, Field
from temporalio import activity


class BenchInput(BaseModel):
    environment: str = "local"
    trials: int = Field(3, ge=1, le=50)
    matrix_size: int = Field(1024, ge=64, le=16384)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seconds_per_test: float = Field(0.5, gt=0, le=60, description="Timed duration of each test within a trial")


class GpuTelemetry(BaseModel):
    name: str
    driver: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int
    power_w: float | None
    temperature_c: int | None


class BenchTrial(BaseModel):
    matmul_tflops: float
    train_samples_per_s: float


class BenchResult(BaseModel):
    environment: str
    device: str
    device_name: str
    dtype: str
    torch_version: str
    trials: list[BenchTrial]
    median_matmul_tflops: float
    median_train_samples_per_s: float
    telemetry: GpuTelemetry | None
    telemetry_note: str


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was requested but torch.cuda.is_available() is False on this worker")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device: torch.device, seconds: float) -> tuple[int, float]:
    """Run `step` repeatedly for about `seconds` after one warm-up; return (iterations, elapsed)."""
    step()
    _sync(device)
    iterations, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or iterations < 3:
        step()
        iterations += 1
        if iterations % 4 == 0:
            _sync(device)
    _sync(device)
    return iterations, time.perf_counter() - started


def matmul_tflops(device: torch.device, size: int, dtype: torch.dtype, seconds: float) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    iterations, elapsed = _timed(lambda: a @ b, device, seconds)
    return 2 * size**3 * iterations / elapsed / 1e12


def train_samples_per_s(device: torch.device, dtype: torch.dtype, seconds: float, batch: int = 256) -> float:
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 1024),
        torch.nn.GELU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.GELU(),
        torch.nn.Linear(1024, 10),
    ).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = torch.randn(batch, 512, device=device, dtype=dtype)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(inputs).float(), labels).backward()
        optimizer.step()

    iterations, elapsed = _timed(step, device, seconds)
    return batch * iterations / elapsed


def gpu_telemetry(device: torch.device) -> tuple[GpuTelemetry | None, str]:
    """Read NVML for the device in use; explain why when there is nothing to read."""
    if device.type != "cuda":
        return None, "ran on CPU: no CUDA device on this worker, so no NVML telemetry"
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # NVML missing or driver mismatch: report, do not fail the benchmark
        return None, f"NVML unavailable: {error}"
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            power = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
        except pynvml.NVMLError:
            power = None
        try:
            temperature = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        except pynvml.NVMLError:
            temperature = None
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return GpuTelemetry(
            name=name.decode() if isinstance(name, bytes) else name,
            driver=driver.decode() if isinstance(driver, bytes) else driver,
            memory_total_mb=memory.total // (1 << 20),
            memory_used_mb=memory.used // (1 << 20),
            utilization_pct=pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            power_w=power,
            temperature_c=temperature,
        ), "NVML"
    finally:
        pynvml.nvmlShutdown()


def run_benchmark(request: BenchInput, progress=lambda trial: None) -> BenchResult:
    device = resolve_device(request.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    trials = []
    for index in range(request.trials):
        trials.append(
            BenchTrial(
                matmul_tflops=round(matmul_tflops(device, request.matrix_size, dtype, request.seconds_per_test), 5),
                train_samples_per_s=round(train_samples_per_s(device, dtype, request.seconds_per_test), 2),
            )
        )
        progress(index + 1)
    telemetry, note = gpu_telemetry(device)
    return BenchResult(
        environment=request.environment,
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        dtype=str(dtype).removeprefix("torch."),
        torch_version=torch.__version__,
        trials=trials,
        median_matmul_tflops=statistics.median(t.matmul_tflops for t in trials),
        median_train_samples_per_s=statistics.median(t.train_samples_per_s for t in trials),
        telemetry=telemetry,
        telemetry_note=note,
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


@activity.defn(name="run_benchmark")
def run_benchmark_activity(request: BenchInput) -> BenchResult:
    return run_benchmark(request, progress=activity.heartbeat)
