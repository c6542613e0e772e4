"""1 vs N target workers on one sync, each behind its own cross-region link.

The real thing: `DatasetSyncWorkflow` on the Temporal server, a control worker, one source worker,
and N target worker processes (`python -m workers.main --env`), all on this machine. Each target
worker reaches S3 through its own proxy (`bench.faultproxy` in its own process): ~50 ms added to
every request (a cross-region round trip) and one shared link of `link_mb_s` for all of that
worker's connections (one VM's network). The workflow keeps `window` ranges in flight and each
target worker takes `slots` of them at once, so the queue's workers split them; the same dataset
goes to a fresh prefix for each N.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from activities.stores import StoreSpec


@dataclass
class Measured:
    workers: int
    seconds: float
    objects: int
    history_events: list[int]
    timeline: list[str] = field(default_factory=list)


def _start(command: list[str], env: dict[str, str], log: Path, pipe: bool = False) -> subprocess.Popen:
    with open(log, "ab") as errors:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE if pipe else subprocess.DEVNULL,
                                stderr=errors, text=True)  # fmt: skip


async def run_once(source: str, bucket: str, workers: int, *, latency_ms: float, link_mb_s: float, window: int,
                   batch_objects: int, slots: int, logs: Path) -> Measured:  # fmt: skip
    from skyshift.runtime import connect
    from workflows.plan import CONTROL_TASK_QUEUE, task_queue_for
    from workflows.sync import DatasetSyncWorkflow, SyncInput

    upstream = os.environ["AWS_ENDPOINT_URL_S3"]
    run = uuid.uuid4().hex[:8]
    env_src, env_dst = f"bench-src-{run}", f"bench-dst-{run}"
    processes: list[subprocess.Popen] = []
    base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    worker_logs = [logs / "control.log", logs / "source.log", *[logs / f"target-{i}.log" for i in range(workers)]]
    marks = {path: path.read_text().count("serving") if path.exists() else 0 for path in worker_logs}
    try:
        worker = [sys.executable, "-m", "workers.main"]
        processes.append(_start([*worker, "--control"], base, logs / "control.log"))
        processes.append(_start([*worker, "--env", env_src], base, logs / "source.log"))
        for index in range(workers):
            command = [sys.executable, "-m", "bench.faultproxy", upstream, "--latency-ms", str(latency_ms),
                       "--link-mb-per-s", str(link_mb_s)]  # fmt: skip
            proxy = _start(command, base, logs / f"proxy-{index}.log", pipe=True)
            processes.append(proxy)
            assert proxy.stdout is not None
            url = proxy.stdout.readline().strip()
            env = {**base, "AWS_ENDPOINT_URL_S3": url, "SKYSHIFT_CACHE_DIR": str(logs / f"cache-{run}-{index}")}
            processes.append(_start([*worker, "--env", env_dst, "--max-activities", str(slots)], env,
                                    logs / f"target-{index}.log"))  # fmt: skip
        await _serving(worker_logs, marks)
        client = await connect()
        request = SyncInput(source=StoreSpec(url=source), target=StoreSpec(url=f"s3://{bucket}/n{workers}-{run}"),
                            source_queue=task_queue_for(env_src), target_queue=task_queue_for(env_dst),
                            window=window, batch_objects=batch_objects)  # fmt: skip
        started = time.perf_counter()
        handle = await client.start_workflow(DatasetSyncWorkflow.run, request, id=f"bench-scaleout-{run}",
                                             task_queue=CONTROL_TASK_QUEUE)  # fmt: skip
        result = await handle.result()
        seconds = time.perf_counter() - started
        events = []
        async for execution in client.list_workflows(f'WorkflowId="{handle.id}"'):
            history = await client.get_workflow_handle(handle.id, run_id=execution.run_id).fetch_history()
            events.append(len(history.events))
        timeline = await _timeline(client, handle.id)
        return Measured(workers=workers, seconds=seconds, objects=result.totals.objects_changed, history_events=events,
                        timeline=timeline)  # fmt: skip
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()


async def _timeline(client, workflow_id: str) -> list[str]:
    """Each activity of the (last) run: which worker ran it, when it was scheduled, started and done."""
    rows, lines, first = {}, [], None
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        when = event.event_time.ToDatetime().timestamp()
        first = first or when
        if event.HasField("activity_task_scheduled_event_attributes"):
            rows[event.event_id] = [event.activity_task_scheduled_event_attributes.activity_type.name, when]
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            rows[started.scheduled_event_id] += [started.identity, when]
        elif event.HasField("activity_task_completed_event_attributes"):
            name, scheduled, worker, started = rows[event.activity_task_completed_event_attributes.scheduled_event_id]
            lines.append(f"{name:18} {worker:12} scheduled {scheduled - first:6.1f}s started {started - first:6.1f}s "
                         f"done {when - first:6.1f}s")  # fmt: skip
    return lines


async def _serving(logs: list[Path], marks: dict[Path, int], timeout: float = 120) -> None:
    """Wait until every worker logged that it polls its queue (each run adds one "serving" line)."""
    deadline = time.monotonic() + timeout
    while not all(path.exists() and path.read_text().count("serving") > marks[path] for path in logs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers did not start; see {logs[0].parent}")
        await asyncio.sleep(0.2)


def make_dataset(root: Path, objects: int, size: int) -> None:
    for index in range(objects):
        path = root / f"shard-{index:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def compare(home: Path, bucket: str, *, objects: int = 192, size: int = 1 << 20, latency_ms: float = 50.0,
            link_mb_s: float = 12.0, window: int = 4, batch_objects: int = 12,
            slots: int = 2) -> list[Measured]:  # fmt: skip
    """The same dataset synced with 1 and then 2 target workers, each taking `slots` ranges at once
    (`skyshift-worker --max-activities`): a worker with room for the whole window would take all of it."""
    data = home / "scaleout"
    make_dataset(data, objects, size)
    logs = home / "scaleout-logs"
    logs.mkdir(exist_ok=True)
    return [asyncio.run(run_once(f"file://{data}", bucket, n, latency_ms=latency_ms, link_mb_s=link_mb_s,
                                 window=window, batch_objects=batch_objects, slots=slots, logs=logs))
            for n in (1, 2)]  # fmt: skip
