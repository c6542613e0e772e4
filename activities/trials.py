"""Judging a number measured in repeated trials per side: throughput of the parallel run's arms, the POC's figures.

On a shared host one run varies by 25-65% (two identical workers, see VERIFIED.md), so one slow
target run against one fast source run decides nothing. Each side is run several times, the trials
interleaved in time (source, target, source again, ...) so a busy minute hits both; the judged
difference is the gap between the medians, and it counts only when it is beyond the plan's
tolerance *and* beyond the source's own spread *and* beyond its own uncertainty: every target trial
worse than every source trial by more than that. With fewer than `MIN_TRIALS` a side, or where the
trials overlap, a difference beyond the tolerance is *inconclusive* (the operator decides), never
a fail; a median within the tolerance passes.

Why extremes and not a t-interval: with 3 trials a side the spread is all there is to estimate, the
distribution of a busy host's slowdowns is skewed (stalls), and "all target trials below all
source trials" has a distribution-free meaning: with exchangeable trials it happens by chance with
probability 1 / C(n_s + n_t, n_t) (1/20 at 3 + 3), before the margin beyond the floor is even asked.
"""

from __future__ import annotations

import statistics

from activities.analysis import Measurement

#: Trials a side below which a difference is never a fail.
MIN_TRIALS = 3


def _fmt(values: list[float]) -> str:
    if not values:
        return "none"
    return f"{statistics.median(values):.4g} [{min(values):.4g}-{max(values):.4g}, {len(values)} trials]"


def slowdown_measurement(
    metric: str, source: list[float], target: list[float], unit: str = "", higher_is_better: bool = True
) -> Measurement:
    """How much worse the target is, relative to the source's median (0.2 = 20% worse), with its floor and bounds.

    `observed` is the median gap; `floor` the source's own relative range (its noise); the confidence
    interval runs from the target's best trial against the source's worst to the reverse. Judged by
    the `beyond_uncertainty` comparison.
    """
    if not source or not target:
        return Measurement(metric=metric, detail=f"no trials on the {'source' if not source else 'target'}")
    sign = 1.0 if higher_is_better else -1.0
    s_med, t_med = statistics.median(source), statistics.median(target)
    if s_med <= 0:
        return Measurement(metric=metric, detail=f"the source measured {s_med:g} {unit}: nothing to compare with")

    def worse(s: float, t: float) -> float:
        return sign * (s - t) / s_med

    observed = worse(s_med, t_med)
    floor = (max(source) - min(source)) / s_med if len(source) > 1 else None
    best_s, worst_s = (max(source), min(source)) if higher_is_better else (min(source), max(source))
    best_t, worst_t = (max(target), min(target)) if higher_is_better else (min(target), max(target))
    enough = len(source) >= MIN_TRIALS and len(target) >= MIN_TRIALS
    interval = (round(worse(worst_s, best_t), 6), round(worse(best_s, worst_t), 6)) if enough else None
    detail = f"target {_fmt(target)} vs source {_fmt(source)} {unit}: {observed:+.1%} worse"
    if not enough:
        detail += f"; fewer than {MIN_TRIALS} trials a side cannot tell a slower target from a busy host"
    elif interval is not None:
        detail += f" (between {interval[0]:+.1%} and {interval[1]:+.1%} trial for trial)"
    return Measurement(metric=metric, observed=round(observed, 6), source=s_med, target=t_med, floor=floor,
                       confidence_interval=interval, detail=detail)  # fmt: skip
