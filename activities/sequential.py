"""Stage-level error control for cutover verdicts: a one-sided mixture SPRT over per-window signs.

A stage is judged every monitor interval for hours or days. Judging each window at a fixed
confidence makes a false rollback almost certain over a long stage (4,320 one-minute windows at
99.5% each). This module bounds the probability of *ever* rolling back two equal endpoints over the
whole stage, whatever its length, by testing one sequence per metric with an always-valid p-value.

Why windows, not requests: requests inside one window are not independent under load (a GC pause
or a noisy neighbour slows a burst of consecutive requests on one side), so a per-request test's
p-value is far too small and a per-request count test would alarm on any stall. The unit here is
the *window*: each counted window contributes one sign, "was the target worse than its baseline
by more than the tolerated margin?". With equal endpoints the two sides are exchangeable, so that
sign is 1 with probability at most 1/2 however the requests inside the window were correlated;
windows a monitor interval apart are treated as independent (stalls last seconds, not minutes).
When the baseline is a fixed, load-matched summary rather than a concurrent window, its own
estimation error is shared by all windows; the margin (half the effect the plan must catch) is
what absorbs it.

Why a mixture: the likelihood ratio of "P(worse) = p" against "P(worse) = 1/2", averaged over a
grid of p in (1/2, 1), is a nonnegative supermartingale under any P(worse) <= 1/2 (each component
is: E = 2p0·p + 2(1-p0)(1-p) <= 1 when p >= 1/2 >= p0). Ville's inequality then bounds the
probability that it *ever* exceeds 1/alpha by alpha: an always-valid p-value, min over time of
1/LR, that may be looked at after every window without spending more error (Johari et al., "Always
Valid Inference", 2017; Robbins' mixture SPRT). Hand-written: the closed form is a dozen lines and
the workers need no scipy.

The stage's error budget is split (Bonferroni) between the sequential tests (half) and the
immediate per-window rule (half, spread evenly over the planned windows), across every endpoint
and metric, so the sum of all ways to roll back equal endpoints stays within the plan's rate.
"""

from __future__ import annotations

import math
from functools import lru_cache

from pydantic import BaseModel, Field

#: Alternatives P(worse) = p the mixture averages over, evenly weighted on (1/2, 1).
GRID: tuple[float, ...] = tuple(0.5 + 0.5 * (i + 0.5) / 32 for i in range(32))
_LOG_UP = tuple(math.log(2 * p) for p in GRID)
_LOG_DOWN = tuple(math.log(2 * (1 - p)) for p in GRID)
#: Sequential metrics per endpoint (p50, p95, error rate) and immediate ones (p50, error rate).
SEQUENTIAL_TESTS_PER_ENDPOINT = 3
IMMEDIATE_TESTS_PER_ENDPOINT = 2


def log_mixture_likelihood_ratio(worse: int, windows: int) -> float:
    """log of the mixture likelihood ratio after `worse` worse windows out of `windows` counted."""
    if windows <= 0:
        return 0.0
    if 2 * worse <= windows:
        return 0.0  # no component can exceed 1 then: (2p)^k (2(1-p))^(n-k) <= (4p(1-p))^(n/2) <= 1
    better = windows - worse
    terms = [worse * up + better * down for up, down in zip(_LOG_UP, _LOG_DOWN, strict=True)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms) / len(terms))


def always_valid_p(worse: int, windows: int) -> float:
    """1 / likelihood ratio, capped at 1 (the running minimum of this is the stage's p-value)."""
    return min(1.0, math.exp(-log_mixture_likelihood_ratio(worse, windows)))


@lru_cache(maxsize=256)
def windows_to_decide(alpha: float) -> int:
    """The fewest counted windows that can roll back at `alpha`: every one of them worse."""
    n = 1
    while log_mixture_likelihood_ratio(n, n) < math.log(1 / alpha):
        n += 1
    return n


def rejection_boundary(alpha: float, max_windows: int) -> list[int]:
    """For n = 0..max_windows, the fewest worse windows out of n that roll back at `alpha` (n + 1: none can).

    The likelihood ratio rises with the worse count, so this boundary is the whole test; simulations
    use it to run thousands of stages without recomputing the mixture per window.
    """
    threshold, bound, worse = math.log(1 / alpha), [1], 0
    for n in range(1, max_windows + 1):
        worse = max(worse, n // 2)
        while worse <= n and log_mixture_likelihood_ratio(worse, n) < threshold:
            worse += 1
        bound.append(worse if worse <= n else n + 1)
        worse = max(0, worse - 1)
    return bound


class StageBudget(BaseModel):
    """How the plan's stage-level false-rollback rate is spent (all equal endpoints: at most `rate`)."""

    rate: float = Field(0.01, gt=0, lt=1, description="P(any rollback of equal endpoints within the stage)")
    planned_windows: int = Field(1, ge=1, description="Stage duration / monitor interval")
    endpoints: int = Field(1, ge=1)

    @property
    def sequential_alpha(self) -> float:
        """Each sequential test's share: half the budget over every endpoint's metrics."""
        return self.rate / 2 / (SEQUENTIAL_TESTS_PER_ENDPOINT * self.endpoints)

    @property
    def immediate_alpha(self) -> float:
        """One window's immediate test: the other half, spread evenly over the planned windows."""
        return self.rate / 2 / (IMMEDIATE_TESTS_PER_ENDPOINT * self.endpoints * self.planned_windows)


class SignEvidence(BaseModel):
    """One metric's sequence within a stage: a few counters, so history stays small."""

    windows: int = Field(0, description="Windows counted (enough samples on both sides and a baseline)")
    worse: int = Field(0, description="Of those, windows where the target was worse by more than the margin")
    p_value: float = Field(1.0, description="Always-valid p-value: min over the stage of 1 / likelihood ratio")
    change_sum: float = Field(0.0, description="Sum of the per-window changes, for the mean shown in verdicts")

    @property
    def mean_change(self) -> float | None:
        return self.change_sum / self.windows if self.windows else None

    @property
    def worse_share(self) -> float | None:
        return self.worse / self.windows if self.windows else None


def observe(evidence: SignEvidence, change: float, margin: float) -> SignEvidence:
    """Count one window: worse when `change` (target vs baseline) exceeds `margin`. Returns a new evidence."""
    worse = evidence.worse + int(change > margin)
    windows = evidence.windows + 1
    return SignEvidence(
        windows=windows,
        worse=worse,
        p_value=min(evidence.p_value, always_valid_p(worse, windows)),
        change_sum=evidence.change_sum + change,
    )
