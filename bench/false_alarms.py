"""False alarms and detection of the cutover's stage-level verdicts, on simulated 72-hour stages.

(b) Both sides draw latencies from one heavy-tailed distribution: lognormal service times plus
occasional GC pauses (a pause delays every request that arrives during it, so slow requests come
in bursts, as they do under load), and the same small error rate. A stage is judged every minute
(4,320 windows) exactly as `judge_window` judges it with a `StageControl`: per window the target's
p50, p95 and error rate against the concurrent source window, the signs fed to the sequential test
(`activities.sequential`, its Shiryaev-Roberts detector), and the immediate rule (a rise of the p10, p25
and p50 all beyond twice the effect, with a Mann-Whitney p below the per-window share of the
budget). Equal stages count false rollbacks; in slowed stages the target becomes 15% slower (every
request) at a random minute and the delay to the rollback is counted. Quantiles, Mann-Whitney and
the detector are the activity's own functions; `--check N` also runs N stages through
`judge_window` itself and asserts the same decisions.

(a) `--runs N` with `--demo`: the demo's judged phases (parallel run, shadow, cutover) of equal
environments on the embedded stack with one core kept busy, N times: false rollbacks counted. Heavy
(minutes a run on two shared cores).

    python -m bench.false_alarms [--stages 100] [--rate 5] [--seed 1] [--check 2]
    python -m bench.false_alarms --demo --runs 3
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np

from activities.analysis import relative_change_pct
from activities.metrics import LATENCY_BUCKETS, EndpointSnapshot, Histogram, SideSnapshot
from activities.sequential import SignEvidence, StageBudget, observe, windows_to_decide
from activities.stats import bin_counts, mann_whitney_greater
from activities.windows import JudgeWindowInput, StageControl, WindowThresholds, judge_window, quantile, whole_shift_pct

WINDOWS = 4_320  # 72 hours judged every minute
WINDOW_S = 60.0
LIMITS = WindowThresholds(latency_increase_pct=15, error_rate_increase_pp=0.1, min_samples=50)
BOUNDS = np.array(LATENCY_BUCKETS)


@dataclass
class Workload:
    rate: float = 5.0  # requests per second per side
    median_s: float = 0.010
    sigma: float = 0.5  # lognormal shape: p99 ~3.2x the median before pauses
    pauses_per_hour: float = 6.0
    pause_mean_s: float = 1.0
    error_rate: float = 0.005


def simulate_side(rng: np.random.Generator, w: Workload, slow_from: int | None, factor: float):
    """Per window: cumulative bucket counts, counts, sums and errors for one side over the whole stage."""
    n = rng.poisson(w.rate * WINDOW_S, WINDOWS)
    total = int(n.sum())
    window = np.repeat(np.arange(WINDOWS), n)
    arrival = window * WINDOW_S + rng.random(total) * WINDOW_S
    latency = w.median_s * rng.lognormal(0.0, w.sigma, total)
    if slow_from is not None:
        latency[window >= slow_from] *= factor
    pauses = rng.poisson(w.pauses_per_hour * WINDOWS * WINDOW_S / 3600)
    starts = np.sort(rng.random(pauses) * WINDOWS * WINDOW_S)
    ends = starts + rng.exponential(w.pause_mean_s, pauses)
    index = np.searchsorted(starts, arrival, side="right") - 1
    inside = (index >= 0) & (arrival < ends[np.clip(index, 0, None)])
    latency[inside] += ends[index[inside]] - arrival[inside]
    buckets = np.searchsorted(BOUNDS, latency, side="left")  # bucket i: latency <= BOUNDS[i]
    counts = np.zeros((WINDOWS, len(BOUNDS) + 1))
    np.add.at(counts, (window, buckets), 1)
    cumulative = np.cumsum(counts[:, :-1], axis=1)
    sums = np.bincount(window, weights=latency, minlength=WINDOWS)
    errors = rng.binomial(n, w.error_rate)
    return cumulative, n, sums, errors


def _histogram(side, i: int) -> Histogram:
    cumulative, n, sums, _ = side
    return Histogram(bounds=list(LATENCY_BUCKETS), cumulative=cumulative[i].tolist(), count=float(n[i]),
                     sum=float(sums[i]))  # fmt: skip


def judge_stage(source, target, budget: StageBudget) -> int | None:
    """The first window (1-based) at which the stage rolls back, or None: what `judge_window` decides."""
    lat_margin, err_margin = LIMITS.latency_increase_pct / 2, LIMITS.error_rate_increase_pp / 2
    evidence = [SignEvidence(), SignEvidence(), SignEvidence()]
    for i in range(WINDOWS):
        if min(source[1][i], target[1][i]) < LIMITS.min_samples:
            continue
        s, t = _histogram(source, i), _histogram(target, i)
        changes = (
            relative_change_pct(quantile(s, 0.5), quantile(t, 0.5)),
            relative_change_pct(quantile(s, 0.95), quantile(t, 0.95)),
            (target[3][i] / target[1][i] - source[3][i] / source[1][i]) * 100,
        )
        for k, (change, margin) in enumerate(zip(changes, (lat_margin, lat_margin, err_margin), strict=True)):
            evidence[k] = observe(evidence[k], change, margin, budget.planned_windows)
        if any(e.p_value < budget.sequential_alpha for e in evidence):
            return i + 1
        if min(whole_shift_pct(s, t)) > 2 * LIMITS.latency_increase_pct:
            p, _ = mann_whitney_greater(bin_counts(t.cumulative, t.count), bin_counts(s.cumulative, s.count))
            if p < budget.immediate_alpha:
                return i + 1
    return None


def judge_stage_with_the_activity(source, target, budget: StageBudget) -> int | None:
    """The same stage through `judge_window` itself, window by window (slow: for cross-checking)."""
    evidence: dict = {}
    control = StageControl(budget=budget, window_seconds=WINDOW_S)
    for i in range(WINDOWS):
        sides = [SideSnapshot(url="sim", ok=True, requests=float(x[1][i]), errors=float(x[3][i]),
                              latency=_histogram(x, i)) for x in (source, target)]  # fmt: skip
        judged = judge_window(JudgeWindowInput(
            stage="72h", previous=[], current=[EndpointSnapshot(endpoint="sim", source=sides[0], target=sides[1])],
            thresholds=LIMITS, control=control, evidence=evidence,
        ))  # fmt: skip
        evidence = judged.evidence
        if judged.verdict.outcome == "fail":
            return i + 1
    return None


def run_stages(stages: int, workload: Workload, seed: int, check: int) -> dict:
    rng = np.random.default_rng(seed)
    budget = StageBudget(rate=0.01, planned_windows=WINDOWS, endpoints=1)
    false_alarms, caught, early, delays = 0, 0, 0, []
    started = time.monotonic()
    for k in range(stages):
        source = simulate_side(rng, workload, None, 1.0)
        target = simulate_side(rng, workload, None, 1.0)
        fired = judge_stage(source, target, budget)
        if k < check:
            assert judge_stage_with_the_activity(source, target, budget) == fired, "activity and simulation disagree"
        false_alarms += fired is not None
        inject = int(rng.integers(0, WINDOWS - 240))
        source = simulate_side(rng, workload, None, 1.0)
        target = simulate_side(rng, workload, inject, 1.15)
        fired = judge_stage(source, target, budget)
        if k < check:
            assert judge_stage_with_the_activity(source, target, budget) == fired, "activity and simulation disagree"
        if fired is not None and fired <= inject:
            early += 1
        elif fired is not None:
            caught += 1
            delays.append(fired - inject)
    return {
        "stages": stages, "false_alarms": false_alarms, "caught": caught, "early": early, "delays": delays,
        "seconds": time.monotonic() - started, "alpha": budget.sequential_alpha,
        "windows_min": windows_to_decide(budget.sequential_alpha, WINDOWS),
    }  # fmt: skip


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """Upper end of the 95% Wilson interval of a rate k/n (the uncertainty of a counted rate)."""
    if n == 0:
        return 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre + half


def wilson_lower(k: int, n: int, z: float = 1.96) -> float:
    return 1 - wilson_upper(n - k, n, z)


def machine() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                     platform.processor())  # fmt: skip
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({model}), load average {load}"


def report(result: dict, workload: Workload) -> str:
    n, fa, caught = result["stages"], result["false_alarms"], result["caught"]
    delays = result["delays"]
    median = statistics.median(delays) if delays else math.nan
    lines = [
        f"simulated 72-hour stages judged every minute ({WINDOWS} windows), {workload.rate:g} requests/s a side, "
        f"lognormal(median {workload.median_s * 1000:g} ms, sigma {workload.sigma}) + GC pauses "
        f"({workload.pauses_per_hour:g}/h, mean {workload.pause_mean_s:g} s), {workload.error_rate:.1%} errors; "
        f"{result['seconds']:.0f} s; machine: {machine()}",
        f"- equal endpoints: {fa} of {n} stages rolled back = {fa / n:.1%} (95% upper bound "
        f"{wilson_upper(fa, n):.1%}); target <= 1%",
        f"- 15% slower from a random minute: caught {caught} of {n} = {caught / n:.1%} (95% lower bound "
        f"{wilson_lower(caught, n):.1%}), {result['early']} rolled back before the slowdown; target >= 99%",
        f"- detection delay: median {median:g} windows (minutes), p90 "
        f"{np.percentile(delays, 90) if delays else math.nan:g}, max {max(delays, default=math.nan):g}; fewest "
        f"possible {result['windows_min']} (every window worse, sequential alpha {result['alpha']:.2g} per metric)",
    ]
    return "\n".join(lines)


def demo_runs(runs: int) -> str:
    """(a): `skyshift demo` of equal environments with one core busy, `runs` times; outcomes counted."""
    import subprocess
    import sys

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    outcomes = []
    try:
        for _ in range(runs):
            done = subprocess.run([sys.executable, "-m", "starters.cli", "demo", "--json"], capture_output=True,
                                  text=True, timeout=900)  # fmt: skip
            outcomes.append("completed" if done.returncode == 0 else f"exit {done.returncode}")
    finally:
        busy.kill()
        busy.wait()
    rolled = sum(o != "completed" for o in outcomes)
    return f"- demo (ok scenario) with one core busy: {rolled} of {runs} runs did not complete ({', '.join(outcomes)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=100, help="stages of each kind (equal, slowed)")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second per side")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check", type=int, default=0, help="stages also run through judge_window itself")
    parser.add_argument("--demo", action="store_true", help="(a): run the demo of equal environments instead")
    parser.add_argument("--runs", type=int, default=20, help="(a): demo runs")
    args = parser.parse_args()
    if args.demo:
        print(demo_runs(args.runs))
        return
    workload = Workload(rate=args.rate)
    print(report(run_stages(args.stages, workload, args.seed, args.check), workload))


if __name__ == "__main__":
    main()
