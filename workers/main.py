"""`skyshift-worker --env NAME | --control`: serve one task queue until SIGTERM/SIGINT.

On a signal the worker stops polling, lets running activities finish (up to the grace period) and
exits 0, so a rolling deploy never strands work: Temporal hands unfinished tasks to another worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from skyshift.runtime import connect, load_stack_env
from workers.registry import CONTROL_ACTIVITIES, CONTROL_WORKFLOWS, ENVIRONMENT_ACTIVITIES
from workflows.plan import CONTROL_TASK_QUEUE, task_queue_for

log = logging.getLogger("skyshift.worker")


def build_worker(client: Client, *, env: str | None, max_activities: int = 8) -> tuple[Worker, ThreadPoolExecutor]:
    """A worker for one environment's queue, or for the control queue when env is None."""
    executor = ThreadPoolExecutor(max_workers=max_activities, thread_name_prefix="skyshift-activity")
    common = dict(
        activity_executor=executor,
        max_concurrent_activities=max_activities,
        graceful_shutdown_timeout=timedelta(seconds=30),
    )
    if env is None:
        worker = Worker(
            client, task_queue=CONTROL_TASK_QUEUE, workflows=CONTROL_WORKFLOWS, activities=CONTROL_ACTIVITIES, **common
        )
    else:
        worker = Worker(client, task_queue=task_queue_for(env), activities=ENVIRONMENT_ACTIVITIES, **common)
    return worker, executor


async def serve(env: str | None, max_activities: int) -> None:
    client = await connect()
    worker, executor = build_worker(client, env=env, max_activities=max_activities)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    queue = CONTROL_TASK_QUEUE if env is None else task_queue_for(env)
    log.info("serving %s on %s", queue, client.service_client.config.target_host)
    async with worker:
        await stop.wait()
        log.info("signal received: draining %s", queue)
    executor.shutdown(wait=True)
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skyshift-worker", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--env", help="serve the task queue skyshift.<ENV>")
    which.add_argument("--control", action="store_true", help="serve skyshift.control (workflows, analysis)")
    parser.add_argument("--max-activities", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    load_stack_env()
    asyncio.run(serve(None if args.control else args.env, args.max_activities))
    return 0


if __name__ == "__main__":
    sys.exit(main())
