"""Generated price and availability traces for the placement benchmark (`python -m bench.placement`).

Format: JSON Lines, one *scenario* per line:

    {"scenario": 0, "seed": 7,
     "job": {PlacementJob's fields: samples_per_epoch, epochs, dataset_gb, min_gpu_memory_gb, min_gpus,
             single_island, allowed_regions, deadline_hours, checkpoint_interval_hours, restart_hours},
     "offers": [{Offer's fields (what a placer may know: the list price, the *measured* samples/s,
                 the provider's stated interruption rate, capacity now, egress and storage prices),
                 "truth": {"samples_per_s": what the job really does there,
                           "interruptions_at_h": [hours into the run when a preemption really happens]}}]}

What varies, and why (the failure modes of ranking by list price): prices per GPU-hour by GPU model
and provider class (hyperscaler vs neocloud, ±15 %), spot discounts 50-75 % whose interruption rate
rises as the discount deepens (0.01-1.2 per hour), per-offer network quality (the share of ideal
multi-GPU throughput the cluster keeps: 35-100 %, poorer more often at cheap neoclouds; skypilot#3592),
the POC's measurement noise (±5 %, 1 sigma), regions outside the job's residency set, 80 % of offers
with capacity now, and egress/storage prices by provider. Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

#: GPU model: (list $/GPU-h on a neocloud, memory GB, relative training throughput per GPU)
GPUS = {"H100-80GB": (2.5, 80, 1.0), "H200-141GB": (3.4, 141, 1.35), "A100-80GB": (1.5, 80, 0.45),
        "L40S-48GB": (0.9, 48, 0.33), "L4-24GB": (0.45, 24, 0.12)}  # fmt: skip
#: provider: (price multiplier, egress $/GB out, storage $/GB-month, share of clusters with a poor network)
PROVIDERS = {"aws": (2.3, 0.09, 0.023, 0.1), "gcp": (2.6, 0.12, 0.020, 0.1), "azure": (2.4, 0.087, 0.021, 0.1),
             "lambda": (1.0, 0.0, 0.20, 0.4), "nebius": (0.95, 0.0, 0.0175, 0.3), "coreweave": (1.7, 0.0, 0.07, 0.2),
             "runpod": (0.9, 0.0, 0.07, 0.5)}  # fmt: skip
REGIONS = ["us-east-1", "us-west-2", "us-central1", "eu-west-1", "eu-north1", "eu-central-1", "ap-south-1",
           "me-central-1"]  # fmt: skip
SAMPLES_PER_S_PER_H100 = 150.0


def scenario(index: int, seed: int, offers: int) -> dict:
    rng = random.Random(seed * 1_000_003 + index)
    allowed = sorted(rng.sample(REGIONS, k=rng.randint(3, 6)))
    data_provider, data_region = rng.choice(["aws", "gcp", "azure"]), rng.choice(allowed)
    work_h100_hours = rng.uniform(200, 4_000)  # the job's size in H100-hours at ideal scaling
    gpus = rng.choice([8, 8, 16, 32])
    job = {
        "name": f"job-{index}", "samples_per_epoch": work_h100_hours * SAMPLES_PER_S_PER_H100 * 3600 / 4,
        "epochs": 4, "dataset_gb": rng.choice([200, 1_000, 5_000, 20_000]), "min_gpu_memory_gb": rng.choice([40, 70]),
        "min_gpus": gpus, "single_island": False, "allowed_regions": allowed,
        "deadline_hours": work_h100_hours / gpus * rng.uniform(2.5, 6), "checkpoint_interval_hours": 0.5,
        "restart_hours": rng.uniform(0.05, 0.3),
    }  # fmt: skip
    rows = []
    for i in range(offers):
        provider = rng.choice(list(PROVIDERS))
        multiplier, egress_out, storage, poor_share = PROVIDERS[provider]
        region = rng.choice(REGIONS)
        gpu = rng.choice(list(GPUS))
        base, memory, speed = GPUS[gpu]
        count = rng.choice([c for c in (8, 16, 32) if c >= gpus] or [gpus])
        per_gpu = base * multiplier * rng.uniform(0.85, 1.15)
        market = rng.choices(["on_demand", "spot", "reserved"], weights=[5, 4, 1])[0]
        rate = 0.0
        if market == "spot":
            discount = rng.uniform(0.5, 0.75)
            per_gpu *= 1 - discount
            rate = 0.01 + (discount - 0.5) / 0.25 * rng.uniform(0.1, 1.2)
        elif market == "reserved":
            per_gpu *= 0.65
        network = rng.uniform(0.35, 0.65) if rng.random() < poor_share else rng.uniform(0.85, 1.0)
        true_rate = SAMPLES_PER_S_PER_H100 * speed * count * (network if count > 8 else (1 + network) / 2)
        measured = true_rate * max(0.5, rng.gauss(1.0, 0.05))
        horizon, t, events = 2_000.0, 0.0, []
        while rate > 0:
            t += rng.expovariate(rate * rng.uniform(0.8, 1.25))  # the stated rate is itself an estimate
            if t > horizon:
                break
            events.append(round(t, 4))
        same = provider == data_provider and region == data_region
        egress = 0.0 if same else (0.02 if provider == data_provider else PROVIDERS[data_provider][1])
        rows.append({
            "id": f"{index}-{i}-{provider}-{region}-{gpu}-{market}", "provider": provider, "region": region,
            "instance_type": f"{count}x{gpu}", "gpu": gpu, "gpu_count": count, "gpu_memory_gb": memory,
            "gpus_per_nvlink_island": 8, "market": market, "usd_per_hour": round(per_gpu * count, 4),
            "samples_per_s": round(measured, 3), "interruption_rate_per_hour": round(rate, 4),
            "available": rng.random() < 0.8, "egress_usd_per_gb": egress, "storage_usd_per_gb_month": storage,
            "truth": {"samples_per_s": round(true_rate, 3), "interruptions_at_h": events, "egress_out": egress_out},
        })  # fmt: skip
    return {"scenario": index, "seed": seed, "job": job, "offers": rows}


def generate(path: Path, scenarios: int, offers: int, seed: int) -> Path:
    with path.open("w") as out:
        for index in range(scenarios):
            out.write(json.dumps(scenario(index, seed, offers)) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--offers", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    generate(args.out, args.scenarios, args.offers, args.seed)
    print(f"{args.out}: {args.scenarios} scenarios x {args.offers} offers (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
