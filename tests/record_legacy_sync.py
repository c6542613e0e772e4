"""Record a DatasetSyncWorkflow history written by skyshift 0.1's own workers, for the replay tests.

`DatasetSyncWorkflow._run_v1` keeps syncs started by 0.1 replaying on today's code (patch SYNC_V2);
only a history whose commands 0.1 emitted can prove it. This script makes one for real: it extracts
0.1 from git (`tests.baseline`), starts a Temporal dev server on free loopback ports with a throwaway
database, runs 0.1's control worker and a worker per environment as subprocesses, and starts the
sync the way 0.1's migration started its per-dataset child (same id shape, input and queue) from
0.1's own client code. The dataset is a few `file://` objects, one of them 6 MiB with an older
version already at the target, so it is chunked and delta-applied; `batch_objects=2` makes it
several ranges and `max_history_events=20` makes it continue as new once. It writes each run's
history with `temporal workflow show -o json`:

    tests/histories/sync_v1_continue_as_new@<id>.json   first run: ranges, then continue-as-new
    tests/histories/sync_v1@<id>.json                   last run: the final range, completed

Run from the repository root: `.venv/bin/python -m tests.record_legacy_sync [--out DIR]`. It lives
in tests/ beside the histories it writes and the upgrade test that shares its baseline. Histories
are never re-recorded: it refuses to write where a 0.1 sync history already is (use `--out` to try
it elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.baseline import extract_baseline
from tests.conftest import free_port, temporal_cli

HISTORIES = Path(__file__).resolve().parent / "histories"
SCENARIOS = ("sync_v1_continue_as_new", "sync_v1")
SOURCE_ENV, TARGET_ENV = "legacy-src", "legacy-dst"
MiB = 1 << 20

#: Runs on 0.1's tree (PYTHONPATH): the child sync 0.1's `MigrationWorkflow._copy` started, with
#: small batches and history bound so that a few objects exercise the range loop and continue-as-new.
START_ON_0_1 = """
import asyncio, json, sys
from activities.stores import StoreSpec
from activities.transfer.ledger import ledger_key
from skyshift.runtime import connect
from workflows.plan import CONTROL_TASK_QUEUE, task_queue_for
from workflows.sync import DatasetSyncWorkflow, SyncInput

async def main(migration_id, source_url, target_url, source_env, target_env):
    client = await connect()
    handle = await client.start_workflow(
        DatasetSyncWorkflow.run,
        SyncInput(source=StoreSpec(url=source_url), target=StoreSpec(url=target_url),
                  source_queue=task_queue_for(source_env), target_queue=task_queue_for(target_env),
                  path="datasets/corpus", egress_per_gb_usd=0.09, ledger_key=ledger_key(migration_id, "corpus"),
                  batch_objects=2, max_history_events=20),
        id=f"{migration_id}-poc-sync-corpus",
        task_queue=CONTROL_TASK_QUEUE,
        static_summary=f"sync corpus: {source_env} -> {target_env}",
    )
    result = await asyncio.wait_for(handle.result(), timeout=300)
    print(json.dumps({"workflow_id": handle.id, "run_id": handle.first_execution_run_id,
                      "result": result.model_dump(mode="json")}))

asyncio.run(main(*sys.argv[1:]))
"""


def seed(source: Path, target: Path) -> None:
    """Five small shards and a 6 MiB shard at the source; an older 6 MiB shard and one small one at the target."""
    rng = random.Random(17)  # the same bytes every time: the history's totals do not depend on the run
    corpus, copied = source / "datasets" / "corpus", target / "datasets" / "corpus"
    corpus.mkdir(parents=True)
    copied.mkdir(parents=True)
    for n in range(5):
        (corpus / f"shard-{n:04d}.jsonl").write_bytes(rng.randbytes(4096 + n * 1000))
    large = bytearray(rng.randbytes(6 * MiB))
    (copied / "shard-0005.bin").write_bytes(large)
    large[1 * MiB : 1 * MiB] = rng.randbytes(2048)  # an insertion near the start: a few chunks change
    (corpus / "shard-0005.bin").write_bytes(large)
    (copied / "shard-0000.jsonl").write_bytes((corpus / "shard-0000.jsonl").read_bytes())


def wait_until_serving(cli: str, address: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    health = [cli, "operator", "cluster", "health", "--address", address]
    while subprocess.run(health, capture_output=True).returncode != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"record_legacy_sync: the Temporal dev server at {address} did not come up")
        time.sleep(0.2)


def show(cli: str, address: str, workflow_id: str, run_id: str) -> dict:
    command = [cli, "workflow", "show", "--address", address, "--workflow-id", workflow_id, "--run-id", run_id]
    return json.loads(subprocess.run([*command, "--output", "json"], check=True, capture_output=True).stdout)


def runs(cli: str, address: str, workflow_id: str, first_run_id: str) -> list[dict]:
    """Every run's history, first to last, following continue-as-new to the run that completed."""
    histories = [show(cli, address, workflow_id, first_run_id)]
    while continued := histories[-1]["events"][-1].get("workflowExecutionContinuedAsNewEventAttributes"):
        histories.append(show(cli, address, workflow_id, continued["newExecutionRunId"]))
    return histories


