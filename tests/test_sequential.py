"""The stage-level bound: equal endpoints over a whole 72-hour stage rarely roll back; a slowdown that starts at
any minute of it is caught within a few dozen windows.

Pure functions, no stack: signs per window are what the cutover's judge feeds the change detector.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.sequential import ALTERNATIVES, SignEvidence, StageBudget, observe, sr_step, windows_to_decide

WINDOWS = 4_320  # a 72-hour stage judged every minute
BUDGET = StageBudget(rate=0.01, planned_windows=WINDOWS, endpoints=1)


def alarms(signs: np.ndarray, alpha: float, planned: int) -> np.ndarray:
    """`sr_step` over many stages at once (rows): the first window whose mean R reaches planned / alpha, or -1."""
    r = np.zeros((signs.shape[0], len(ALTERNATIVES)))
    up, down = 2 * np.array(ALTERNATIVES), 2 * (1 - np.array(ALTERNATIVES))
    first = np.full(signs.shape[0], -1)
    for n in range(signs.shape[1]):
        r = (1 + r) * np.where(signs[:, n : n + 1], up, down)
        hit = (r.mean(axis=1) >= planned / alpha) & (first < 0)
        first[hit] = n + 1
        r = np.minimum(r, 1e300)
    return first


def test_the_vectorised_detector_is_the_modules_own():
    rng = np.random.default_rng(0)
    signs = rng.random((3, 300)) < 0.7
    fired = alarms(signs, BUDGET.sequential_alpha, WINDOWS)
    for row, first in zip(signs, fired, strict=True):
        evidence, at = SignEvidence(), -1
        for n, worse in enumerate(row):
            evidence = observe(evidence, 10.0 if worse else 0.0, margin=7.5, planned_windows=WINDOWS)
            if at < 0 and evidence.p_value < BUDGET.sequential_alpha:
                at = n + 1
        assert at == first
    assert sr_step([0.0, 0.0, 0.0], True) == [2 * p for p in ALTERNATIVES]


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_equal_endpoints_over_4320_windows_alarm_at_most_the_stated_rate(seed):
    """The worst case the null allows, P(worse) = 1/2 in every window, over 300 stages per seed."""
    rng = np.random.default_rng(seed)
    alpha = BUDGET.sequential_alpha
    fired = (alarms(rng.random((300, WINDOWS)) < 0.5, alpha, WINDOWS) > 0).sum()
    # The guarantee is alpha (0.17%) per metric; 300 stages see Binomial(300, <= alpha): allow its 99.9% quantile.
    assert fired <= 3, f"{fired} of 300 stages of equal endpoints rolled back (alpha {alpha:.2g})"


def test_the_budget_adds_up_to_the_plans_stage_rate():
    assert BUDGET.sequential_alpha * 3 + BUDGET.immediate_alpha * 2 * WINDOWS == 0.01


def test_a_fifteen_percent_slowdown_from_any_minute_is_caught_within_dozens_of_windows():
    """Per-window medians of 300 lognormal requests: 15% slower is worse than the 7.5% margin in ~90% of windows;
    before it, ~7% of windows are 'worse' by chance. Wherever the change falls, the delay stays short."""
    rng = np.random.default_rng(7)
    stages, per_window, sigma = 200, 300, 0.5
    start = rng.integers(0, WINDOWS - 300, stages)
    windows = np.arange(WINDOWS)
    factor = np.where(windows[None, :] >= start[:, None], 1.15, 1.0)
    # The median of n lognormal samples is close to lognormal with sd 1.2533 sigma / sqrt(n).
    sd = 1.2533 * sigma / np.sqrt(per_window)
    source = np.exp(rng.normal(0, sd, (stages, WINDOWS)))
    target = factor * np.exp(rng.normal(0, sd, (stages, WINDOWS)))
    fired = alarms((target / source - 1) * 100 > 7.5, BUDGET.sequential_alpha, WINDOWS)
    caught = fired > start
    assert caught.mean() >= 0.99 and not (fired[fired > 0] <= start[fired > 0]).any()
    delay = fired[caught] - start[caught]
    assert np.median(delay) <= 3 * windows_to_decide(BUDGET.sequential_alpha, WINDOWS)
