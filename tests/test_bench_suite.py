"""The micro-suite runs end to end here (CPU, tiny sizes) and, where there is one, on a GPU: plausible figures only.

Nothing asserts a speed: the shared CPU's figures swing with load. What is asserted is what a
user relies on: every test reports a positive median inside its min-max from one value per trial,
the derived figures follow their formulas (nccl-tests' busbw, the sustained drop), the fingerprint
is this interpreter's, and telemetry says why it is absent.
"""

from __future__ import annotations

import platform
import statistics

import pytest
import torch
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment

from activities.microsuite import (
    BenchInput,
    BenchProgress,
    BenchResult,
    resolve_device,
    run_benchmark,
    run_benchmark_activity,
    run_suite,
)
from activities.microsuite import suite as bench_suite
from activities.microsuite.allreduce import bus_bandwidth
from activities.microsuite.ceilings import ceiling_of
from activities.microsuite.telemetry import TelemetrySampler, nvml_unavailable_reason

TRIALS = 3
TINY = dict(trials=TRIALS, matrix_size=64, seconds_per_test=0.05, device_copy_mib=1, inference_batch=4,
            inference_seq=8, inference_width=64, train_batch=32, seed=7)  # fmt: skip
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


@pytest.fixture(scope="module")
def cpu_result() -> BenchResult:
    request = BenchInput(device="cpu", dtypes=["fp32", "tf32"], sustained_seconds=1.0, allreduce_processes=2,
                         allreduce_sizes=[4096, 65536], **TINY)  # fmt: skip
    return run_benchmark(request)


def test_every_test_runs_with_positive_figures_and_spread(cpu_result: BenchResult):
    suite = cpu_result.suite
    assert suite is not None and suite.device == "cpu" and suite.trials == TRIALS
    names = {m.name for m in suite.measurements}
    assert {"matmul_fp32_64", "device_copy", "train_mlp", "sustained_fp32_64"} <= names
    assert {f"latency_b{b}_p{p}" for b in (1, 4) for p in (50, 95, 99)} <= names
    assert {"allreduce_busbw_4KiB", "allreduce_busbw_64KiB"} <= names
    for m in suite.measurements:
        assert m.median > 0 and m.min <= m.median <= m.max, m.name
        assert m.min == min(m.values) and m.max == max(m.values), m.name
        if m.kind != "sustained":
            assert len(m.values) == TRIALS, m.name
    for batch in (1, 4):
        p50, p95, p99 = (suite.get(f"latency_b{batch}_p{p}").median for p in (50, 95, 99))
        assert p50 <= p95 <= p99
    skipped = {s.name: s.reason for s in suite.skipped}
    assert "need one" in skipped["h2d"] and "need one" in skipped["d2h"]
    assert "CUDA only" in skipped["matmul_tf32"] and not any(m.dtype == "tf32" for m in suite.measurements)


def test_headline_fields_are_the_suites_figures(cpu_result: BenchResult):
    matmul, train = cpu_result.suite.get("matmul_fp32_64"), cpu_result.suite.get("train_mlp")
    assert cpu_result.median_matmul_tflops == matmul.median and cpu_result.dtype == "float32"
    assert cpu_result.median_train_samples_per_s == train.median
    assert [t.matmul_tflops for t in cpu_result.trials] == [round(v, 5) for v in matmul.values]
    assert len(cpu_result.trials) == TRIALS


