"""Judging the suite: the compatibility matrix, datasheet ceilings, NVLink islands, NVML summaries and the POC verdict.

Inputs are hand-made the way an operator would meet them (a mismatched pair of clouds, an A100 at
a third of its peak, a topology split in two islands); the code under test is the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.microsuite import (
    BenchResult,
    EnvironmentFingerprint,
    GpuInfo,
    Measurement,
    SuiteResult,
    SustainedResult,
    TelemetrySample,
    TelemetrySummary,
    ceiling_for,
    ceiling_of,
    compatibility_matrix,
)
from activities.microsuite.compat import driver_check
from activities.microsuite.judge import BenchTolerances, JudgeBenchInput, judge_bench
from activities.microsuite.telemetry import decode_reasons, store_series, summarize
from activities.microsuite.topology import parse_topology


def fingerprint(**changes) -> EnvironmentFingerprint:
    base = dict(
        python="3.11.9", os="Ubuntu 22.04.4 LTS", kernel="5.15.0-105-generic", cpu_model="AMD EPYC 9454", cpu_count=96,
        torch="2.4.1+cu124", cuda_runtime="12.4", cudnn="9.1.0", nccl="2.20.5", driver="550.54.15", cuda_driver="12.4",
        gpus=[GpuInfo(index=i, name="NVIDIA H100 80GB HBM3", memory_mib=81559, compute_capability="9.0")
              for i in range(8)],
        bf16=True, fp8=True,
    )  # fmt: skip
    return EnvironmentFingerprint(**{**base, **changes})


def test_matrix_flags_a_mismatched_pair():
    source = fingerprint()
    target = fingerprint(
        torch="2.3.1+cu118", cuda_runtime="11.8", driver="470.57.02", cuda_driver="11.4", bf16=False, fp8=False,
        gpus=[GpuInfo(index=i, name="Tesla V100-SXM2-32GB", memory_mib=32510, compute_capability="7.0")
              for i in range(8)],
    )  # fmt: skip
    rows = {r.item: r for r in compatibility_matrix(source, target, "aws", "nebius").rows}
    assert rows["CUDA runtime"].status == "warn" and "CUDA major changes 12.4 -> 11.8" in rows["CUDA runtime"].detail
    # The image moved from the source needs CUDA 12.4; driver 470 tops out at 11.4.
    assert rows["driver (CUDA it supports)"].status == "fail"
    assert "older than the CUDA 12.4" in rows["driver (CUDA it supports)"].detail
    assert rows["torch"].status == "warn" and "torch minor changes" in rows["torch"].detail
    assert rows["bf16"].status == "fail" and rows["fp8"].status == "warn"
    assert (
        rows["GPU memory per GPU"].status == "warn"
        and "quantization or a smaller batch" in rows["GPU memory per GPU"].detail
    )
    assert {r.item for r in compatibility_matrix(source, target).flagged} == {
        "CUDA runtime", "driver (CUDA it supports)", "torch", "bf16", "fp8", "GPU memory per GPU",
    }  # fmt: skip


def test_matrix_of_identical_environments_flags_nothing():
    matrix = compatibility_matrix(fingerprint(), fingerprint())
    assert matrix.flagged == [] and {r.status for r in matrix.rows} == {"same"}


@pytest.mark.parametrize(
    ("runtime", "driver", "cuda_driver", "status"),
    [
        ("12.4", "550.54.14", "12.4", "ok"),
        ("12.6", "535.183.01", "12.2", "warn"),  # same major, older minor: minor-version compatibility only
        ("13.0", "535.183.01", "12.2", "fail"),
        ("12.1", "520.61.05", "12.0", "fail"),  # reports 12.0 but is below 12.x's 525.60.13 floor
        ("12.4", None, None, "warn"),
    ],
)
def test_driver_against_the_cuda_runtime(runtime, driver, cuda_driver, status):
    assert driver_check(runtime, driver, cuda_driver)[0] == status


def test_ceilings_name_the_device_and_their_source():
    assert ceiling_for("NVIDIA H100 80GB HBM3").model == "H100 SXM5 80GB"
    assert ceiling_for("NVIDIA H100 80GB HBM3").matmul_tflops["bf16"] == pytest.approx(989.4)
    assert ceiling_for("NVIDIA H100 PCIe").model == "H100 PCIe 80GB"
    assert ceiling_for("NVIDIA H200").memory_gbps == 4800
    assert ceiling_for("NVIDIA A100-SXM4-80GB").memory_gbps == 2039
    assert ceiling_for("NVIDIA L40S").model == "L40S" and ceiling_for("NVIDIA L4").model == "L4"
    assert ceiling_for("NVIDIA A10G") is None and ceiling_for("AMD EPYC 9454") is None
    figure = Measurement(name="device_copy", kind="device_copy", unit="GB/s", median=2680, min=2600, max=2700,
                         values=[2680])  # fmt: skip
    c = ceiling_of("NVIDIA H100 80GB HBM3", figure)
    assert c.fraction == pytest.approx(0.8) and "nvidia.com" in c.source and c.as_of


TOPO_SPLIT = (
    "\x1b[4m\tGPU0\tGPU1\tGPU2\tGPU3\tGPU4\tGPU5\tGPU6\tGPU7\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    + "".join(
        f"GPU{i}\t" + "\t".join("X" if i == j else ("NV12" if i // 4 == j // 4 else "SYS") for j in range(8))
        + f"\tPXB\t{0 if i < 4 else 48}-{47 if i < 4 else 95}\t{i // 4}\t\tN/A\n"
        for i in range(8)
    )
    + "NIC0\tPXB\tPXB\tPXB\tPXB\tSYS\tSYS\tSYS\tSYS\t X\n\nLegend:\n\n  X    = Self\n  NV#  = Connection traversing a "
    "bonded set of # NVLinks\n"
)  # fmt: skip


def test_topology_finds_two_nvlink_islands():
    topology = parse_topology(TOPO_SPLIT)
    assert topology.gpus == [f"GPU{i}" for i in range(8)]
    assert topology.links[0][1] == "NV12" and topology.links[0][4] == "SYS"
    assert topology.islands == [[0, 1, 2, 3], [4, 5, 6, 7]] and topology.split
    assert "2 NVLink islands (4 + 4)" in topology.detail


def test_topology_fully_connected_is_one_island():
    text = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV18\t0-55\nGPU1\tNV18\t X \t0-55\n"
    topology = parse_topology(text)
    assert topology.islands == [[0, 1]] and not topology.split
    with pytest.raises(ValueError, match="no GPU matrix"):
        parse_topology("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")


def test_telemetry_summary_decodes_throttling_and_counts_new_errors():
    samples = [
        TelemetrySample(t=0.0, gpu=0, sm_clock_mhz=1980, power_w=690.0, clock_event_reasons=0x0, ecc_uncorrected=1),
        TelemetrySample(t=0.1, gpu=0, sm_clock_mhz=1755, power_w=700.0, clock_event_reasons=0x4, ecc_uncorrected=1),
        TelemetrySample(t=0.2, gpu=0, sm_clock_mhz=1410, power_w=700.0, clock_event_reasons=0x44, ecc_uncorrected=3),
        TelemetrySample(t=0.2, gpu=1, sm_clock_mhz=1980, clock_event_reasons=0x1),
    ]  # fmt: skip
    summary = summarize(samples, gpu=0)
    assert summary.samples == 3 and summary.sm_clock_mhz.min == 1410 and summary.sm_clock_mhz.median == 1755
    assert summary.clock_event_reasons == ["sw_power_cap", "hw_thermal_slowdown"]
    assert summary.throttled_fraction == pytest.approx(2 / 3, abs=1e-3)
    assert summary.ecc_uncorrected_delta == 2 and summary.ecc_corrected_delta is None
    assert decode_reasons(0x1 | 0x20 | 0x1000) == ["gpu_idle", "sw_thermal_slowdown", "unknown_0x1000"]


def test_series_goes_to_a_store_by_reference(tmp_path: Path):
    samples = [TelemetrySample(t=i / 10, gpu=0, utilization_pct=90 + i, power_w=650.5) for i in range(5)]
    url = store_series(samples, f"file://{tmp_path}", "aws-20261129T000000Z-abc123")
    assert url == f"file://{tmp_path}/telemetry/aws-20261129T000000Z-abc123.jsonl"
    lines = (tmp_path / "telemetry" / "aws-20261129T000000Z-abc123.jsonl").read_text().splitlines()
    assert [TelemetrySample.model_validate_json(line) for line in lines] == samples


# -- the POC verdict ------------------------------------------------------------------------------


def figure(name: str, kind: str, unit: str, median: float, *, dtype=None, size=None, lower_is_better=False,
           telemetry=()) -> Measurement:  # fmt: skip
    return Measurement(name=name, kind=kind, unit=unit, median=median, min=median * 0.97, max=median * 1.02,
                       values=[median * 0.97, median, median * 1.02], dtype=dtype, higher_is_better=not lower_is_better,
                       params={"size": size} if size else {}, telemetry=list(telemetry))  # fmt: skip


def result(env: str, device_name: str, figures: list[Measurement], fp: EnvironmentFingerprint | None = None,
           sustained: SustainedResult | None = None, whole_run: tuple[TelemetrySummary, ...] = ()
           ) -> BenchResult:  # fmt: skip
    train = next((f.median for f in figures if f.name == "train_mlp"), 1000.0)
    suite = SuiteResult(device="cuda", device_name=device_name, trials=3, seconds_per_test=0.5, seed=0,
                        measurements=figures, sustained=sustained, telemetry=list(whole_run))  # fmt: skip
    return BenchResult(environment=env, device="cuda", device_name=device_name, dtype="bfloat16",
                       torch_version="2.4.1", trials=[], median_matmul_tflops=1.0, median_train_samples_per_s=train,
                       telemetry=None, telemetry_note="NVML", suite=suite, fingerprint=fp)  # fmt: skip


def test_a_target_far_below_its_ceiling_is_flagged_even_when_it_beats_the_source():
    source = result("old", "Tesla V100-SXM2-32GB", [figure("matmul_bf16_8192", "matmul", "TFLOP/s", 50, dtype="bf16",
                                                           size=8192)])  # fmt: skip
    target = result("new", "NVIDIA A100-SXM4-80GB", [figure("matmul_bf16_8192", "matmul", "TFLOP/s", 100,
                                                            dtype="bf16", size=8192)])  # fmt: skip
    judgement = judge_bench(JudgeBenchInput(source=[source], target=[target]))
    checks = {c.metric: c for c in judgement.verdict.checks}
    assert checks["throughput:matmul_bf16_8192"].outcome == "pass"  # 2x the source
    ceiling = checks["ceiling:matmul_bf16_8192"]
    assert ceiling.outcome == "fail" and ceiling.observed == pytest.approx(100 / 312 * 100, abs=0.01)
    assert "A100 SXM4 80GB" in ceiling.detail and "even though the target beats the source" in ceiling.detail
    assert judgement.verdict.outcome == "fail"
    [row] = judgement.figures
    assert row.ratio == 2.0 and row.target_ceiling.fraction == pytest.approx(0.3205, abs=1e-4)
    assert row.source_ceiling is None and row.outcome == "fail"


def test_small_matmuls_are_not_held_to_the_ceiling():
    side = [figure("matmul_bf16_1024", "matmul", "TFLOP/s", 40, dtype="bf16", size=1024)]
    judgement = judge_bench(JudgeBenchInput(source=[result("a", "NVIDIA H100 80GB HBM3", side)],
                                            target=[result("b", "NVIDIA H100 80GB HBM3", side)]))  # fmt: skip
    assert judgement.verdict.outcome == "pass" and judgement.figures[0].target_ceiling is None


def test_figures_are_held_to_the_plans_tolerances():
    tolerances = BenchTolerances(min_throughput_ratio=0.8, latency_increase_pct=15)
    source = result("a", "cpu", [figure("device_copy", "device_copy", "GB/s", 100),
                                 figure("latency_b1_p99", "latency", "ms", 10.0, lower_is_better=True),
                                 figure("latency_b16_p99", "latency", "ms", 10.0, lower_is_better=True)])  # fmt: skip
    target = result("b", "cpu", [figure("device_copy", "device_copy", "GB/s", 70),
                                 figure("latency_b1_p99", "latency", "ms", 11.0, lower_is_better=True),
                                 figure("latency_b16_p99", "latency", "ms", 12.0, lower_is_better=True)])  # fmt: skip
    judgement = judge_bench(JudgeBenchInput(source=[source], target=[target], tolerances=tolerances))
    checks = {c.metric: c for c in judgement.verdict.checks}
    assert checks["throughput:device_copy"].outcome == "fail" and checks["throughput:device_copy"].observed == 0.7
    assert checks["latency:latency_b1_p99"].outcome == "pass"
    assert checks["latency:latency_b16_p99"].outcome == "fail" and checks["latency:latency_b16_p99"].observed == 20.0
    assert "[" in checks["latency:latency_b16_p99"].detail  # both spreads are shown beside the medians


def test_a_difference_inside_the_trials_spread_is_noise_not_a_regression():
    def latency(median: float, low: float, high: float) -> Measurement:
        return Measurement(name="latency_b8_p99", kind="latency", unit="ms", median=median, min=low, max=high,
                           values=[low, median, high], higher_is_better=False)  # fmt: skip

    # A shared CPU: medians 25% apart, but the trials overlap (the demo measured exactly this).
    noisy = judge_bench(JudgeBenchInput(source=[result("a", "cpu", [latency(10.0, 6.1, 13.9)])],
                                        target=[result("b", "cpu", [latency(12.5, 9.5, 15.5)])]))  # fmt: skip
    check = next(c for c in noisy.verdict.checks if c.metric == "latency:latency_b8_p99")
    assert check.outcome == "pass" and "spreads overlap" in check.detail and "+25.0%" in check.detail
    # The same medians with tight trials: a real regression.
    real = judge_bench(JudgeBenchInput(source=[result("a", "cpu", [latency(10.0, 9.8, 10.2)])],
                                       target=[result("b", "cpu", [latency(12.5, 12.3, 12.7)])]))  # fmt: skip
    check = next(c for c in real.verdict.checks if c.metric == "latency:latency_b8_p99")
    assert check.outcome == "fail" and check.observed == 25.0


def test_throttling_and_memory_errors_on_the_target_fail_the_poc():
    hot = TelemetrySummary(gpu=0, samples=600, clock_event_reasons=["sw_power_cap", "hw_thermal_slowdown"],
                           throttled_fraction=0.7, ecc_uncorrected_delta=0)  # fmt: skip
    # The errors rose between tests: only the whole run's summary saw them.
    run = TelemetrySummary(gpu=0, samples=900, ecc_uncorrected_delta=2, remapping_pending=True)
    sustained = SustainedResult(dtype="bf16", matrix_size=8192, seconds=60, window_s=2, windows=[700, 600, 520],
                                burst=700, sustained=520, drop_pct=25.714)  # fmt: skip
    figures = [figure("sustained_bf16_8192", "sustained", "TFLOP/s", 600, dtype="bf16", size=8192, telemetry=[hot])]
    source = result("a", "NVIDIA H100 80GB HBM3", figures)
    target = result("b", "NVIDIA H100 80GB HBM3", figures, sustained=sustained, whole_run=(run,))
    checks = {c.metric: c for c in judge_bench(JudgeBenchInput(source=[source], target=[target])).verdict.checks}
    assert checks["sustained_drop"].outcome == "fail" and "hw_thermal_slowdown" in checks["sustained_drop"].detail
    assert checks["gpu_health.ecc_uncorrected"].outcome == "fail" and checks["gpu_health.ecc_uncorrected"].observed == 2
    assert checks["gpu_health.row_remap_gpus"].outcome == "fail" and "[0]" in checks["gpu_health.row_remap_gpus"].detail


def test_compatibility_is_part_of_the_verdict_and_warnings_are_named():
    figures = [figure("device_copy", "device_copy", "GB/s", 100)]
    blocked = judge_bench(JudgeBenchInput(
        source=[result("a", "cpu", figures, fingerprint())],
        target=[result("b", "cpu", figures, fingerprint(bf16=False))],
    ))  # fmt: skip
    assert blocked.verdict.outcome == "fail" and "compat:bf16" in blocked.verdict.summary
    assert blocked.compatibility is not None and blocked.compatibility.flagged[0].item == "bf16"
    warned = judge_bench(JudgeBenchInput(
        source=[result("a", "cpu", figures, fingerprint())],
        target=[result("b", "cpu", figures, fingerprint(torch="2.5.1+cu124"))],
    ))  # fmt: skip
    assert warned.verdict.outcome == "pass" and "warnings: torch minor changes" in warned.verdict.summary


def test_results_from_before_the_suite_are_inconclusive_but_cost_is_still_judged():
    old = dict(device="cpu", device_name="cpu", dtype="float32", torch_version="2.4.1", trials=[],
               median_matmul_tflops=0.1, telemetry=None, telemetry_note="ran on CPU")  # fmt: skip
    source = BenchResult(environment="a", median_train_samples_per_s=1000.0, **old)
    target = BenchResult(environment="b", median_train_samples_per_s=1100.0, **old)
    judgement = judge_bench(JudgeBenchInput(source=[source], target=[target], source_price_per_hour=2.0,
                                            target_price_per_hour=2.0))  # fmt: skip
    checks = {c.metric: c for c in judgement.verdict.checks}
    assert checks["sides_with_suite"].outcome == "inconclusive"
    assert checks["throughput"].outcome == "pass" and checks["cost_per_unit"].outcome == "pass"
    assert judgement.verdict.outcome == "inconclusive" and judgement.comparison.verdict == judgement.verdict
