"""Handoff of the demo's training job: time from SIGTERM to the first step on the target, bytes moved.

The real pieces, in one process as the two workers would run them (`tests.handoff`): moto's S3
server as the source cloud, the GCS emulator as the target, the demo's job (`examples/jobs/train`)
run as a subprocess, SIGTERM at step `--at`, its checkpoint put in the source's store, delta-synced
to the target by the transfer engine's activities, the job resumed there. Each trial is a fresh
pair of buckets (a first handoff: the target holds no earlier checkpoint) followed by a second
handoff of the same run back and forth, where the target already holds the previous checkpoint
(what periodic syncs give a handoff: only changed chunks should cross).

    python -m bench.handoff [--trials 3] [--steps 200] [--at 100]

The times split into: source (SIGTERM → checkpoint in the source's store, the arm's artifacts
included), sync (the delta engine), target (activity start → first step logged: code, dataset and
checkpoint fetched, interpreter and torch started). They are wall-clock times on a shared machine:
the median and the range over trials are printed, never one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid


def _servers() -> list:
    """moto's S3 server and the GCS emulator on loopback; returned so that they are stopped at the end."""
    from gcp_storage_emulator.server import create_server
    from moto.server import ThreadedMotoServer

    from starters.gcs_emulator import lift_limits
    from tests.conftest import free_port

    lift_limits()
    s3, gcs = free_port(), free_port()
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=s3, verbose=False),
               create_server("127.0.0.1", gcs, in_memory=True)]  # fmt: skip
    for server in servers:
        server.start()
    os.environ["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{s3}"
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{gcs}"
    return servers


def one_trial(steps: int, at: int) -> dict:
    from activities.jobs import JobSpec, ResumeSpec
    from activities.stores import StoreSpec
    from activities.stores.gcs import GCSStore
    from activities.stores.s3 import S3Store
    from tests.engine import sync_specs
    from tests.handoff import checkpoint_prefix, hand_off, run
    from tests.test_jobs import stage

    source = StoreSpec(url=f"s3://hb-src-{uuid.uuid4().hex[:8]}")
    target = StoreSpec(url=f"gs://hb-dst-{uuid.uuid4().hex[:8]}")
    S3Store(source).ensure_bucket()
    GCSStore(target).ensure_bucket()
    stage(source.url)
    for prefix in ("jobs/train", "datasets/corpus"):
        sync_specs(source, target, prefix)
    # The demo's job (starters/demo.py: tiny-lm, train.py) with the demo plan's resume settings.
    job = JobSpec(
        name="tiny-lm", code="jobs/train", command=["python", "train.py", "--steps", str(steps)],
        env={"OMP_NUM_THREADS": "1"}, uses=["corpus"], seed=7, resume=ResumeSpec(grace="30s", every=steps),
    )  # fmt: skip
    started = time.time()
    move = hand_off(job, source, target, at)
    before, after, sync = move.before, move.after, move.sync
    assert before.status == "checkpointed" and after is not None and after.status == "succeeded", before.detail
    first = {
        "checkpoint_step": before.checkpoint.step,
        "checkpoint_bytes": before.checkpoint.bytes,
        "bytes_moved": sync.bytes_transferred,
        "metadata_bytes": sync.metadata_bytes,
        "sigterm_to_first_step_s": after.first_step_at - before.sigterm_at,
        "target_start_to_first_step_s": after.timing.time_to_first_step_s,
        "wall_s": time.time() - started,
    }
    # The second handoff of the same run: back to the source from the target's newest checkpoint,
    # and on to the target again, which now holds the first checkpoint under the same keys.
    prefix = checkpoint_prefix(job)
    back = run(job, target, "handoff", "gcp-target", resume_from=prefix, handoff_at_step=(at + steps) // 2,
               checkpoint_prefix=prefix)  # fmt: skip
    assert back.status == "checkpointed", back.detail
    sync_specs(target, source, prefix)
    again = run(job, source, "handoff", "aws-source", resume_from=prefix, handoff_at_step=back.checkpoint.step + 10,
                checkpoint_prefix=prefix)  # fmt: skip
    assert again.status == "checkpointed", again.detail
    totals, _, _ = sync_specs(source, target, prefix)
    second = {"checkpoint_step": again.checkpoint.step, "checkpoint_bytes": again.checkpoint.bytes,
              "bytes_moved": totals.bytes_transferred, "chunks_reused": totals.chunks_reused,
              "chunks_total": totals.chunks_total}  # fmt: skip
    return {"first": first, "second": second}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s (range {min(values):.2f} to {max(values):.2f}, n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--at", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from activities.transfer import parallel

    servers = _servers()
    try:
        trials = [one_trial(args.steps, args.at) for _ in range(args.trials)]
    finally:
        parallel.shutdown()
        for server in servers:
            server.stop()  # their threads would keep the process alive
    if args.json:
        print(json.dumps(trials))
        return 0
    first = [t["first"] for t in trials]
    second = [t["second"] for t in trials]
    size = first[0]["checkpoint_bytes"]
    print(f"demo job (tiny-lm, {args.steps} steps, SIGTERM at step {args.at}), {args.trials} trials")
    steps = ", ".join(str(f["checkpoint_step"]) for f in first)
    print(f"- checkpoint: {size:,} bytes (state.pt + marker), at steps {steps}")
    print(f"- SIGTERM → first step on the target: {_spread([f['sigterm_to_first_step_s'] for f in first])}")
    print(f"  of which the target's start (fetch, interpreter, torch) → first step: "
          f"{_spread([f['target_start_to_first_step_s'] for f in first])}")  # fmt: skip
    moved = ", ".join(f"{f['bytes_moved']:,}" for f in first)
    print(f"- first handoff (target holds nothing): {moved} bytes moved "
          f"= {statistics.median(f['bytes_moved'] for f in first) / size:.3f}x the checkpoint "
          f"(+ {first[0]['metadata_bytes']:,} bytes of manifests)")  # fmt: skip
    moved = ", ".join(f"{s['bytes_moved']:,}" for s in second)
    reused = ", ".join(f"{s['chunks_reused']}/{s['chunks_total']}" for s in second)
    ratio = statistics.median(s["bytes_moved"] / s["checkpoint_bytes"] for s in second)
    print(
        f"- second handoff (target holds the previous checkpoint): {moved} bytes moved = {ratio:.3f}x the "
        f"checkpoint; chunks reused {reused}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
