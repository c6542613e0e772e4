"""Stage-level error control for cutover verdicts: a Shiryaev-Roberts change detector over per-window signs.

A stage is judged every monitor interval for hours or days. Judging each window at a fixed
confidence makes a false rollback almost certain over a long stage (4,320 one-minute windows at
99.5% each). This module bounds the probability of *ever* rolling back two equal endpoints over the
stage's planned windows, and still catches a regression that starts at any minute of it.

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

Why Shiryaev-Roberts and not a test from the stage's start: a regression usually starts mid-stage
(a deploy, a noisy neighbour arriving). A likelihood ratio accumulated since the stage began has
to first undo hours of "not worse" windows (the false-alarm bench measured a median delay of 607
one-minute windows that way); the Shiryaev-Roberts statistic R_n = (1 + R_(n-1)) x L_n restarts in
effect at every window, so its delay does not depend on how long the stage was quiet. For each
alternative P(worse) = p >= 1/2, L_n = (2p)^x (2(1-p))^(1-x) has mean <= 1 whenever P(worse) <= 1/2,
so R_n - n is a supermartingale and R_n a nonnegative submartingale with E[R_N] <= N: by Doob's
inequality P(max over the first N windows of R >= N / alpha) <= alpha. Averaging R over a few
alternatives keeps that bound (the mean of the expectations is still <= N) and covers regressions
of different strengths. The stage's reported p-value is min(1, N / max R so far): the probability
of a false rollback from a threshold that high over the planned N windows. (Pollak & Tartakovsky,
"Optimality properties of the Shiryaev-Roberts procedure", Statistica Sinica 2009.) Hand-written:
a dozen lines, and the workers need no scipy.

The stage's error budget is split (Bonferroni) between the sequential tests (half) and the
immediate per-window rule (half, spread evenly over the planned windows), across every endpoint
and metric, so the sum of all ways to roll back equal endpoints stays within the plan's rate.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field

#: Alternatives P(worse) the detector averages over: a marginal, a clear and a blatant regression.
ALTERNATIVES: tuple[float, ...] = (0.65, 0.8, 0.95)
#: Sequential metrics per endpoint (p50, p95, error rate) and immediate ones (p50 body, error rate).
SEQUENTIAL_TESTS_PER_ENDPOINT = 3
IMMEDIATE_TESTS_PER_ENDPOINT = 2
#: R is capped here so it stays a finite JSON number (it has long crossed any threshold by then).
_CAP = 1e300


def sr_step(statistics: Iterable[float], worse: bool) -> list[float]:
    """One window: R <- (1 + R) x L per alternative."""
    return [
        min(_CAP, (1 + r) * (2 * p if worse else 2 * (1 - p))) for r, p in zip(statistics, ALTERNATIVES, strict=True)
    ]


def windows_to_decide(alpha: float, planned_windows: int) -> int:
    """The fewest windows, every one of them worse, that roll back at `alpha` over `planned_windows`."""
    r, n = [0.0] * len(ALTERNATIVES), 0
    while sum(r) / len(r) < planned_windows / alpha:
        r, n = sr_step(r, True), n + 1
    return n


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
    """One metric's sequence within a stage: a few numbers, so history stays small."""

    windows: int = Field(0, description="Windows counted (enough samples on both sides and a baseline)")
    worse: int = Field(0, description="Of those, windows where the target was worse by more than the margin")
    statistics: list[float] = Field(
        default_factory=lambda: [0.0] * len(ALTERNATIVES), description="Shiryaev-Roberts R per alternative"
    )
    p_value: float = Field(1.0, description="min(1, planned windows / max mean R): P(a false alarm this high)")
    change_sum: float = Field(0.0, description="Sum of the per-window changes, for the mean shown in verdicts")

    @property
    def mean_change(self) -> float | None:
        return self.change_sum / self.windows if self.windows else None

    @property
    def worse_share(self) -> float | None:
        return self.worse / self.windows if self.windows else None


def observe(evidence: SignEvidence, change: float, margin: float, planned_windows: int) -> SignEvidence:
    """Count one window: worse when `change` (target vs baseline) exceeds `margin`. Returns a new evidence."""
    worse = change > margin
    statistics = sr_step(evidence.statistics, worse)
    mean = sum(statistics) / len(statistics)
    return SignEvidence(
        windows=evidence.windows + 1,
        worse=evidence.worse + int(worse),
        statistics=statistics,
        p_value=min(evidence.p_value, 1.0, planned_windows / mean if mean > 0 else 1.0),
        change_sum=evidence.change_sum + change,
    )
