"""The micro-suite: matmul per dtype, memory and host-link copies, inference latency, training, sustained, all-reduce.

Every test follows the references' method: seeded inputs, a warm-up that also calibrates how many
steps fill `seconds_per_test`, then `trials` timed repeats of exactly that many steps (CUDA events
on a GPU), reported as the median with min-max. Figures are in the units datasheets use (TFLOP/s,
GB/s = 1e9 B/s) so the judge can hold them against the device's ceiling. NVML is sampled the
whole time and each figure carries a summary of its own window.

torch is imported inside functions: the CLI and the workflow sandbox import this package for its
models, and importing torch costs seconds.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.exceptions import CancelledError

from activities.microsuite.allreduce import bus_bandwidth, run_allreduce
from activities.microsuite.fingerprint import cpu_model, cpu_supports, environment_fingerprint
from activities.microsuite.models import (
    MIN_CEILING_MATRIX_SIZE,
    PEAK_MATRIX_SIZE,
    BenchInput,
    BenchProgress,
    BenchResult,
    BenchTrial,
    GpuTelemetry,
    Measurement,
    Skipped,
    SuiteResult,
    SustainedResult,
)
from activities.microsuite.telemetry import TelemetrySampler, store_series, summarize
from activities.microsuite.topology import read_topology

if TYPE_CHECKING:
    import torch

CPU_NOTE = "ran on CPU: no CUDA device on this worker, so no NVML telemetry"
#: Sustained run on CUDA when the plan does not say (mamf-finder soaks for about as long); a token run on CPU.
SUSTAINED_DEFAULT_S = {"cuda": 60.0, "cpu": 2.0}
#: Inference model when the plan does not say: (larger batch, tokens, width). A GPU gets a model it can be busy with;
#: a CPU one that answers in milliseconds, so a CPU POC (demo, tests) stays short.
INFERENCE_DEFAULTS = {"cuda": (32, 256, 1024), "cpu": (8, 32, 128)}
#: Device-memory copy size when the plan does not say: far above any L2 (H200: 60 MB) so HBM is what moves.
DEVICE_COPY_DEFAULT_MIB = {"cuda": 1024.0, "cpu": 64.0}


def resolve_device(requested: str) -> torch.device:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was requested but torch.cuda.is_available() is False on this worker")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def supported_dtypes(device: torch.device) -> dict[str, str]:
    """Every matmul dtype with None when the device runs it natively, else why it does not."""
    import torch

    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        ampere = major >= 8
        return {
            "fp32": "",
            "tf32": "" if ampere else f"tf32 needs compute capability >= 8.0 (this GPU: {major}.{minor})",
            "bf16": "" if ampere else f"bf16 needs compute capability >= 8.0 (this GPU: {major}.{minor})",
            "fp16": "",
        }
    emulated = "this CPU has no native {} ({}): torch would emulate it"
    return {
        "fp32": "",
        "tf32": "tf32 is a tensor-core format: CUDA only",
        "bf16": "" if cpu_supports("bf16") else emulated.format("bf16", "avx512_bf16/amx_bf16"),
        "fp16": "" if cpu_supports("fp16") else emulated.format("fp16", "avx512_fp16/amx_fp16"),
    }


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    import torch

    return torch.Generator(device=device).manual_seed(seed)


def _randn(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    import torch

    return torch.randn(shape, device=device, generator=_generator(device, seed)).to(dtype)


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step: Callable[[], Any], n: int, device: torch.device) -> float:
    """Seconds for `n` back-to-back steps: CUDA events on a GPU (device time, no host jitter), else the wall clock."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    started = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - started


def _calibrate(step: Callable[[], Any], device: torch.device, seconds: float) -> int:
    """Warm up, then double a batch of steps until it takes a tenth of `seconds`; return steps per `seconds`."""
    step()
    _sync(device)
    n = 1
    while True:
        elapsed = _time_steps(step, n, device)
        if elapsed >= seconds / 10 or n >= 1 << 20:
            return max(1, round(seconds * n / max(elapsed, 1e-9)))
        n *= 2


def _rates(step: Callable[[], Any], work: float, device: torch.device, seconds: float, trials: int) -> list[float]:
    """`work` units per step -> units per second, one value per trial of the same calibrated step count."""
    n = _calibrate(step, device, seconds)
    return [work * n / _time_steps(step, n, device) for _ in range(trials)]


def significant(value: float, digits: int = 6) -> float:
    """Rounded to significant digits, not decimals: a CPU's 2e-05 TFLOP/s keeps its precision."""
    return float(f"{value:.{digits}g}")


