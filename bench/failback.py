"""The failback window, measured on the embedded stack: how stale the source is (RPO) and how fast
traffic is back on it (RTO), as an operator would feel them.

One migration per run is taken into its failback window (a dev server, one worker per environment
and the control worker in this process, `file://` stores, the weighted router on loopback). Then:
- RPO: `--writes` times, an output is written on the target and the clock runs until the reverse
  sync has put the same bytes at the source (polled from outside, as a person checking would);
- RTO: `skyshift failback`'s request until the router, read from outside, sends 100% to the source.

    python -m bench.failback [--runs 3] [--writes 5] [--every 10s]

Wall-clock on a shared machine: the median and the range are printed, never one run. The targets
(issue 21): RPO <= 60 s, traffic back <= 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


async def one_run(env, serving, writes: int, every: str) -> tuple[list[float], float]:
    from activities.stores import open_store
    from activities.traffic import HttpRouter
    from skyshift.spec.traffic import HttpRouterSpec
    from starters.cmd_failback import request_failback
    from starters.operate import start_migration
    from tests.conftest import running_workers
    from tests.helpers import approve_gates, make_plan, seed, suffix
    from workflows.state import WINDOW_GATE, FailbackInput

    tmp = Path(tempfile.mkdtemp())
    source, target = f"file://{tmp}/src", f"file://{tmp}/dst"
    seed(source, objects=2, size=20_000)
    plan = make_plan(
        suffix(), source, target,
        workloads={"datasets": [{"name": "corpus", "path": "datasets/corpus"}],
                   "router": serving.plan_workloads()["router"]},
        cutover={"stages": [{"percent": 100}]},
        decommission={"failback_window": "30d", "reverse_sync": ["outputs"], "reverse_every": every},
    )  # fmt: skip
    router = HttpRouter(HttpRouterSpec(admin_url=serving.url("router")))
    rpo: list[float] = []
    async with running_workers(env.client, plan.source, plan.target):
        handle = await start_migration(env.client, plan)
        await approve_gates(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == WINDOW_GATE,
                            timeout=600)  # fmt: skip
        dst, src = open_store(target), open_store(source)
        for n in range(writes):
            body = os.urandom(64_000)
            dst.put_bytes(f"outputs/ckpt-{n}.bin", body)
            written = time.monotonic()
            # Polled from outside, as a person checking would: the poll is the measurement.
            while not (src.exists(f"outputs/ckpt-{n}.bin") and src.read_bytes(f"outputs/ckpt-{n}.bin") == body):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            rpo.append(time.monotonic() - written)
        asked = time.monotonic()
        task = asyncio.ensure_future(request_failback(env.client, handle.id, FailbackInput(reason="bench")))
        while router.current().source != 100:  # noqa: ASYNC110 (the router read from outside is the measurement)
            await asyncio.sleep(0.02)
        rto = time.monotonic() - asked
        await task
        await handle.result()
    return rpo, rto


async def main_async(runs: int, writes: int, every: str) -> dict:
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from tests.conftest import ServingPair, temporal_cli
    from workflows.state import SEARCH_ATTRIBUTES

    os.environ.setdefault("SKYSHIFT_HOME", tempfile.mkdtemp())
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_cli(),
                                                data_converter=pydantic_data_converter,
                                                search_attributes=SEARCH_ATTRIBUTES)  # fmt: skip
    os.environ["TEMPORAL_ADDRESS"] = env.client.service_client.config.target_host
    serving = ServingPair()
    rpos, rtos = [], []
    try:
        for _ in range(runs):
            rpo, rto = await one_run(env, serving, writes, every)
            rpos += rpo
            rtos.append(rto)
    finally:
        serving.close()
        await env.shutdown()

    def spread(values: list[float]) -> dict:
        return {"median_s": round(statistics.median(values), 2), "min_s": round(min(values), 2),
                "max_s": round(max(values), 2), "n": len(values)}  # fmt: skip

    return {"reverse_every": every, "rpo": spread(rpos), "traffic_back": spread(rtos),
            "load": os.getloadavg()[0], "cores": os.cpu_count()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="migrations taken into their window and failed back")
    parser.add_argument("--writes", type=int, default=5, help="target writes timed until they are at the source")
    parser.add_argument("--every", default="10s", help="the plan's decommission.reverse_every")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.runs, args.writes, args.every))))


if __name__ == "__main__":
    main()
