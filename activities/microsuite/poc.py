"""The POC's throughput and cost per unit of work, side by side: the first judge of the micro-suite.

Kept apart from `activities.microsuite.judge` (which adds ceilings and the environment matrix and replaces
this verdict with the whole one) so that judging never imports back into the suite's package.
"""

from __future__ import annotations

import math

from pydantic import BaseModel
from temporalio import activity

from activities.analysis import AnalysisRule, Check, Verdict, judge_measurement, verdict
from activities.microsuite.models import BenchResult
from activities.trials import slowdown_measurement


class CompareBenchInput(BaseModel):
    source: list[BenchResult]
    target: list[BenchResult]
    source_price_per_hour: float
    target_price_per_hour: float
    min_throughput_ratio: float
    max_cost_ratio: float


class PocComparison(BaseModel):
    verdict: Verdict
    throughput_ratio: float
    source_cost_per_million_samples: float
    target_cost_per_million_samples: float


def _cost_per_million(price_per_hour: float, samples_per_s: float) -> float:
    return price_per_hour / (samples_per_s * 3600) * 1e6 if samples_per_s > 0 else math.inf


def judge_benchmarks(request: CompareBenchInput) -> PocComparison:
    source = sorted(r.median_train_samples_per_s for r in request.source)[len(request.source) // 2]
    target = sorted(r.median_train_samples_per_s for r in request.target)[len(request.target) // 2]
    ratio = target / source if source else 0.0
    source_cost = _cost_per_million(request.source_price_per_hour, source)
    target_cost = _cost_per_million(request.target_price_per_hour, target)
    cost_ratio = target_cost / source_cost if source_cost else math.inf
    # Every trial of every run: a slower target counts only beyond the allowed slowdown, the source's own
    # spread and the overlap of the trials (activities.trials); otherwise inconclusive, never a fail.
    trials = {side: [t.train_samples_per_s for r in results for t in r.trials] or
              [r.median_train_samples_per_s for r in results]
              for side, results in (("source", request.source), ("target", request.target))}  # fmt: skip
    measured = slowdown_measurement("throughput", trials["source"], trials["target"], "samples/s")
    measured.detail = f"target trains at {ratio:.2f}x the source's samples/s: " + measured.detail
    rule = AnalysisRule(metric="throughput", compare="beyond_uncertainty",
                        threshold=round(1 - request.min_throughput_ratio, 6), unit="")  # fmt: skip
    checks = [
        judge_measurement(measured, rule, 0.98),
        Check(
            metric="cost_per_unit",
            outcome="pass" if cost_ratio <= request.max_cost_ratio else "fail",
            source=round(source_cost, 6),
            target=round(target_cost, 6),
            observed=round(cost_ratio, 4),
            threshold=request.max_cost_ratio,
            detail=f"USD per million samples: {target_cost:.4f} vs {source_cost:.4f} ({cost_ratio:.2f}x, ceiling "
            f"{request.max_cost_ratio}x)",
        ),
    ]
    return PocComparison(
        verdict=verdict("poc", checks),
        throughput_ratio=round(ratio, 4),
        source_cost_per_million_samples=round(source_cost, 6),
        target_cost_per_million_samples=round(target_cost, 6),
    )


@activity.defn
def compare_benchmarks(request: CompareBenchInput) -> PocComparison:
    return judge_benchmarks(request)