def _measurement(name: str, kind: str, unit: str, values: list[float], **fields: Any) -> Measurement:
    values = [significant(v) for v in values]
    return Measurement(name=name, kind=kind, unit=unit, median=statistics.median(values), min=min(values),
                       max=max(values), values=values, **fields)  # fmt: skip


@contextlib.contextmanager
def _matmul_precision(dtype: str) -> Iterator[None]:
    """fp32 means true fp32 (no TF32 tensor cores); tf32 allows them. The process-wide setting is restored."""
    import torch

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


# -- the tests -----------------------------------------------------------------------------------


def matmul(device: torch.device, dtype: str, size: int, request: BenchInput) -> Measurement:
    import torch

    a = _randn((size, size), device, _torch_dtype(dtype), request.seed)
    b = _randn((size, size), device, _torch_dtype(dtype), request.seed + 1)
    c = torch.empty_like(a)
    with _matmul_precision(dtype):
        rates = _rates(lambda: torch.mm(a, b, out=c), 2 * size**3 / 1e12, device, request.seconds_per_test,
                       request.trials)  # fmt: skip
    return _measurement(f"matmul_{dtype}_{size}", "matmul", "TFLOP/s", rates, dtype=dtype, params={"size": size})


def device_copy(device: torch.device, mib: float, request: BenchInput) -> Measurement:
    import torch

    nbytes = int(mib * (1 << 20))
    source = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device,
                           generator=_generator(device, request.seed))  # fmt: skip
    target = torch.empty_like(source)
    rates = _rates(lambda: target.copy_(source), 2 * nbytes / 1e9, device, request.seconds_per_test, request.trials)
    detail = "bytes read + written per second (STREAM's copy convention; HBM datasheets count both)"
    return _measurement("device_copy", "device_copy", "GB/s", rates, params={"mib": mib}, detail=detail)


def host_copy(device: torch.device, direction: str, mib: float, request: BenchInput) -> Measurement:
    """Pinned host memory <-> device, one direction at a time (nvbandwidth's copy-engine test)."""
    import torch

    nbytes = int(mib * (1 << 20))
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host.random_(0, 256, generator=_generator(torch.device("cpu"), request.seed))
    on_device = torch.empty(nbytes, dtype=torch.uint8, device=device)
    if direction == "h2d":
        step = lambda: on_device.copy_(host, non_blocking=True)  # noqa: E731
    else:
        step = lambda: host.copy_(on_device, non_blocking=True)  # noqa: E731
    rates = _rates(step, nbytes / 1e9, device, request.seconds_per_test, request.trials)
    label = "host -> device" if direction == "h2d" else "device -> host"
    return _measurement(direction, direction, "GB/s", rates, params={"mib": mib, "pinned": "yes"},
                        detail=f"{label}, pinned memory, {mib:g} MiB per copy")  # fmt: skip


def _inference_shape(device: torch.device, request: BenchInput) -> tuple[int, int, int]:
    """(larger batch, sequence, width): the request's, else the device's defaults."""
    batch, seq, width = INFERENCE_DEFAULTS[device.type]
    return request.inference_batch or batch, request.inference_seq or seq, request.inference_width or width


