"""Placement on replayed traces: `activities.pricing.place` against "cheapest hourly price" and the optimum.

Each scenario of a trace (`bench/price_traces.py`) is placed three ways: by `place` (expected total
cost from the measured throughput and the stated interruption rate), by the cheapest price per
GPU-hour with capacity, enough GPU memory and in an allowed region (the baseline: the same hard
constraints, ranked by list price), and by the offline optimum (the cheapest *realized* cost, known
only afterwards). Each choice is then *replayed* against the trace's truth: the real throughput and
the real preemption times (each loses the work since the last checkpoint plus the restart time).
Reports total-cost ratios with bootstrap 95 % intervals over scenarios, residency violations, missed
deadlines, and the time `place` takes over 1,000 offers.

    python -m bench.placement [--scenarios 200] [--offers 200] [--seed 7] [--append]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from activities.pricing import Offer, PlacementJob, cheapest_hourly, place
from bench.price_traces import generate, scenario


def realized(job: PlacementJob, offer: Offer, truth: dict) -> tuple[float, float]:
    """Replay a run on an offer: (USD, wall hours), with the true throughput and the true preemptions."""
    work = job.samples_per_epoch * job.epochs / (truth["samples_per_s"] * 3600)
    wall, done, since_checkpoint = 0.0, 0.0, 0.0
    events = iter(truth["interruptions_at_h"])
    upcoming = next(events, None)
    while done < work:
        step = min(job.checkpoint_interval_hours - since_checkpoint, work - done)
        if upcoming is not None and wall + step > upcoming:
            wall = upcoming + job.restart_hours  # the work since the last checkpoint is lost
            done -= since_checkpoint
            done = max(done, 0.0)
            since_checkpoint = 0.0
            upcoming = next(events, None)
            while upcoming is not None and upcoming < wall:
                upcoming = next(events, None)
            continue
        wall += step
        done += step
        since_checkpoint += step
        if since_checkpoint >= job.checkpoint_interval_hours - 1e-12:
            since_checkpoint = 0.0  # a checkpoint: work up to here survives a preemption
    cost = offer.usd_per_hour * wall + job.dataset_gb * offer.egress_usd_per_gb
    return cost + job.dataset_gb * offer.storage_usd_per_gb_month * wall / 730, wall


def allowed(job: PlacementJob, offer: Offer) -> bool:
    return job.allowed_regions is None or offer.region in job.allowed_regions


def run(path: Path) -> dict:
    ours, baseline, optimum, violations, late, unplaced = [], [], [], 0, 0, 0
    for line in path.open():
        data = json.loads(line)
        job = PlacementJob(**data["job"])
        offers = [Offer(**{k: v for k, v in o.items() if k != "truth"}) for o in data["offers"]]
        truth = {o["id"]: o["truth"] for o in data["offers"]}
        ranked = [r for r in place(job, offers) if r.feasible]
        fits = [o for o in offers if o.available and allowed(job, o) and o.gpu_memory_gb >= job.min_gpu_memory_gb
                and o.gpu_count >= job.min_gpus]  # fmt: skip
        base = cheapest_hourly(job, fits)
        outcomes = {o.id: realized(job, o, truth[o.id]) for o in fits}
        on_time = [c for c, wall in outcomes.values() if job.deadline_hours is None or wall <= job.deadline_hours]
        if not ranked or base is None or not on_time:
            unplaced += 1
            continue
        chosen = ranked[0].offer
        violations += not allowed(job, chosen)
        cost, wall = realized(job, chosen, truth[chosen.id])
        late += job.deadline_hours is not None and wall > job.deadline_hours
        ours.append(cost)
        baseline.append(outcomes[base.id][0])
        optimum.append(min(on_time))
    return {"ours": ours, "baseline": baseline, "optimum": optimum, "residency_violations": violations,
            "missed_deadlines": late, "unplaced": unplaced}  # fmt: skip


def ratio_ci(numerator: list[float], denominator: list[float], seed: int = 1, rounds: int = 2_000) -> tuple:
    """Ratio of totals with a bootstrap 95 % interval over scenarios."""
    rng = random.Random(seed)
    n = len(numerator)
    point = sum(numerator) / sum(denominator)
    samples = []
    for _ in range(rounds):
        picks = [rng.randrange(n) for _ in range(n)]
        samples.append(sum(numerator[i] for i in picks) / sum(denominator[i] for i in picks))
    samples.sort()
    return point, samples[int(0.025 * rounds)], samples[int(0.975 * rounds)]


def timing(offers: int = 1_000, repeats: int = 7, seed: int = 7) -> tuple[float, float]:
    data = scenario(10_000, seed, offers)
    job = PlacementJob(**data["job"])
    parsed = [Offer(**{k: v for k, v in o.items() if k != "truth"}) for o in data["offers"]]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        place(job, parsed)
        times.append(time.perf_counter() - started)
    return statistics.median(times), max(times)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--offers", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trace", type=Path, help="replay this trace instead of generating one")
    parser.add_argument("--append", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        trace = args.trace or generate(Path(scratch) / "trace.jsonl", args.scenarios, args.offers, args.seed)
        result = run(trace)
    vs_base = ratio_ci(result["ours"], result["baseline"])
    vs_opt = ratio_ci(result["ours"], result["optimum"])
    median_s, max_s = timing(seed=args.seed)
    n = len(result["ours"])
    load = "/".join(f"{x:.1f}" for x in os.getloadavg()[:2])
    lines = [
        f"placement over {n} scenarios x {args.offers} offers (seed {args.seed}; {result['unplaced']} with no "
        f"feasible offer left out): total cost {vs_base[0]:.3f}x cheapest-hourly (95% CI {vs_base[1]:.3f}-"
        f"{vs_base[2]:.3f}), {vs_opt[0]:.3f}x the offline optimum (95% CI {vs_opt[1]:.3f}-{vs_opt[2]:.3f}); "
        f"residency violations {result['residency_violations']}, missed deadlines {result['missed_deadlines']}",
        f"place() over 1,000 offers: median {median_s * 1000:.0f} ms, max {max_s * 1000:.0f} ms of 7 runs",
    ]
    for line in lines:
        print(line)
    if args.append:
        results = Path(__file__).with_name("RESULTS.md")
        command = f"python -m bench.placement --scenarios {args.scenarios} --offers {args.offers} --seed {args.seed}"
        header = f"\n## {datetime.now(UTC):%Y-%m-%d}, `{command}`\n\n{os.cpu_count()} x {cpu_model()}, load {load}\n\n"
        with results.open("a") as out:
            out.write(header + "```\n" + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
