"""All-reduce bus bandwidth over message sizes, measured the way nccl-tests defines it.

algbw = bytes / time per all-reduce; busbw = algbw * 2(n-1)/n, the traffic each link carries in a
ring, so the figure is comparable across rank counts and against link speeds. Ranks are real
processes started by `torchrun` (NCCL on GPUs, gloo on CPU), never threads: a collective between
threads of one process would measure memcpy, not the interconnect.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from activities.microsuite.models import AllReducePoint, AllReduceResult, Stat

WORKER = Path(__file__).with_name("allreduce_worker.py")


def bus_bandwidth(algbw: float, world_size: int) -> float:
    """nccl-tests' all-reduce bus bandwidth (doc/PERFORMANCE.md): algbw * 2(n-1)/n."""
    return algbw * 2 * (world_size - 1) / world_size


def _stat(values: list[float]) -> Stat:
    return Stat(min=min(values), median=statistics.median(values), max=max(values))


def run_allreduce(
    processes: int,
    sizes: list[int],
    *,
    backend: str,
    trials: int = 3,
    warmup: int = 5,
    iterations: int = 20,
    poll: Callable[[], None] = lambda: None,
    timeout_s: float = 1800,
) -> AllReduceResult:
    """Launch `processes` ranks with torchrun and return per-size timings with algbw and busbw.

    `poll` runs about once a second while the ranks work (the activity heartbeats there and a
    cancellation raised from it terminates the ranks).
    """
    if processes < 2:
        raise ValueError(f"allreduce_processes: {processes} rank(s); an all-reduce needs at least 2")
    with tempfile.TemporaryDirectory(prefix="skyshift-allreduce-") as scratch:
        out = Path(scratch) / "result.json"
        log = Path(scratch) / "ranks.log"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            str(WORKER), "--backend", backend, "--sizes", ",".join(map(str, sizes)), "--warmup", str(warmup),
            "--iterations", str(iterations), "--trials", str(trials), "--out", str(out),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with log.open("w") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + timeout_s
            try:
                while process.poll() is None:
                    poll()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"all-reduce ranks still running after {timeout_s:.0f} s")
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=1.0)
            finally:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        if process.returncode != 0 or not out.exists():
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"all-reduce ranks ({backend}, {processes}) exited {process.returncode}: {tail}")
        raw = json.loads(out.read_text())
    world = raw["world_size"]
    points = []
    for point in raw["points"]:
        times = point["times_s"]
        algbw = [point["size_bytes"] / t / 1e9 for t in times]
        points.append(
            AllReducePoint(
                size_bytes=point["size_bytes"],
                time_us=_stat([t * 1e6 for t in times]),
                algbw_gbps=_stat(algbw),
                busbw_gbps=_stat([bus_bandwidth(a, world) for a in algbw]),
                algbw_trials_gbps=algbw,
                correct=point["correct"],
            )
        )
    return AllReduceResult(
        backend=raw["backend"], world_size=world, device=raw["device"], warmup=warmup, iterations=iterations,
        points=points,
    )  # fmt: skip
