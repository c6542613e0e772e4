"""Statistics for cutover verdicts, on binned data (latency histograms), in plain Python.

Deliberately not scipy: the tests needed here are short closed forms over histogram bins, and
keeping scipy (and its BLAS) out of every worker image is worth a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def normal_quantile(p: float) -> float:
    """z such that P(Z <= z) = p, for a standard normal (e.g. 2.326 at 0.99)."""
    return NormalDist().inv_cdf(p)


def bin_counts(cumulative: Sequence[float], total: float) -> list[float]:
    """Per-bin counts from cumulative bucket counts; the last bin is the overflow (+Inf) bucket."""
    counts, previous = [], 0.0
    for value in cumulative:
        counts.append(max(0.0, value - previous))
        previous = value
    counts.append(max(0.0, total - previous))
    return counts


def mann_whitney_greater(target: Sequence[float], source: Sequence[float]) -> tuple[float, float]:
    """One-sided Mann-Whitney U on binned samples: is the target stochastically greater?

    Samples in one bin are ties (mid-ranks), with the usual tie-corrected variance and continuity
    correction. Returns (p-value, common-language effect size P(target > source) + ½P(tie)).
    """
    n_t, n_s = sum(target), sum(source)
    if n_t <= 0 or n_s <= 0:
        return 1.0, 0.5
    u, below = 0.0, 0.0
    for t, s in zip(target, source, strict=True):
        u += t * (below + s / 2)
        below += s
    n = n_t + n_s
    ties = sum((t + s) ** 3 - (t + s) for t, s in zip(target, source, strict=True))
    variance = n_t * n_s / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0, u / (n_t * n_s)
    z = (u - n_t * n_s / 2 - 0.5) / math.sqrt(variance)
    return normal_sf(z), u / (n_t * n_s)


def binomial_excess(successes: float, trials: float, expected_rate: float) -> float:
    """One-sided p-value that `successes` in `trials` exceed `expected_rate` (normal approximation)."""
    if trials <= 0:
        return 1.0
    expected = trials * expected_rate
    sd = math.sqrt(max(trials * expected_rate * (1 - expected_rate), 1e-12))
    return normal_sf((successes - expected - 0.5) / sd)


def two_proportion_greater(x_t: float, n_t: float, x_s: float, n_s: float) -> float:
    """One-sided p-value that the target's rate exceeds the source's (pooled two-proportion z-test)."""
    if n_t <= 0 or n_s <= 0:
        return 1.0
    pooled = (x_t + x_s) / (n_t + n_s)
    sd = math.sqrt(max(pooled * (1 - pooled) * (1 / n_t + 1 / n_s), 1e-12))
    return normal_sf((x_t / n_t - x_s / n_s) / sd)
