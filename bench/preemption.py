"""Notice latency: from a scheduled preemption notice to the watcher activity returning it.

For each provider, skyshift's fake metadata server schedules a notice at a random phase of the
watcher's poll cycle (seeded), while `watch_preemption` runs on a real Temporal dev server with the
provider's default cadence (AWS and the node label every 5 s, Azure every 1 s, GCP a long-poll).
Two times per notice: when the watcher read it (`Notice.seen_at`) and when the activity's completion
reached the history (`ActivityTaskCompleted`), both from the moment the server made it visible.
p50/p95 carry a bootstrap 95% interval (seeded), since 20 notices pin a p95 only loosely.

    python -m bench.preemption [--notices 20] [--providers aws,gcp,azure,k8s-label] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import uuid
from pathlib import Path

import numpy as np


def _quantile_ci(
    values: list[float], q: float, rng: np.random.Generator, draws: int = 2000
) -> tuple[float, float, float]:
    data = np.asarray(values)
    boot = np.quantile(rng.choice(data, size=(draws, data.size), replace=True), q, axis=1)
    return float(np.quantile(data, q)), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


async def one_notice(client, queue: str, server, config, rng: random.Random) -> tuple[float, float]:
    from temporalio.api.enums.v1 import EventType

    from activities.preemption.watch import WatchPreemptionInput
    from tests.preemption_workflows import WatchOnceWorkflow

    server.clear()
    with server.cond:
        served_before = len(server.log)
    request = WatchPreemptionInput(environment="bench", watcher=config)
    handle = await client.start_workflow(
        WatchOnceWorkflow.run, request, id=f"bench-watch-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    # The watcher is running and has had an answer; the notice lands at a random phase of its cycle.
    await asyncio.to_thread(server.wait_for, lambda s: len(s.log) > served_before)
    phase = rng.uniform(0, config.poll_interval_s if server.provider != "gcp" else 1.0)
    effective = server.schedule_in(phase)
    result = await handle.result()
    completed = None
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.event_time.ToDatetime().timestamp()
    assert result.notice is not None and completed is not None
    return result.notice.seen_at.timestamp() - effective, completed - effective


async def main_async(notices: int, providers: list[str], seed: int) -> None:
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.preemption import WatcherConfig
    from activities.preemption.registry import open_watcher
    from activities.preemption.watch import watch_preemption
    from starters import fake_metadata
    from tests.conftest import temporal_cli
    from tests.preemption_workflows import WatchOnceWorkflow

    rng = random.Random(seed)
    boot = np.random.default_rng(seed)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), data_converter=pydantic_data_converter
    )
    rows = []
    try:
        queue = f"bench-preempt-{uuid.uuid4().hex[:6]}"
        async with Worker(env.client, task_queue=queue, workflows=[WatchOnceWorkflow], activities=[watch_preemption]):
            for provider in providers:
                server = fake_metadata.start(provider)
                try:
                    extra: dict = {}
                    if provider == "k8s-label":
                        token = Path(tempfile.mkdtemp()) / "token"
                        token.write_text(server.token)
                        extra = {"node_name": server.node, "token_file": str(token)}
                    config = WatcherConfig(provider=provider, address=server.url, **extra)
                    config = config.model_copy(update={"poll_interval_s": open_watcher(config).poll_interval_s})
                    seen, returned = [], []
                    for _ in range(notices):
                        read, done = await one_notice(env.client, queue, server, config, rng)
                        seen.append(read)
                        returned.append(done)
                    rows.append((provider, config.poll_interval_s, seen, returned))
                finally:
                    server.shutdown()
                    server.server_close()
    finally:
        await env.shutdown()
    print(f"notices per provider: {notices}, seed {seed}, nproc {os.cpu_count()}")
    print("| provider | cadence | notice → read p50 [95% CI] | p95 [95% CI] | → activity returned p50 | p95 | max |")
    print("|---|---|---|---|---|---|---|")
    for provider, interval, seen, returned in rows:
        cadence = f"long-poll (timeout {interval:g} s)" if provider == "gcp" else f"poll every {interval:g} s"
        s50, s95 = _quantile_ci(seen, 0.5, boot), _quantile_ci(seen, 0.95, boot)
        r50, r95 = _quantile_ci(returned, 0.5, boot), _quantile_ci(returned, 0.95, boot)
        print(
            f"| {provider} | {cadence} | {s50[0]:.3f} s [{s50[1]:.3f}, {s50[2]:.3f}] | "
            f"{s95[0]:.3f} s [{s95[1]:.3f}, {s95[2]:.3f}] | {r50[0]:.3f} s [{r50[1]:.3f}, {r50[2]:.3f}] | "
            f"{r95[0]:.3f} s [{r95[1]:.3f}, {r95[2]:.3f}] | {max(returned):.3f} s |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notices", type=int, default=20)
    parser.add_argument("--providers", default="aws,gcp,azure,k8s-label")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main_async(args.notices, args.providers.split(","), args.seed))


if __name__ == "__main__":
    main()
