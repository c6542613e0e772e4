"""The stage-level bound: equal endpoints over a whole 72-hour stage rarely roll back; a real slowdown does.

Pure functions, no stack: signs per window are what the cutover's judge feeds the sequential test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.sequential import (
    SignEvidence,
    StageBudget,
    always_valid_p,
    log_mixture_likelihood_ratio,
    observe,
    rejection_boundary,
    windows_to_decide,
)

WINDOWS = 4_320  # a 72-hour stage judged every minute
BUDGET = StageBudget(rate=0.01, planned_windows=WINDOWS, endpoints=1)


def alarms(signs: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Per simulated stage (rows), whether the worse count ever reached the boundary."""
    counts = np.cumsum(signs, axis=1)
    return (counts >= boundary[1 : signs.shape[1] + 1]).any(axis=1)


def test_the_boundary_is_the_mixture_test():
    alpha = BUDGET.sequential_alpha
    boundary = rejection_boundary(alpha, 500)
    for n in (windows_to_decide(alpha), 40, 200, 500):
        k = boundary[n]
        assert log_mixture_likelihood_ratio(k, n) >= math.log(1 / alpha)
        assert log_mixture_likelihood_ratio(k - 1, n) < math.log(1 / alpha)
    evidence = SignEvidence()
    for _ in range(windows_to_decide(alpha)):
        evidence = observe(evidence, change=30.0, margin=7.5)
    assert evidence.p_value < alpha <= always_valid_p(evidence.worse - 1, evidence.windows)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_equal_endpoints_over_4320_windows_alarm_at_most_the_stated_rate(seed):
    """The worst case the null allows, P(worse) = 1/2 in every window, over 400 stages per seed."""
    rng = np.random.default_rng(seed)
    alpha = BUDGET.sequential_alpha
    boundary = np.array(rejection_boundary(alpha, WINDOWS))
    stages = 400
    fired = alarms(rng.random((stages, WINDOWS)) < 0.5, boundary).sum()
    # The guarantee is alpha per test; 400 stages see Binomial(400, <= alpha): allow its 99.9% quantile.
    assert fired <= 3, f"{fired} of {stages} stages of equal endpoints rolled back (alpha {alpha:.2g})"


def test_any_metric_sequence_of_equal_endpoints_stays_within_the_stage_rate():
    """Three metrics per endpoint, each at its share: the stage's false-rollback rate is the plan's 1%."""
    assert BUDGET.sequential_alpha * 3 + BUDGET.immediate_alpha * 2 * WINDOWS == pytest.approx(0.01)


def test_a_fifteen_percent_slowdown_is_caught_within_the_stated_windows():
    """Per-window medians of 200 lognormal requests: 15% slower is worse than the 7.5% margin in most windows."""
    rng = np.random.default_rng(7)
    alpha = BUDGET.sequential_alpha
    boundary = np.array(rejection_boundary(alpha, WINDOWS))
    stages, per_window, sigma = 200, 200, 0.5
    source = np.median(rng.lognormal(0, sigma, (stages, 60, per_window)), axis=2)
    target = np.median(rng.lognormal(math.log(1.15), sigma, (stages, 60, per_window)), axis=2)
    signs = (target / source - 1) * 100 > 7.5
    counts = np.cumsum(signs, axis=1)
    caught = counts >= boundary[1:61]
    assert caught.any(axis=1).mean() >= 0.99
    delay = np.argmax(caught, axis=1) + 1
    assert np.median(delay) <= 3 * windows_to_decide(alpha)


def test_the_same_samples_never_alarm_even_when_every_window_is_looked_at():
    evidence = SignEvidence()
    rng = np.random.default_rng(3)
    for change in rng.normal(0, 5, 2_000):
        evidence = observe(evidence, float(change), margin=7.5)
    assert evidence.windows == 2_000 and evidence.p_value > BUDGET.sequential_alpha
