"""Continuous sync vs none, on the same changing dataset: bytes per pass, the final sync, amplification.

What a plan's `sync: {every: ...}` changes (workflows/phases/continuous.py): between the POC's copy
and the final sync the source keeps changing; with continuous sync each interval's changes cross in
a pass, so the final sync (at decommission, on the day the source is released) carries one
interval's changes instead of all of them. This runs the delta engine's own activities (what each
`DatasetSyncWorkflow` child runs, `tests.engine.sync_specs`) on loopback file stores, twice over the
same seeded change sequence:

- **none**: the POC copy, then `--intervals` intervals of changes, then the final sync;
- **continuous**: the POC copy, a pass after each interval but the last, then the final sync.

Each interval rewrites an eighth of `--changed` existing objects (a partial change: only its chunks
should cross; objects up to 256 KiB are one chunk, larger ones are cut at 16-256 KiB) and adds
`--added` new objects. Bytes are what the engine reports crossing (data plus
the fingerprints sent to the target, as the migration meters egress): exact counts for this change
pattern, not samples, so they carry no sampling error; the seed makes them repeatable.

    python -m bench.continuous_sync [--objects 32] [--size 1048576] [--intervals 6] [--changed 3] [--added 1]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
from pathlib import Path

PATH = "datasets/corpus"


def changes(objects: int, size: int, intervals: int, changed: int, added: int, seed: int) -> list[dict[str, bytes]]:
    """Per interval, key → new bytes: regions rewritten in existing objects, and new objects."""
    rng = random.Random(seed)
    current = {f"{PATH}/part-{i:04d}.bin": rng.randbytes(size) for i in range(objects)}
    steps = [dict(current)]  # step 0: the dataset as the POC finds it
    for interval in range(intervals):
        step = {}
        for key in rng.sample(sorted(current), changed):
            data = bytearray(current[key])
            at = rng.randrange(0, size - size // 8)
            data[at : at + size // 8] = rng.randbytes(size // 8)
            step[key] = current[key] = bytes(data)
        for n in range(added):
            key = f"{PATH}/new-{interval:03d}-{n}.bin"
            step[key] = current[key] = rng.randbytes(size)
        steps.append(step)
    return steps


def moved(source: str, target: str) -> int:
    from tests.engine import sync_batches

    totals, _, _ = sync_batches(source, target, PATH)
    return totals.bytes_transferred + totals.metadata_bytes


def arm(root: Path, steps: list[dict[str, bytes]], continuous: bool) -> dict:
    from activities.stores import open_store

    source, target = f"file://{root}/src", f"file://{root}/dst"
    store = open_store(source)
    for key, data in steps[0].items():
        store.put_bytes(key, data)
    dataset_bytes = sum(len(d) for d in steps[0].values())
    poc, passes = moved(source, target), []
    for n, step in enumerate(steps[1:], start=1):
        for key, data in step.items():
            store.put_bytes(key, data)
        if continuous and n < len(steps) - 1:
            passes.append(moved(source, target))
    final = moved(source, target)
    total = poc + sum(passes) + final
    return {"poc": poc, "passes": passes, "final": final, "total": total, "dataset_bytes": dataset_bytes,
            "amplification": total / dataset_bytes}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--intervals", type=int, default=6)
    parser.add_argument("--changed", type=int, default=3, help="objects with a region rewritten per interval")
    parser.add_argument("--added", type=int, default=1, help="new objects per interval")
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args(argv)
    os.environ.setdefault("SKYSHIFT_CACHE_DIR", tempfile.mkdtemp(prefix="skyshift-bench-cache-"))
    steps = changes(args.objects, args.size, args.intervals, args.changed, args.added, args.seed)
    per_interval = [sum(len(d) for d in s.values()) for s in steps[1:]]
    results = {}
    for name, continuous in (("none", False), ("continuous", True)):
        with tempfile.TemporaryDirectory(prefix=f"skyshift-bench-{name}-") as root:
            results[name] = arm(Path(root), steps, continuous)
    none, cont = results["none"], results["continuous"]
    kb = 1e3
    print(f"dataset {args.objects} x {args.size / 1024:.0f} KiB = {none['dataset_bytes'] / 1e6:.2f} MB; "
          f"{args.intervals} intervals, each: {args.changed} objects with 1/8 rewritten + {args.added} new "
          f"({statistics.median(per_interval) / kb:.0f} kB of changed objects per interval, median)")  # fmt: skip
    passes = cont["passes"]
    print(f"continuous: {len(passes)} passes, bytes per pass median {statistics.median(passes) / kb:.1f} kB "
          f"(min {min(passes) / kb:.1f}, max {max(passes) / kb:.1f})")  # fmt: skip
    for name, r in results.items():
        print(f"{name:>10}: POC {r['poc'] / 1e6:.2f} MB, final sync {r['final'] / kb:.1f} kB, total moved "
              f"{r['total'] / 1e6:.2f} MB, data_transfer_amplification {r['amplification']:.3f}")  # fmt: skip
    print(f"final sync with continuous sync: {cont['final'] / none['final']:.3f}x the final sync without "
          f"(same dataset, same changes); total moved {cont['total'] / none['total']:.3f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
