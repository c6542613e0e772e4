"""The benchmark's boundary models: what a run is asked for and every figure, sample and fingerprint it returns.

These models travel through workflow histories, so every field added after the first release has a
default (an old `BenchResult` must still decode), and nothing here imports torch: the CLI and the
workflow sandbox import these models, and torch costs seconds to import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

Dtype = Literal["fp32", "tf32", "bf16", "fp16"]
TestKind = Literal["matmul", "device_copy", "h2d", "d2h", "latency", "train", "sustained", "allreduce"]

#: On a GPU the plan's matrix size is often too small to fill the device; the suite then adds this size so
#: the judge has a figure it can hold against the datasheet (mamf-finder reaches ~80% of H100 bf16 near it).
PEAK_MATRIX_SIZE = 8192
#: Matmuls smaller than this are not judged against a GPU's ceiling: they cannot fill an H100-class device.
MIN_CEILING_MATRIX_SIZE = 4096


class BenchInput(BaseModel):
    """One run of the micro-suite on one environment's worker."""

    environment: str = "local"
    trials: int = Field(3, ge=1, le=50, description="Repeats of every test; the median and min-max are reported")
    matrix_size: int = Field(1024, ge=16, le=16384, description="Square matmul size (the plan's)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seconds_per_test: float = Field(0.5, gt=0, le=60, description="Timed duration of each test within a trial")
    matrix_sizes: list[int] = Field(default_factory=list, description="More matmul sizes besides matrix_size")
    dtypes: list[Dtype] | None = Field(None, description="Matmul dtypes; default: every one the device supports")
    copy_mib: float = Field(64, gt=0, le=65536, description="Host<->device copy size (nvbandwidth uses 64 MiB)")
    device_copy_mib: float | None = Field(
        None, gt=0, le=65536, description="Device memory copy size; default 1024 MiB on CUDA (far above L2), 64 on CPU"
    )
    train_batch: int = Field(256, ge=1, le=65536, description="Batch of the MLP training step (256 in older results)")
    inference_batch: int | None = Field(
        None,
        ge=2,
        le=4096,
        description="The larger inference batch (batch 1 always runs); default 32 on CUDA, 8 on CPU",
    )
    inference_seq: int | None = Field(None, ge=1, le=8192, description="Tokens per sequence; default 256 CUDA, 32 CPU")
    inference_width: int | None = Field(
        None, ge=8, le=8192, description="d_model of the 2-layer encoder (heads: width/64); default 1024 CUDA, 128 CPU"
    )
    sustained_seconds: float | None = Field(
        None, ge=0, le=3600, description="Sustained matmul run; default 60 s on CUDA, 2 s on CPU; 0 skips it"
    )
    allreduce_processes: int | None = Field(
        None, ge=0, le=64, description="All-reduce ranks; default every GPU when there are several; 0 skips it"
    )
    allreduce_sizes: list[int] = Field(
        default_factory=lambda: [1 << 20, 16 << 20, 256 << 20], description="All-reduce message sizes, bytes"
    )
    telemetry_interval_s: float = Field(0.1, gt=0, le=10, description="NVML sampling period")
    telemetry_url: str | None = Field(
        None, description="Store URL (file://, s3://, gs://) the NVML series is written under; the result keeps its URL"
    )
    seed: int = Field(0, description="Seeds every input tensor: both sides multiply the same numbers")

    @model_validator(mode="after")
    def _check(self) -> BenchInput:
        for index, size in enumerate(self.matrix_sizes):
            if not 16 <= size <= 16384:
                raise ValueError(f"matrix_sizes[{index}]: {size} must be between 16 and 16384")
        for index, size in enumerate(self.allreduce_sizes):
            if size < 4:
                raise ValueError(f"allreduce_sizes[{index}]: {size} bytes is below one float32")
        return self


class BenchProgress(BaseModel):
    """Heartbeat details: which test is running. A restarted run starts over (a half-measured node is no baseline)."""

    test: str
    done: int
    total: int


# -- telemetry ---------------------------------------------------------------------------------


class Stat(BaseModel):
    min: float
    median: float
    max: float


class TelemetrySample(BaseModel):
    """One NVML reading of one GPU; fields NVML refuses on this device stay None."""

    t: float = Field(description="Seconds since the sampler started")
    gpu: int
    utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    memory_used_mib: float | None = None
    power_w: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    clock_event_reasons: int | None = Field(None, description="NVML clock-event (throttle) reasons bitmask")
    temperature_c: int | None = None
    ecc_corrected: int | None = Field(None, description="Volatile corrected ECC errors")
    ecc_uncorrected: int | None = Field(None, description="Volatile uncorrected ECC errors")
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapping_pending: bool | None = None
    remapping_failed: bool | None = None
    retired_pages: int | None = None
    retired_pages_pending: bool | None = None
    nvlink_active: int | None = Field(None, description="NVLink links up")
    nvlink_links: int | None = Field(None, description="NVLink links the device reports at all")


class TelemetrySummary(BaseModel):
    """What one GPU did during one test: enough to see throttling, errors and idle time next to the figure."""

    gpu: int
    samples: int
    utilization_pct: Stat | None = None
    memory_used_mib: Stat | None = None
    power_w: Stat | None = None
    sm_clock_mhz: Stat | None = None
    memory_clock_mhz: Stat | None = None
    temperature_c: Stat | None = None
    clock_event_reasons: list[str] = Field(default_factory=list, description="Every reason seen, by NVML's name")
    throttled_fraction: float = Field(0.0, description="Share of samples with a slowdown reason (not idle/app clocks)")
    ecc_corrected_delta: int | None = None
    ecc_uncorrected_delta: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapping_pending: bool = False
    remapping_failed: bool = False
    retired_pages: int | None = None
    retired_pages_pending: bool = False
    nvlink_active: Stat | None = None
    nvlink_links: int | None = None


# -- figures -----------------------------------------------------------------------------------


class Measurement(BaseModel):
    """One figure of the suite: the median over trials with its spread, and what the GPU did meanwhile."""

    name: str = Field(description="Stable key both sides share, e.g. matmul_bf16_8192, latency_b1_p99")
    kind: TestKind
    unit: str
    higher_is_better: bool = True
    median: float
    min: float
    max: float
    values: list[float] = Field(description="One value per trial (per window for the sustained run)")
    dtype: str | None = None
    params: dict[str, float | int | str] = Field(default_factory=dict)
    telemetry: list[TelemetrySummary] = Field(default_factory=list)
    detail: str = ""


class Skipped(BaseModel):
    name: str
    reason: str


class SustainedResult(BaseModel):
    """Burst vs sustained throughput of one long matmul run: throttling shows as a drop."""

    dtype: str
    matrix_size: int
    seconds: float
    window_s: float
    windows: list[float] = Field(description="TFLOP/s per window, in order")
    burst: float = Field(description="The first window: cold clocks at their highest")
    sustained: float = Field(description="Median of the last third of the windows")
    drop_pct: float = Field(description="(burst - sustained) / burst, in %; negative when it sped up")


class AllReducePoint(BaseModel):
    """One message size, nccl-tests style: algbw = size / time, busbw = algbw * 2(n-1)/n."""

    size_bytes: int
    time_us: Stat = Field(description="Per all-reduce, the slowest rank's, over trials")
    algbw_gbps: Stat
    busbw_gbps: Stat
    algbw_trials_gbps: list[float] = Field(default_factory=list, description="One algbw per trial")
    correct: bool = Field(True, description="A separate all-reduce of known values summed to the expected result")


class AllReduceResult(BaseModel):
    backend: str
    world_size: int
    device: str
    warmup: int
    iterations: int
    points: list[AllReducePoint]


class Topology(BaseModel):
    """`nvidia-smi topo -m` as data: the link between every GPU pair and the NVLink islands it implies."""

    gpus: list[str]
    links: list[list[str]] = Field(description="links[i][j]: X, NV<n>, PIX, PXB, PHB, NODE or SYS")
    islands: list[list[int]] = Field(description="GPUs joined by NVLink, directly or through each other")
    split: bool = Field(description="More than one island: collectives between islands cross PCIe or the CPU")
    detail: str


class SuiteResult(BaseModel):
    device: str
    device_name: str
    trials: int
    seconds_per_test: float
    seed: int
    measurements: list[Measurement] = Field(default_factory=list)
    sustained: SustainedResult | None = None
    allreduce: AllReduceResult | None = None
    topology: Topology | None = None
    skipped: list[Skipped] = Field(default_factory=list)
    telemetry_note: str = ""
    telemetry: list[TelemetrySummary] = Field(
        default_factory=list, description="Each GPU over the whole run: error counters and throttling between tests too"
    )
    telemetry_series_url: str | None = Field(None, description="Where the raw NVML series was written, if anywhere")

    def get(self, name: str) -> Measurement | None:
        return next((m for m in self.measurements if m.name == name), None)


# -- environment ---------------------------------------------------------------------------------


class GpuInfo(BaseModel):
    index: int
    name: str
    memory_mib: int
    compute_capability: str = Field(description="major.minor, e.g. 9.0")


class EnvironmentFingerprint(BaseModel):
    """What the software stack and the hardware are, as the worker itself reports them."""

    python: str
    os: str
    kernel: str
    cpu_model: str
    cpu_count: int
    torch: str
    cuda_runtime: str | None = Field(None, description="CUDA version torch was built with (torch.version.cuda)")
    cudnn: str | None = None
    nccl: str | None = None
    driver: str | None = Field(None, description="NVIDIA driver version (NVML)")
    cuda_driver: str | None = Field(None, description="Newest CUDA the driver supports (NVML), e.g. 12.8")
    gpus: list[GpuInfo] = Field(default_factory=list)
    bf16: bool = Field(False, description="Native bf16 matmul: GPU compute capability >= 8.0, or a CPU with bf16 units")
    fp8: bool = Field(False, description="fp8 tensor cores: compute capability >= 8.9")
    notes: list[str] = Field(default_factory=list, description="What could not be read, and why")

    @property
    def gpu_name(self) -> str | None:
        return self.gpus[0].name if self.gpus else None

    @property
    def gpu_memory_mib(self) -> int | None:
        return min(g.memory_mib for g in self.gpus) if self.gpus else None


CompatStatus = Literal["same", "ok", "info", "warn", "fail"]


class CompatRow(BaseModel):
    item: str
    source: str
    target: str
    status: CompatStatus
    detail: str = ""


class CompatibilityMatrix(BaseModel):
    """Both environments' fingerprints side by side, with what the migration guides warn about flagged."""

    source_environment: str
    target_environment: str
    rows: list[CompatRow]

    @property
    def flagged(self) -> list[CompatRow]:
        return [r for r in self.rows if r.status in ("warn", "fail")]


# -- the activity's result -----------------------------------------------------------------------


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
    """One environment's run. The first ten fields are the original result's (older histories hold only them)."""

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
    suite: SuiteResult | None = None
    fingerprint: EnvironmentFingerprint | None = None