def _inference_model(device: torch.device, request: BenchInput) -> tuple[Any, torch.dtype]:
    import torch

    torch.manual_seed(request.seed)
    width = _inference_shape(device, request)[2]
    layer = torch.nn.TransformerEncoderLayer(d_model=width, nhead=max(1, width // 64), dim_feedforward=4 * width,
                                             batch_first=True)  # fmt: skip
    dtype = torch.bfloat16 if device.type == "cuda" and supported_dtypes(device)["bf16"] == "" else torch.float32
    model = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    return model.to(device=device, dtype=dtype).eval(), dtype


def latency(device: torch.device, batch: int, request: BenchInput) -> list[Measurement]:
    """p50/p95/p99 of single forward passes (each synchronized: the latency a caller waits for)."""
    import numpy
    import torch

    model, dtype = _inference_model(device, request)
    _, seq, width = _inference_shape(device, request)
    inputs = _randn((batch, seq, width), device, dtype, request.seed)
    percentiles: dict[int, list[float]] = {50: [], 95: [], 99: []}
    samples_per_trial = []
    with torch.inference_mode():
        for _ in range(3):
            model(inputs)
        _sync(device)
        for _ in range(request.trials):
            times: list[float] = []
            deadline = time.perf_counter() + request.seconds_per_test
            while (time.perf_counter() < deadline or len(times) < 10) and len(times) < 100_000:
                started = time.perf_counter()
                model(inputs)
                _sync(device)
                times.append((time.perf_counter() - started) * 1000)
            samples_per_trial.append(len(times))
            for p, values in percentiles.items():
                values.append(float(numpy.percentile(times, p)))
    name = str(dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
    return [
        _measurement(f"latency_b{batch}_p{p}", "latency", "ms", values, higher_is_better=False, dtype=name,
                     params={"batch": batch, "seq": seq, "width": width,
                             "percentile": p, "samples_per_trial": min(samples_per_trial)},
                     detail=f"2-layer transformer encoder forward, batch {batch} x {seq} tokens")
        for p, values in percentiles.items()
    ]  # fmt: skip


def train(device: torch.device, request: BenchInput) -> Measurement:
    """Samples/s of a small MLP's forward+backward+AdamW step: the figure older results compared."""
    import torch

    torch.manual_seed(request.seed)
    batch = request.train_batch
    native_bf16 = device.type == "cuda" and not supported_dtypes(device)["bf16"]
    dtype = torch.bfloat16 if native_bf16 else torch.float32
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 1024),
        torch.nn.GELU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.GELU(),
        torch.nn.Linear(1024, 10),
    ).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = _randn((batch, 512), device, dtype, request.seed)
    labels = torch.randint(0, 10, (batch,), device=device, generator=_generator(device, request.seed))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(inputs).float(), labels).backward()
        optimizer.step()

    rates = _rates(step, batch, device, request.seconds_per_test, request.trials)
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    return _measurement("train_mlp", "train", "samples/s", rates, dtype=name, params={"batch": batch})