def test_sustained_run_reports_the_drop_from_burst(cpu_result: BenchResult):
    s = cpu_result.suite.sustained
    assert s is not None and s.seconds == 1.0 and len(s.windows) >= 3
    assert s.burst == s.windows[0]
    assert s.sustained == pytest.approx(statistics.median(s.windows[-(len(s.windows) // 3) :]), rel=1e-6)
    assert s.drop_pct == pytest.approx((s.burst - s.sustained) / s.burst * 100, abs=1e-3)


def test_two_process_allreduce_busbw_is_nccl_tests_formula(cpu_result: BenchResult):
    result = cpu_result.suite.allreduce
    assert result is not None and result.backend == "gloo" and result.world_size == 2
    assert [p.size_bytes for p in result.points] == [4096, 65536]
    for point in result.points:
        assert point.correct
        # By hand: algbw = bytes / time; busbw = algbw * 2(n-1)/n (nccl-tests doc/PERFORMANCE.md), n = 2.
        assert point.algbw_gbps.median == pytest.approx(point.size_bytes / (point.time_us.median * 1e-6) / 1e9)
        assert point.busbw_gbps.median == pytest.approx(point.algbw_gbps.median * 2 * (2 - 1) / 2)
        figure = cpu_result.suite.get(f"allreduce_busbw_{point.size_bytes // 1024}KiB")
        assert figure.values == pytest.approx([a * 2 * (2 - 1) / 2 for a in point.algbw_trials_gbps], rel=1e-5)
    assert bus_bandwidth(10.0, 8) == pytest.approx(17.5) and bus_bandwidth(10.0, 4) == pytest.approx(15.0)


@cpu_only
def test_telemetry_says_why_it_is_absent(cpu_result: BenchResult):
    assert "no CUDA device" in cpu_result.telemetry_note and cpu_result.telemetry is None
    assert all(m.telemetry == [] for m in cpu_result.suite.measurements)
    with TelemetrySampler() as sampler:
        assert not sampler.available
    if nvml_unavailable_reason():  # no NVIDIA driver here: the sampler names NVML's own error
        assert sampler.note.startswith("NVML unavailable:")


def test_fingerprint_is_this_environments(cpu_result: BenchResult):
    fp = cpu_result.fingerprint
    assert fp is not None
    assert fp.torch == torch.__version__ == cpu_result.torch_version
    assert fp.python == platform.python_version()
    assert fp.cuda_runtime == torch.version.cuda
    assert len(fp.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if torch.backends.cudnn.is_available() and torch.backends.cudnn.version():
        number = torch.backends.cudnn.version()
        assert fp.cudnn.split(".")[0] == str(number // 10000 if number >= 90000 else number // 1000)
    else:
        assert fp.cudnn is None
    if not torch.cuda.is_available():
        assert fp.driver is None and any("no CUDA device" in note for note in fp.notes)


def test_result_survives_workflow_history_and_old_histories_still_decode(cpu_result: BenchResult):
    converter = pydantic_data_converter.payload_converter
    [decoded] = converter.from_payloads(converter.to_payloads([cpu_result]), [BenchResult])
    assert decoded == cpu_result
    old = {  # the result as histories recorded it before the suite existed
        "environment": "aws", "device": "cpu", "device_name": "cpu", "dtype": "float32", "torch_version": "2.5.1",
        "trials": [{"matmul_tflops": 0.1, "train_samples_per_s": 900.0}], "median_matmul_tflops": 0.1,
        "median_train_samples_per_s": 900.0, "telemetry": None, "telemetry_note": "ran on CPU",
    }  # fmt: skip
    legacy = BenchResult.model_validate(old)
    assert legacy.suite is None and legacy.fingerprint is None and legacy.median_train_samples_per_s == 900.0


def test_activity_heartbeats_each_test_and_a_cancel_stops_it_at_the_next(cpu_bf16: bool):
    environment, beats = ActivityEnvironment(), []

    def on_heartbeat(details: dict) -> None:
        beats.append(BenchProgress.model_validate(details))  # details arrive as dicts: parsed into the model
        if len(beats) == 2:
            environment.cancel()

    environment.on_heartbeat = on_heartbeat
    request = BenchInput(device="cpu", sustained_seconds=0, allreduce_processes=0, **{**TINY, "trials": 1})
    with pytest.raises(CancelledError):  # the SDK's own, raised in the activity thread, or ours at the next test
        environment.run(run_benchmark_activity, request)
    matmuls = ["matmul_fp32_64", "matmul_bf16_64"] if cpu_bf16 else ["matmul_fp32_64"]
    assert [b.test for b in beats] == [*matmuls, "device_copy"][:2]
    assert beats[1].total == len(matmuls) + 4  # device_copy, two latencies, train_mlp


def test_long_steps_keep_heartbeating(monkeypatch, cpu_bf16: bool):
    monkeypatch.setattr(bench_suite, "KEEPALIVE_S", 0.01)  # stands in for a step longer than the heartbeat timeout
    environment, beats = ActivityEnvironment(), []
    environment.on_heartbeat = lambda details: beats.append(BenchProgress.model_validate(details))
    request = BenchInput(device="cpu", sustained_seconds=0, allreduce_processes=0, **{**TINY, "trials": 1})
    result = environment.run(run_benchmark_activity, request)
    assert result.suite is not None
    progress_calls = (6 if cpu_bf16 else 5) + 1  # one per test (matmuls, copy, 2 latencies, train) and "done"
    assert len(beats) > progress_calls  # the keepalive thread heartbeat from outside the activity's own thread


@cpu_only
def test_asking_for_cuda_without_one_names_the_field():
    with pytest.raises(ValueError, match="device: cuda was requested"):
        resolve_device("cuda")


# -- GPU paths: run wherever a GPU is (bench/gpu_suite.sh) ----------------------------------------


@cuda
def test_cuda_suite_measures_every_dtype_copies_and_telemetry():
    request = BenchInput(device="cuda", trials=2, matrix_size=1024, seconds_per_test=0.1, device_copy_mib=512,
                         copy_mib=64, sustained_seconds=2.0, seed=3)  # fmt: skip
    result = run_benchmark(request)
    suite = result.suite
    major, _ = torch.cuda.get_device_capability()
    dtypes = {m.dtype for m in suite.measurements if m.kind == "matmul"}
    assert dtypes == ({"fp32", "tf32", "bf16", "fp16"} if major >= 8 else {"fp32", "fp16"})
    assert suite.get("matmul_bf16_8192" if major >= 8 else "matmul_fp16_8192") is not None  # the peak size is added
    for name in ("h2d", "d2h", "device_copy"):
        m = suite.get(name)
        assert m is not None and m.median > 0 and m.min <= m.median <= m.max
    for m in suite.measurements:
        ceiling = ceiling_of(suite.device_name, m)
        if ceiling and m.params.get("size", 8192) >= 4096:
            assert 0 < ceiling.fraction <= 1.05, f"{m.name} at {ceiling.fraction:.0%} of the datasheet peak"
    if nvml_unavailable_reason() is None:
        assert suite.telemetry_note.startswith("NVML:")
        for m in suite.measurements:
            assert m.telemetry and m.telemetry[0].samples >= 1, m.name
        assert suite.get("sustained_" + suite.sustained.dtype + "_8192").telemetry[0].sm_clock_mhz is not None
        fp = result.fingerprint
        assert fp.driver and fp.cuda_driver and len(fp.gpus) == torch.cuda.device_count()
        assert fp.nccl == ".".join(map(str, torch.cuda.nccl.version()))
        assert result.telemetry is not None and result.telemetry.memory_total_mb > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs for NCCL")
def test_nccl_allreduce_between_gpus():
    suite = run_suite(BenchInput(device="cuda", allreduce_processes=2, allreduce_sizes=[1 << 20, 64 << 20],
                                 sustained_seconds=0, dtypes=["fp32"], **{**TINY, "trials": 2}))  # fmt: skip
    assert suite.allreduce.backend == "nccl" and all(p.correct for p in suite.allreduce.points)
    assert all(p.busbw_gbps.median == pytest.approx(p.algbw_gbps.median) for p in suite.allreduce.points)
