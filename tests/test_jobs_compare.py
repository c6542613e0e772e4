"""Three arms of a real torch job (source, source again, target) judged against the noise floor; the POC's cost.

Every arm is the example job (`examples/jobs/train`) run by `run_job` in a subprocess; what makes
the target differ is only its worker's environment, as on a real budget cloud.
"""

from __future__ import annotations

import json
import statistics

import pytest
from temporalio.testing import ActivityEnvironment

from activities.analysis import AnalysisRule
from activities.jobs import (
    CompareJobArmsInput,
    JobBenchSide,
    JobComparison,
    JobCostModel,
    JobResult,
    JobTolerances,
    JudgeJobBenchInput,
    compare_job_arms,
    judge_job_bench,
)
from activities.jobs.files import read_artifact
from activities.stores import StoreSpec
from tests.test_jobs import run_arm, stage, train_job

#: Throughput on two shared cores is noise: these tests judge numerics, so throughput is reported
#: (a dry-run rule, the plan's way to watch a metric without acting on it) and not acted on.
TOLERANCES = JobTolerances(rules=[AnalysisRule(metric="throughput", compare="within_floor", threshold=0.05,
                                               dry_run=True)])  # fmt: skip
NOISE = "1e-3"  # relative gradient noise from an unseeded generator: run-to-run nondeterminism


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> StoreSpec:
    return stage(f"file://{tmp_path_factory.mktemp('source-cloud')}")


@pytest.fixture(scope="module")
def deterministic(store) -> dict[str, JobResult]:
    return {arm: run_arm(train_job(), store, arm) for arm in ("source", "source-repeat", "target")}


def compare(source: JobResult, repeat: JobResult, target: JobResult) -> JobComparison:
    request = CompareJobArmsInput(job="tiny", source=source, source_repeat=repeat, target=target, tolerances=TOLERANCES)
    return ActivityEnvironment().run(compare_job_arms, request)


def test_identical_numerics_pass_with_every_tensor_bitwise_equal(deterministic):
    result = compare(deterministic["source"], deterministic["source-repeat"], deterministic["target"])
    assert result.verdict.outcome == "pass", result.verdict.summary
    assert result.first_diverging_step is None and result.top_tensors == []
    assert set(result.tensor_counts) == {"equal", "beyond_floor"} and result.tensor_counts["beyond_floor"] == 0
    loss = next(m for m in result.metrics if m.metric == "loss")
    assert loss.divergence == 0 and loss.floor == 0 and loss.steps == 40


def test_float16_softmax_on_the_target_fails_naming_the_step_and_the_tensors(store, deterministic):
    target = run_arm(train_job(), store, "target", worker={"TRAIN_SOFTMAX_FP16": "1"})
    result = compare(deterministic["source"], deterministic["source-repeat"], target)
    verdict = result.verdict
    assert verdict.outcome == "fail"
    assert result.first_diverging_step is not None
    assert f"first diverging step {result.first_diverging_step}" in verdict.summary
    assert result.top_tensors and all(name in verdict.summary for name in result.top_tensors)
    # The floor is zero (the source repeats itself bit for bit), so every difference is real.
    assert all(row.floor_status == "equal" and row.status == "different" for row in result.tensors)
    diverging = [m for m in result.metrics if m.first_diverging_step == result.first_diverging_step]
    assert diverging and all(m.divergence > m.limit and m.floor == 0 for m in diverging)


def test_nondeterminism_inside_the_floor_passes_and_ten_times_it_fails(store):
    noisy = {"TRAIN_NOISE": NOISE}
    source, repeat, target = (run_arm(train_job(), store, arm, worker=noisy)
                              for arm in ("source", "source-repeat", "target"))  # fmt: skip
    calm = compare(source, repeat, target)
    assert calm.verdict.outcome == "pass", calm.verdict.summary
    loss = next(m for m in calm.metrics if m.metric == "loss")
    assert loss.floor > 0 and loss.divergence > 0  # really nondeterministic, and absorbed by the floor
    assert any(row.status == "different" and row.floor_status == "different" for row in calm.tensors)

    drifting = run_arm(train_job(), store, "target", worker={"TRAIN_NOISE": str(10 * float(NOISE))})
    drift = compare(source, repeat, drifting)
    assert drift.verdict.outcome == "fail"
    assert drift.first_diverging_step is not None and drift.top_tensors
    failed = {c.metric for c in drift.verdict.checks if c.outcome == "fail"}
    assert "loss" in failed or "grad_norm" in failed


def test_a_target_that_crashes_fails_the_run_with_its_stderr_tail(store, deterministic):
    crashed = run_arm(train_job(), store, "target", worker={"TRAIN_CRASH_AT": "3"})
    assert crashed.status == "failed" and crashed.steps_logged == 3
    result = compare(deterministic["source"], deterministic["source-repeat"], crashed)
    assert result.verdict.outcome == "fail"
    assert "target on gcp-target: failed, exited with code 1 after 3 steps" in result.verdict.summary
    assert "RuntimeError: injected crash at step 3" in result.verdict.summary


def steady_rate_by_hand(result: JobResult) -> float:
    """Samples per second after the first 10% of steps, from the stored series' own timestamps."""
    series = sorted((json.loads(line) for line in read_artifact(result.metrics).splitlines()), key=lambda r: r["step"])
    warmup = max(1, len(series) // 10)
    steady = series[warmup:]
    return sum(r["samples"] for r in steady[1:]) / (steady[-1]["time"] - steady[0]["time"])


def test_cost_per_epoch_is_the_hand_computation_from_prices_and_measured_times(deterministic):
    job = train_job(samples_per_epoch=50_000)
    source_trials = [deterministic["source"], deterministic["source-repeat"]]
    target_trials = [deterministic["target"]]
    request = JudgeJobBenchInput(
        job=job,
        source=JobBenchSide(environment="aws-source", trials=source_trials, price_per_gpu_hour=4.10),
        target=JobBenchSide(environment="gcp-target", trials=target_trials, price_per_gpu_hour=2.95, egress_usd=12.0),
        cost=JobCostModel(egress_amortized_over_epochs=100),
        min_throughput_ratio=0.01,
        max_cost_ratio=100,
    )
    result = ActivityEnvironment().run(judge_job_bench, request)
    source_rate = statistics.median(steady_rate_by_hand(t) for t in source_trials)
    target_rate = steady_rate_by_hand(deterministic["target"])
    # On CPU the job used no GPU: one unit of the plan's price (an instance-hour).
    source_epoch = 4.10 * 1 * (50_000 / source_rate / 3600)
    target_epoch = 2.95 * 1 * (50_000 / target_rate / 3600) + 12.0 / 100
    assert result.source.cost_per_epoch_usd == pytest.approx(source_epoch, rel=1e-9)
    assert result.target.cost_per_epoch_usd == pytest.approx(target_epoch, rel=1e-9)
    assert result.target.cost_per_1k_samples_usd == pytest.approx(target_epoch / 50_000 * 1000, rel=1e-9)
    assert result.source.per_s.min <= result.source.per_s.median <= result.source.per_s.max
    assert result.source.gpus_used == 0 and result.source.billed_units == 1
    assert result.verdict.outcome == "pass", result.verdict.summary
    assert result.cost_ratio == pytest.approx(target_epoch / source_epoch, rel=1e-9)
