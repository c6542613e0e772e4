"""The case study's cost metrics from measurements: capacity-based cost per 1k inferences, cost per checkpoint,
data-transfer amplification."""

from __future__ import annotations

import pytest

from activities.pricing.unit_costs import (
    RampStep,
    cost_per_1k_inferences,
    data_transfer_amplification,
    measure_ramp,
    training_cost_per_checkpoint,
)


def step(rate: float, p99: float, n: int = 200, errors: int = 0) -> RampStep:
    """n answers whose 99th percentile is `p99` (the rest well below it)."""
    return RampStep(rate_per_s=rate, latencies_ms=[p99 / 2] * (n - 2) + [p99, p99], errors=errors)


def test_each_side_is_priced_at_its_own_capacity_not_at_shared_traffic():
    """Equal prices, different capacity: the cost per inference differs by the capacity ratio, not 1.0."""
    source = cost_per_1k_inferences(10.0, [step(50, 80), step(100, 120), step(200, 400)], slo_p99_ms=150)
    target = cost_per_1k_inferences(10.0, [step(50, 60), step(100, 90), step(200, 140), step(400, 900)], 150)
    assert (source.outcome, source.capacity_per_s) == ("measured", 100)
    assert (target.outcome, target.capacity_per_s) == ("measured", 200)
    assert source.usd_per_1k_inferences == pytest.approx(10.0 / (100 * 3600) * 1000)
    assert target.usd_per_1k_inferences == pytest.approx(source.usd_per_1k_inferences / 2)


def test_a_ramp_that_never_breaks_the_slo_gives_a_bound_and_one_that_starts_broken_is_inconclusive():
    bound = cost_per_1k_inferences(10.0, [step(50, 60), step(100, 70)], 150)
    assert bound.outcome == "lower_bound" and "at least" in bound.reason
    broken = cost_per_1k_inferences(10.0, [step(50, 300), step(100, 500)], 150)
    assert broken.outcome == "inconclusive" and broken.usd_per_1k_inferences is None
    assert "lowest step, 50/s, already missed" in broken.reason
    thin = cost_per_1k_inferences(10.0, [step(50, 60, n=40)], 150)
    assert thin.outcome == "inconclusive" and "fewer than the 100" in thin.reason
    errors = cost_per_1k_inferences(10.0, [step(50, 60), step(100, 70, errors=3)], 150)
    assert errors.capacity_per_s == 50  # a step with errors did not serve its load


def test_a_real_ramp_finds_an_overloaded_step():
    """A one-slot server with 50 ms service cannot serve 60/s (300 % load); at 5/s it is idle most of the time."""
    from bench.routing import endpoint_server

    server = endpoint_server(slots=1, service_s=0.05, seed=1)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ramp = measure_ramp(url, "/v1/completions", b'{"max_tokens": 10}', [5.0, 60.0], seconds_per_step=2.0)
    finally:
        server.shutdown()
        server.server_close()
    low, high = ramp
    assert low.latencies_ms and high.latencies_ms
    assert max(high.latencies_ms) > 4 * sorted(low.latencies_ms)[len(low.latencies_ms) // 2]
    verdict = cost_per_1k_inferences(3.0, ramp, slo_p99_ms=2_000)
    assert verdict.outcome == "inconclusive"  # 2 s at 5/s is ~10 answers: too few for a p99, and it says so


def test_training_cost_per_checkpoint_and_amplification():
    usd = training_cost_per_checkpoint(32.0, 0.5, checkpoint_gb=140, storage_usd_per_gb_month=0.02,
                                       retention_months=3, egress_usd_per_gb=0.09)  # fmt: skip
    assert usd == pytest.approx(16.0 + 140 * 0.02 * 3 + 140 * 0.09)
    ok = data_transfer_amplification(2_500_000_000, 1_000_000_000)
    assert ok.value == pytest.approx(2.5) and not ok.alert
    bad = data_transfer_amplification(4_000_000_000, 1_000_000_000)
    assert bad.alert and "> 3x" in bad.reason
    assert data_transfer_amplification(5, 0).value is None
