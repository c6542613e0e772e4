"""One rank of the all-reduce benchmark; `torchrun` starts one per process and rank 0 writes the timings.

Run by path (not as a package module) so each rank imports torch and the standard library only.
Follows nccl-tests: float32 sum, warm-up then timed iterations per message size, the slowest rank's
time per operation; the bandwidth arithmetic happens in the parent (activities/microsuite/allreduce.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True, choices=["gloo", "nccl"])
    parser.add_argument("--sizes", required=True, help="comma-separated message sizes in bytes")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    local_rank = int(os.environ["LOCAL_RANK"])
    if args.backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    points = []
    for size in (int(s) for s in args.sizes.split(",")):
        numel = max(1, size // 4)
        check = torch.full((numel,), float(rank + 1), device=device)
        dist.all_reduce(check)
        correct = bool(torch.all(check == world * (world + 1) / 2).item())
        data = torch.zeros(numel, device=device)  # sums stay 0: no overflow however many iterations run
        for _ in range(args.warmup):
            dist.all_reduce(data)
        sync()
        times = []
        for _ in range(args.trials):
            dist.barrier()
            sync()
            started = time.perf_counter()
            for _ in range(args.iterations):
                dist.all_reduce(data)
            sync()
            elapsed = torch.tensor([(time.perf_counter() - started) / args.iterations], device=device)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            times.append(elapsed.item())
        points.append({"size_bytes": numel * 4, "times_s": times, "correct": correct})
    if rank == 0:
        with open(args.out, "w") as out:
            json.dump({"backend": args.backend, "world_size": world, "device": device.type, "points": points}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