def check(history: dict, last: bool) -> None:
    """What makes it a 0.1 sync history: its type, no patch marker, and how the run ended."""
    events = history["events"]
    name = events[0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]
    ended = events[-1]["eventType"]
    expected = "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED" if last else "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
    if name != "DatasetSyncWorkflow":
        raise SystemExit(f"record_legacy_sync: the history records a {name}, not a DatasetSyncWorkflow")
    if any("markerRecordedEventAttributes" in e for e in events):
        raise SystemExit("record_legacy_sync: the history holds a patch marker, which 0.1 never wrote")
    if ended != expected:
        raise SystemExit(f"record_legacy_sync: the run ended with {ended}, not {expected}")


def record(out: Path, work: Path) -> list[Path]:
    old = extract_baseline(work / "baseline")
    source, target = work / "source", work / "target"
    seed(source, target)
    cli, port = temporal_cli(), free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen([cli, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
                               "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                               "--db-filename", str(work / "temporal.db"), "--log-level", "error"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(old), "TEMPORAL_ADDRESS": address, "SKYSHIFT_HOME": str(work / "home")}
    logs = work / "workers.log"
    workers: list[subprocess.Popen] = []
    try:
        wait_until_serving(cli, address, server)
        with logs.open("w") as log:
            for role in (["--control"], ["--env", SOURCE_ENV], ["--env", TARGET_ENV]):
                workers.append(subprocess.Popen([sys.executable, "-m", "workers.main", *role], cwd=old, env=env,
                                                stdout=log, stderr=log))  # fmt: skip
            started = subprocess.run([sys.executable, "-c", START_ON_0_1, f"legacy-{uuid.uuid4().hex[:6]}",
                                      source.as_uri(), target.as_uri(), SOURCE_ENV, TARGET_ENV],
                                     cwd=old, env=env, capture_output=True, text=True, timeout=360)  # fmt: skip
        if started.returncode != 0:
            raise SystemExit(f"record_legacy_sync: 0.1's sync failed:\n{started.stderr}\n{logs.read_text()[-4000:]}")
        outcome = json.loads(started.stdout)
        workflow_id = outcome["workflow_id"]
        histories = runs(cli, address, workflow_id, outcome["run_id"])
        if len(histories) != len(SCENARIOS):
            raise SystemExit(f"record_legacy_sync: {len(histories)} runs of {workflow_id}, not {len(SCENARIOS)}")
        for n, history in enumerate(histories):
            check(history, last=n == len(histories) - 1)
        written = []
        for scenario, history in zip(SCENARIOS, histories, strict=True):
            path = out / f"{scenario}@{workflow_id}.json"
            path.write_text(json.dumps(history, indent=2) + "\n")
            written.append(path)
        totals = outcome["result"]["totals"]
        print(f"0.1 synced {totals['objects_total']} objects in {outcome['result']['batches']} ranges over "
              f"{outcome['result']['runs']} runs, {totals['chunks_reused']} chunks reused, "
              f"{totals['bytes_transferred']} bytes sent", file=sys.stderr)  # fmt: skip
        return written
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
        server.terminate()
        server.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="record_legacy_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HISTORIES, help="where to write the histories")
    args = parser.parse_args(argv)
    existing = [p.name for s in SCENARIOS for p in args.out.glob(f"{s}@*.json")]
    if existing:
        print(f"record_legacy_sync: {args.out} already holds {', '.join(existing)}; histories are never "
              f"re-recorded (pass --out DIR to record elsewhere)", file=sys.stderr)  # fmt: skip
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="legacy-sync-") as work:
        for path in record(args.out, Path(work)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
