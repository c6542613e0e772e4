"""`skyshift-worker --env NAME | --control`: serve one task queue until SIGTERM/SIGINT.

On a signal the worker stops polling, lets running activities finish (up to the grace period) and
exits 0, so a rolling deploy never strands work: Temporal hands unfinished tasks to another worker.

Telemetry: `--metrics-port N` serves Prometheus metrics (the Temporal SDK's worker metrics and
skyshift's own counters, `skyshift.metrics`) on :N/metrics; traces follow the standard OTEL_*
variables (`skyshift.telemetry`). `--encrypt` turns on the AES-GCM payload codec (`skyshift.codec`):
every worker and client of a migration must agree on it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from skyshift.process import exit_process
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
        # A cancellation reaches a running activity only with the answer to a heartbeat the SDK sends,
        # at most every 0.8 x its heartbeat timeout (24 s for a 30 s timeout) unless capped here: a
        # production run's move (SIGTERM on cancel) and a rollback's stop then start within ~1 s.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )
    if env is None:
        worker = Worker(
            client, task_queue=CONTROL_TASK_QUEUE, workflows=CONTROL_WORKFLOWS, activities=CONTROL_ACTIVITIES, **common
        )
    else:
        worker = Worker(client, task_queue=task_queue_for(env), activities=ENVIRONMENT_ACTIVITIES, **common)
    return worker, executor


async def serve(env: str | None, max_activities: int, metrics_port: int | None = None) -> None:
    from skyshift.telemetry import prometheus_runtime

    runtime = prometheus_runtime(metrics_port) if metrics_port is not None else None
    service = "skyshift-worker-" + (env or "control")
    client = await connect(runtime=runtime, service=service)
    worker, executor = build_worker(client, env=env, max_activities=max_activities)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    queue = CONTROL_TASK_QUEUE if env is None else task_queue_for(env)
    log.info("serving %s on %s", queue, client.service_client.config.target_host)
    if metrics_port is not None:
        log.info("metrics on :%d/metrics", metrics_port)
    async with worker:
        await stop.wait()
        log.info("signal received: draining %s", queue)
    executor.shutdown(wait=True)
    _flush_traces()
    log.info("stopped")


def _flush_traces() -> None:
    """Spans still batched in memory go out before the process ends."""
    from skyshift.telemetry import configure_tracing

    provider = configure_tracing()
    if provider is not None:
        provider.force_flush()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM; run as the program (no `argv`), end the process through `exit_process`, after
    the worker drained (the Temporal client's threads would otherwise abort a finalizing interpreter)."""
    if argv is None:
        exit_process(_main(sys.argv[1:]))
    return _main(argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skyshift-worker", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--env", help="serve the task queue skyshift.<ENV>")
    which.add_argument("--control", action="store_true", help="serve skyshift.control (workflows, analysis)")
    parser.add_argument("--max-activities", type=int, default=8, help="activities run at once (default 8)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0.0.0.0:PORT/metrics)")
    parser.add_argument("--encrypt", action="store_true", help="AES-GCM payload codec (as SKYSHIFT_ENCRYPT=1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.encrypt:
        os.environ["SKYSHIFT_ENCRYPT"] = "1"
    load_stack_env()
    try:
        asyncio.run(serve(None if args.control else args.env, args.max_activities, args.metrics_port))
    except ValueError as error:  # a codec key or an OTEL_* setting that cannot work: say which, exit 2
        from skyshift.codec import CodecConfigError
        from skyshift.telemetry import TelemetryConfigError

        if not isinstance(error, CodecConfigError | TelemetryConfigError):
            raise
        print(f"skyshift-worker: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