def sustained(
    device: torch.device, dtype: str, size: int, seconds: float, request: BenchInput, poll: Callable[[], None]
) -> tuple[SustainedResult, Measurement]:
    """Matmuls back to back for `seconds` in ~30 windows: the first window is the burst, the last third sustained."""
    import torch

    a = _randn((size, size), device, _torch_dtype(dtype), request.seed)
    b = _randn((size, size), device, _torch_dtype(dtype), request.seed + 1)
    c = torch.empty_like(a)
    window_s = seconds / 30
    flops = 2 * size**3 / 1e12
    with _matmul_precision(dtype):
        step = lambda: torch.mm(a, b, out=c)  # noqa: E731
        n = _calibrate(step, device, window_s)
        windows: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(windows) < 3:
            windows.append(flops * n / _time_steps(step, n, device))
            poll()
    windows = [significant(w) for w in windows]
    burst = windows[0]
    held = statistics.median(windows[-max(1, len(windows) // 3) :])
    drop = (burst - held) / burst * 100
    result = SustainedResult(dtype=dtype, matrix_size=size, seconds=seconds, window_s=round(window_s, 4),
                             windows=windows, burst=burst, sustained=held,
                             drop_pct=round(drop, 3))  # fmt: skip
    figure = _measurement(f"sustained_{dtype}_{size}", "sustained", "TFLOP/s", windows, dtype=dtype,
                          params={"size": size, "seconds": seconds, "drop_pct": result.drop_pct},
                          detail=f"burst {burst:.4g} -> sustained {held:.4g} TFLOP/s ({-drop:+.1f}%) "
                          f"over {seconds:g} s in {len(windows)} windows")  # fmt: skip
    return result, figure


# -- the suite -----------------------------------------------------------------------------------


@dataclass
class _Test:
    name: str
    run: Callable[[], list[Measurement]]
    all_gpus: bool = False  # whose telemetry belongs to the test: every sampled GPU, or only the suite's device


def _nvml_index(device: torch.device) -> int:
    """NVML numbers GPUs by PCI order, CUDA by CUDA_VISIBLE_DEVICES and speed: match them by UUID."""
    import torch

    index = device.index or 0
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            wanted = f"GPU-{torch.cuda.get_device_properties(index).uuid}"
            for candidate in range(pynvml.nvmlDeviceGetCount()):
                uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(candidate))
                if (uuid.decode() if isinstance(uuid, bytes) else uuid) == wanted:
                    return candidate
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML absent or the UUID unreadable: the CUDA index is right on most nodes
        pass
    return index


def run_suite(request: BenchInput, progress: Callable[[BenchProgress], None] = lambda p: None) -> SuiteResult:
    """Run every test that applies to this device; `progress` is called before each test and during long ones."""
    import torch

    device = resolve_device(request.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cuda = device.type == "cuda"
    skipped: list[Skipped] = []
    tests: list[_Test] = []

    support = supported_dtypes(device)
    wanted = request.dtypes or [d for d, why in support.items() if not why]
    sizes = sorted({request.matrix_size, *request.matrix_sizes})
    if cuda and max(sizes) < MIN_CEILING_MATRIX_SIZE:
        sizes.append(PEAK_MATRIX_SIZE)
    for dtype in wanted:
        if support[dtype]:
            skipped.append(Skipped(name=f"matmul_{dtype}", reason=support[dtype]))
            continue
        for size in sizes:
            tests.append(_Test(f"matmul_{dtype}_{size}", lambda d=dtype, s=size: [matmul(device, d, s, request)]))

    copy_mib = request.device_copy_mib or DEVICE_COPY_DEFAULT_MIB[device.type]
    tests.append(_Test("device_copy", lambda: [device_copy(device, copy_mib, request)]))
    for direction in ("h2d", "d2h"):
        if cuda:
            tests.append(_Test(direction, lambda d=direction: [host_copy(device, d, request.copy_mib, request)]))
        else:
            skipped.append(Skipped(name=direction, reason="no CUDA device: host<->device copies need one"))
    for batch in (1, _inference_shape(device, request)[0]):
        tests.append(_Test(f"latency_b{batch}", lambda b=batch: latency(device, b, request)))
    tests.append(_Test("train_mlp", lambda: [train(device, request)]))

    sustained_s = SUSTAINED_DEFAULT_S[device.type] if request.sustained_seconds is None else request.sustained_seconds
    sustained_result: list[Any] = []
    if sustained_s > 0:
        best = "bf16" if "bf16" in wanted and not support["bf16"] else "fp32"

        def run_sustained() -> list[Measurement]:
            result, figure = sustained(device, best, max(sizes), sustained_s, request, poll=lambda: tick("sustained"))
            sustained_result.append(result)
            return [figure]

        tests.append(_Test("sustained", run_sustained))
    else:
        skipped.append(Skipped(name="sustained", reason="sustained_seconds is 0"))

    gpu_count = torch.cuda.device_count() if cuda else 0
    processes = request.allreduce_processes
    if processes is None:
        processes = gpu_count if gpu_count >= 2 else 0
    if cuda and processes > gpu_count:
        raise ValueError(f"allreduce_processes: {processes} NCCL ranks need as many GPUs; this worker has {gpu_count}")
    allreduce_result: list[Any] = []
    if processes >= 2:

        def run_all_reduce() -> list[Measurement]:
            result = run_allreduce(processes, request.allreduce_sizes, backend="nccl" if cuda else "gloo",
                                   trials=request.trials, poll=lambda: tick("allreduce"))  # fmt: skip
            allreduce_result.append(result)
            return [
                _measurement(f"allreduce_busbw_{_size_label(p.size_bytes)}", "allreduce", "GB/s",
                             [bus_bandwidth(a, result.world_size) for a in p.algbw_trials_gbps], dtype="fp32",
                             params={"size_bytes": p.size_bytes, "ranks": result.world_size, "backend": result.backend,
                                     "algbw_gbps": p.algbw_gbps.median},
                             detail=f"busbw = algbw x 2(n-1)/n over {result.world_size} ranks ({result.backend})"
                             + ("" if p.correct else "; WRONG SUM: the all-reduce returned incorrect values"))
                for p in result.points
            ]  # fmt: skip

        tests.append(_Test("allreduce", run_all_reduce, all_gpus=True))
    else:
        reason = "allreduce_processes is 0" if request.allreduce_processes == 0 else (
            f"{gpu_count or 'no'} GPU{'s' if gpu_count != 1 else ''}: an all-reduce needs several "
            "(set allreduce_processes=2 to measure gloo between CPU processes)"
        )  # fmt: skip
        skipped.append(Skipped(name="allreduce", reason=reason))

    current = {"index": 0}

    def tick(name: str) -> None:
        progress(BenchProgress(test=name, done=current["index"], total=len(tests)))

    measurements: list[Measurement] = []
    own_gpu = _nvml_index(device) if cuda else None
    with TelemetrySampler(request.telemetry_interval_s) if cuda else contextlib.nullcontext() as sampler:
        for index, test in enumerate(tests):
            current["index"] = index
            tick(test.name)
            started = sampler.mark() if sampler else 0.0
            figures = test.run()
            if sampler:
                summaries = sampler.window(started, sampler.mark())
                for figure in figures:
                    figure.telemetry = [s for s in summaries if test.all_gpus or s.gpu == own_gpu]
            measurements.extend(figures)
            if cuda:
                torch.cuda.empty_cache()
        progress(BenchProgress(test="done", done=len(tests), total=len(tests)))
    note = sampler.note if sampler else CPU_NOTE
    samples = list(sampler.samples) if sampler else []
    whole_run = [summarize(samples, gpu) for gpu in sampler.gpus] if sampler else []

    topology = None
    if cuda:
        topology, why = read_topology()
        if topology is None:
            skipped.append(Skipped(name="topology", reason=why))
    series_url = None
    if request.telemetry_url and samples:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{request.environment}-{stamp}-{secrets.token_hex(3)}"
        series_url = store_series(samples, request.telemetry_url, name)
    return SuiteResult(
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if cuda else cpu_model(),
        trials=request.trials,
        seconds_per_test=request.seconds_per_test,
        seed=request.seed,
        measurements=measurements,
        sustained=sustained_result[0] if sustained_result else None,
        allreduce=allreduce_result[0] if allreduce_result else None,
        topology=topology,
        skipped=skipped,
        telemetry_note=note,
        telemetry=whole_run,
        telemetry_series_url=series_url,
    )


def _size_label(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


# -- the activity's result -----------------------------------------------------------------------


def gpu_snapshot(device: torch.device) -> GpuTelemetry | None:
    """One NVML reading after the run (the original result's `telemetry` field)."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # the suite's note already says why NVML is missing
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(device))
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name, driver = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlSystemGetDriverVersion()
        try:
            power = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
        except pynvml.NVMLError:
            power = None
        try:
            temperature = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        except pynvml.NVMLError:
            temperature = None
        return GpuTelemetry(
            name=name.decode() if isinstance(name, bytes) else name,
            driver=driver.decode() if isinstance(driver, bytes) else driver,
            memory_total_mb=memory.total // (1 << 20),
            memory_used_mb=memory.used // (1 << 20),
            utilization_pct=pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            power_w=power,
            temperature_c=temperature,
        )
    finally:
        pynvml.nvmlShutdown()


def run_benchmark(request: BenchInput, progress: Callable[[BenchProgress], None] = lambda p: None) -> BenchResult:
    """The suite plus the environment fingerprint, with the original result's headline fields filled from it."""
    suite = run_suite(request, progress)
    device = resolve_device(request.device)
    primary_dtype = "bf16" if suite.device == "cuda" and suite.get(f"matmul_bf16_{request.matrix_size}") else "fp32"
    matmul_figure = suite.get(f"matmul_{primary_dtype}_{request.matrix_size}")
    train_figure = suite.get("train_mlp")
    if matmul_figure is None or train_figure is None:
        raise ValueError(f"dtypes: the headline figures need fp32 or bf16 matmul at {request.matrix_size}; got "
                         f"{[m.name for m in suite.measurements if m.kind == 'matmul']}")  # fmt: skip
    return BenchResult(
        environment=request.environment,
        device=suite.device,
        device_name=suite.device_name,
        dtype="bfloat16" if primary_dtype == "bf16" else "float32",
        torch_version=_torch_version(),
        trials=[
            BenchTrial(matmul_tflops=round(m, 5), train_samples_per_s=round(t, 2))
            for m, t in zip(matmul_figure.values, train_figure.values, strict=True)
        ],
        median_matmul_tflops=matmul_figure.median,
        median_train_samples_per_s=train_figure.median,
        telemetry=gpu_snapshot(device),
        telemetry_note=suite.telemetry_note,
        suite=suite,
        fingerprint=environment_fingerprint(),
    )


def _torch_version() -> str:
    import torch

    return torch.__version__


#: While one step runs longer than the heartbeat timeout (a 16384 fp32 matmul on a small CPU), a thread keeps
#: heartbeating the last progress this often.
KEEPALIVE_S = 10.0


@activity.defn(name="run_benchmark")
def run_benchmark_activity(request: BenchInput) -> BenchResult:
    """Runs on the environment's own queue; heartbeats each test and stops at the next one when cancelled."""
    latest = BenchProgress(test="starting", done=0, total=0)
    stop = threading.Event()
    context = contextvars.copy_context()  # the activity context, for heartbeats sent from the keepalive thread

    def keepalive() -> None:
        while not stop.wait(KEEPALIVE_S):
            context.run(activity.heartbeat, latest.model_dump())

    def progress(step: BenchProgress) -> None:
        nonlocal latest
        latest = step
        activity.heartbeat(step.model_dump())
        if activity.is_cancelled():
            raise CancelledError(f"benchmark cancelled during {step.test}")

    thread = threading.Thread(target=keepalive, name="bench-keepalive", daemon=True)
    thread.start()
    try:
        return run_benchmark(request, progress)
    finally:
        stop.set()
        thread.join()
