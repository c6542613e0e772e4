"""Rollback latency: a target regresses mid-stage; how long until the router sends it 0%?

Runs the real pieces on the embedded stack: workers, two torch endpoints, the weighted router,
steady load, and MigrationWorkflow with a 5 s monitor interval. Each run injects +60% latency on
the target at a random moment in a stage and measures breach → failing verdict (the workflow's
audit time) and failing verdict → router at 0% target (polled every 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path


async def one_run(client, index: int, interval_s: int) -> tuple[float, float]:
    from activities.stores import open_store
    from activities.traffic import HttpRouter
    from skyshift.spec.traffic import HttpRouterSpec
    from starters.devstack import free_port
    from starters.load import LoadGenerator
    from starters.operate import approve, get_status, start_migration
    from workers import endpoint, router
    from workers.main import build_worker
    from workflows.plan import parse_plan

    ports = {name: free_port() for name in ("source", "target", "router")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    servers = [
        endpoint.serve(side, "127.0.0.1", ports[side], endpoint.tiny_model(), 8.0) for side in ("source", "target")
    ]
    servers.append(router.serve("127.0.0.1", ports["router"], url["source"], url["target"]))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    root = Path(tempfile.mkdtemp())
    open_store(f"file://{root}/src").put_bytes("data/a.bin", os.urandom(50_000))
    tag = f"rl{index}-{os.getpid()}"

    def env(name: str, storage: str) -> dict:
        compute = {"gpu_type": "H100-80GB", "gpu_count": 1, "price_per_gpu_hour": 2.0}
        return {"name": name, "provider": "x", "region": "r", "storage": {"url": storage}, "compute": compute,
                "egress_per_gb_usd": 0.09}  # fmt: skip

    stages = [{"percent": 40, "duration": "30m"}, {"percent": 100}]
    plan = parse_plan({
        "name": tag, "source": f"{tag}-a", "target": f"{tag}-b",
        "environments": [env(f"{tag}-a", f"file://{root}/src"), env(f"{tag}-b", f"file://{root}/dst")],
        "workloads": {"datasets": [{"name": "d", "path": "data"}],
                      "endpoints": [{"name": "chat", "source_url": url["source"], "target_url": url["target"]}],
                      "router": {"kind": "http", "admin_url": url["router"]}},
        "thresholds": {"min_samples": 50},
        "cutover": {"monitor_interval": f"{interval_s}s", "stages": stages},
        "bench": {"trials": 1, "matrix_size": 128}, "parallel_run": {"steps": 5, "sample_bytes": 40000},
        "egress_budget_usd": 10, "soak_period": "1s",
    })  # fmt: skip
    built = [
        build_worker(client, env=None),
        build_worker(client, env=plan.source),
        build_worker(client, env=plan.target),
    ]
    load = LoadGenerator(url["router"], rate=150, max_seconds=300).start()
    for worker, _ in built:
        await worker.__aenter__()
    try:
        handle = await start_migration(client, plan)
        while True:
            state = await get_status(client, handle.id)
            if state.pending_gate:
                await approve(client, handle.id, state.pending_gate.stage, "bench", "")
            if state.traffic_percent == 40 and len(state.verdicts) >= 2:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(random.uniform(0, interval_s))
        import json
        import urllib.request

        request = urllib.request.Request(url["target"] + "/-/faults", data=json.dumps({"latency_factor": 1.6}).encode(),
                                         method="PUT")  # fmt: skip
        await asyncio.to_thread(lambda: urllib.request.urlopen(request).close())
        breach = time.time()
        routed = HttpRouter(HttpRouterSpec(admin_url=url["router"]))
        while True:
            if (await asyncio.to_thread(routed.current)).target == 0:
                break
            await asyncio.sleep(0.02)
        zero = time.time()
        final = await handle.result()
        verdict_at = next(e.at for e in final.audit if e.action == "rollback_requested").timestamp()
        assert final.outcome == "rolled_back", final.outcome_reason
        return verdict_at - breach, zero - verdict_at
    finally:
        load.stop()
        for worker, executor in built:
            await worker.__aexit__(None, None, None)
            executor.shutdown(wait=False)
        for server in servers:
            server.shutdown()
            server.server_close()


async def main_async(runs: int, interval_s: int) -> None:
    from skyshift.runtime import connect

    client = await connect()
    detect, act = [], []
    for index in range(runs):
        to_verdict, to_zero = await one_run(client, index, interval_s)
        detect.append(to_verdict)
        act.append(to_zero)
        print(f"run {index + 1}: breach → failing verdict {to_verdict:5.2f}s, verdict → 0% target {to_zero:5.2f}s, "
              f"total {to_verdict + to_zero:5.2f}s", flush=True)  # fmt: skip
    total = [a + b for a, b in zip(detect, act, strict=True)]
    print(f"\nmonitor interval {interval_s}s, {runs} runs ({datetime.now():%Y-%m-%d})")
    for name, values in (("breach → verdict", detect), ("verdict → 0% target", act), ("breach → 0% target", total)):
        print(f"  {name:<20} median {statistics.median(values):5.2f}s  max {max(values):5.2f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--interval", type=int, default=5, help="monitor interval, seconds")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="skyshift-rollback-")
    os.environ["SKYSHIFT_HOME"] = home
    for key in ("TEMPORAL_ADDRESS", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST"):
        os.environ.pop(key, None)
    from skyshift.runtime import load_stack_env
    from starters import devstack

    devstack.up()
    load_stack_env()
    try:
        asyncio.run(main_async(args.runs, args.interval))
    finally:
        devstack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
