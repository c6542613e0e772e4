"""`make bench`: skyshift's transfer engine against rclone and rsync, measured side by side in one run.

Everything runs here, in one process tree, against the embedded stack (moto S3, GCS emulator):
small objects (objects/s local → local, local → S3, S3 → GCS), initial syncs of large files (wall
time vs `rclone sync`), fingerprinting on one and two cores, three incremental edits the way
training pipelines make them (bytes sent vs rclone and rsync's literal data; the in-place edit with
and without server-side part copies), and 1 vs 2 target workers behind a cross-region proxy.
`--scale` adds a million objects (flat and 1,000 per directory): time and peak RSS.

The engine runs as the workflow runs it (`bench.pipeline`: a source worker process fingerprints
range N+1 while a target worker process applies ranges N-3..N), without Temporal in between; the
scale-out lines run the real workflow and worker processes. Every figure is printed next to its
peer's from the same run; the load average is printed with the figures (a shared machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

MiB, GiB = 1 << 20, 1 << 30


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def load() -> str:
    return "load {:.1f}/{:.1f}".format(*os.getloadavg()[:2])


def engine(source: str, target: str, path: str = "", **options):
    """One sync by the engine, pipelined like the workflow (see `bench.pipeline`)."""
    from activities.stores import StoreSpec
    from bench.pipeline import sync

    return sync(StoreSpec(url=source), StoreSpec(url=target), path, **options)


def rclone(env: dict, *args: str) -> int:
    """Run rclone (without AWS_CA_BUNDLE, see VERIFIED.md); return bytes it transferred."""
    clean = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
    out = subprocess.run(["rclone", *args, "--use-json-log", "-v", "--stats", "1000h", "--transfers", "4",
                          "--checkers", "8"], env=clean, capture_output=True, text=True, check=True)  # fmt: skip
    sent = 0
    for line in out.stderr.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record.get("stats"), dict):
            sent = record["stats"].get("bytes", sent)
    return sent


def rsync_literal(source: Path, mirror: Path) -> int:
    """rsync's delta algorithm between directories (forced on, with --fuzzy for renamed bases)."""
    out = subprocess.run(["rsync", "-a", "--no-whole-file", "--fuzzy", "--stats", f"{source}/", f"{mirror}/"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("Literal data:"))
    return int(line.split(":")[1].split()[0].replace(",", ""))


# -- data -----------------------------------------------------------------------------------------


def generate(root: Path, big_files: int, big_size: int, shards: int) -> None:
    rng = random.Random(7)
    for i in range(big_files):
        (root / "corpus").mkdir(parents=True, exist_ok=True)
        with open(root / "corpus" / f"packed-{i}.bin", "wb") as out:
            for _ in range(big_size // (64 * MiB)):
                out.write(rng.randbytes(64 * MiB))
    (root / "shards").mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        (root / "shards" / f"shard-{i:04d}.bin").write_bytes(rng.randbytes(32 * MiB))
    save_checkpoint(root / "checkpoints" / "model-step1000.pt", head_seed=1)


def save_checkpoint(path: Path, head_seed: int) -> None:
    import torch

    torch.manual_seed(0)  # the frozen base is identical in every fine-tune
    state = {f"base.layer{i}": torch.randn(2048, 2048) for i in range(16)}  # 256 MiB
    torch.manual_seed(head_seed)
    state["head.weight"] = torch.randn(2048, 1024)  # 8 MiB that fine-tuning changes
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())


def small_objects(root: Path, count: int, flat: bool) -> Path:
    """`count` objects of 256 B, all in one directory or 1,000 per directory."""
    for i in range(count):
        directory = root if flat else root / f"d{i // 1000:04d}"
        if i == 0 or (not flat and i % 1000 == 0):
            directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"o{i:07d}.bin", "wb") as out:
            out.write(i.to_bytes(8, "little") * 32)
    old = time.time() - 60  # listed as an untouched dataset is (not as a directory written this instant)
    for directory in [root, *([] if flat else root.iterdir())]:
        os.utime(directory, (old, old))
    return root


def edit_append(root: Path, shards: int) -> int:
    rng = random.Random(11)
    for i in range(shards, shards + 8):
        (root / "shards" / f"shard-{i:04d}.bin").write_bytes(rng.randbytes(32 * MiB))
    return 8 * 32 * MiB


def edit_in_place(root: Path, seed: int = 13) -> int:
    """1% of the bytes of each big file, as 20 scattered 0.05% rewrites."""
    rng, changed = random.Random(seed), 0
    for path in sorted((root / "corpus").iterdir()):
        size = path.stat().st_size
        span = size // 2000
        with open(path, "r+b") as f:
            for _ in range(20):
                f.seek(rng.randrange(0, size - span))
                f.write(rng.randbytes(span))
                changed += span
    return changed


def edit_finetune(root: Path) -> int:
    save_checkpoint(root / "checkpoints" / "model-step2000.pt", head_seed=2)
    return 8 * MiB


# -- measurements ---------------------------------------------------------------------------------


def fingerprint_rates(path: Path) -> tuple[float, float, float]:
    """GB/s: a raw sequential read, then fingerprinting (FastCDC + BLAKE3) on one and on two cores."""
    from activities.stores import ObjectInfo, open_store
    from activities.transfer.manifest import compute_manifest

    size = path.stat().st_size

    def raw() -> None:
        with open(path, "rb") as f:
            while f.read(8 * MiB):
                pass

    _, raw_s = timed(raw)
    store = open_store(f"file://{path.parent}")
    info = ObjectInfo(key=path.name, size=size, etag="x")
    rates = []
    for processes in ("1", "2"):
        os.environ["SKYSHIFT_FINGERPRINT_PROCESSES"] = processes
        compute_manifest(store, info)  # warm: the pool's processes start once per worker
        _, seconds = timed(lambda: compute_manifest(store, info))
        rates.append(size / seconds / 1e9)
    os.environ.pop("SKYSHIFT_FINGERPRINT_PROCESSES")
    return size / raw_s / 1e9, rates[0], rates[1]


def _hash_file(path: str) -> None:
    import blake3

    with open(path, "rb") as f:
        blake3.blake3(f.read(), max_threads=1).digest()


def machine_scaling(path: Path) -> float:
    """What two cores give here to the simplest parallel work (BLAKE3 of the file, once per process): the
    peer for the fingerprint's scaling. A shared VM's second core is not a whole core."""
    import multiprocessing

    started = time.perf_counter()
    _hash_file(str(path))
    _hash_file(str(path))
    one = time.perf_counter() - started
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_hash_file, [str(path)] * 2)  # warm: processes started, file in the page cache
        started = time.perf_counter()
        pool.map(_hash_file, [str(path)] * 2)
        two = time.perf_counter() - started
    return one / two


def fingerprint_line(lines: Report, path: Path) -> None:
    raw, one, two = fingerprint_rates(path)
    ceiling = machine_scaling(path)
    size = path.stat().st_size / MiB
    lines.append(f"fingerprint (FastCDC + BLAKE3) of a {size:.0f} MiB file: 1 core {one:.2f} GB/s, "
                 f"2 cores {two:.2f} GB/s (scaling {two / one:.2f}x; this machine's ceiling, BLAKE3 alone in 1 vs 2 "
                 f"processes: {ceiling:.2f}x); raw read {raw:.2f} GB/s | {load()}")  # fmt: skip


def chunk_size_table(root: Path) -> list[tuple[str, int]]:
    """Bytes sent for the in-place edit under several chunk sizes (local → local, same edit)."""
    from activities.transfer import chunking
    from tests.engine import sync

    rows = []
    original = chunking.LARGE
    try:
        for avg in (16 * 1024, 64 * 1024, 128 * 1024, 256 * 1024, 1 * MiB, 8 * MiB):
            chunking.LARGE = chunking.ChunkParams(min_size=avg // 4, avg_size=avg, max_size=avg * 4)
            work = Path(tempfile.mkdtemp(dir=root.parent))
            (work / "src" / "corpus").mkdir(parents=True)
            shutil.copy(root / "corpus" / "packed-0.bin", work / "src" / "corpus" / "packed-0.bin")
            sync(f"file://{work}/src", f"file://{work}/dst")
            edit_in_place(work / "src", seed=avg)  # a fresh edit: the corpus already holds edit (b)
            totals, _ = sync(f"file://{work}/src", f"file://{work}/dst")
            rows.append((f"{avg // 1024} KiB", totals.bytes_transferred))
            shutil.rmtree(work)
    finally:
        chunking.LARGE = original
    return rows


class Report(list):
    """Lines of the result table, each printed as soon as it is measured."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def small_lines(lines: Report, home: Path, env: dict, count: int, flat: bool) -> None:
    """Objects/s local → local: skyshift, rclone, rsync on the same directory tree."""
    layout = "flat" if flat else "1,000 per directory"
    source = small_objects(home / f"small-{count}-{int(flat)}", count, flat)
    run, _ = timed(lambda: engine(f"file://{source}", f"file://{home}/small-dst-{count}-{int(flat)}"))
    assert run.totals.objects_verified == count, run.totals
    _, theirs = timed(lambda: rclone(env, "copy", str(source), str(home / f"small-rclone-{count}-{int(flat)}")))
    _, rsync_s = timed(lambda: subprocess.run(["rsync", "-a", f"{source}/", f"{home}/small-rsync-{count}/"],
                                              check=True))  # fmt: skip
    rss = max(run.peak_rss.values()) / MiB
    lines.append(" | ".join([
        f"{count:>9,} x 256 B local → local ({layout}): skyshift {run.seconds:6.1f}s {count / run.seconds:7,.0f}/s",
        f"rclone {theirs:6.1f}s {count / theirs:7,.0f}/s", f"rsync {rsync_s:6.1f}s {count / rsync_s:7,.0f}/s",
        f"skyshift/rclone time {run.seconds / theirs:.2f}x", f"peak RSS {rss:.0f} MiB", load()]))  # fmt: skip
    for path in (home / f"small-dst-{count}-{int(flat)}", home / f"small-rclone-{count}-{int(flat)}",
                 home / f"small-rsync-{count}"):  # fmt: skip
        shutil.rmtree(path, ignore_errors=True)


def plain_copy(s3_bucket: str, gcs_bucket: str) -> int:
    """The floor for S3 → GCS on this stack: each object read with boto3 and written with the
    google-cloud-storage client, 8 at a time, nothing else (no verification, no records)."""
    from concurrent.futures import ThreadPoolExecutor

    from activities.stores import open_store

    s3 = open_store(f"s3://{s3_bucket}").client  # the stores' own clients: the same endpoints and credentials
    bucket = open_store(f"gs://{gcs_bucket}").bucket
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for o in page.get("Contents", [])]  # fmt: skip

    def copy(key: str) -> None:
        bucket.blob(key).upload_from_string(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(copy, keys))
    return len(keys)


def small_s3_lines(lines: Report, home: Path, env: dict, count: int) -> None:
    from activities.stores import open_store

    source = small_objects(home / f"small-s3-{count}", count, flat=False)
    for bucket in (f"s3://bench-small-{count}", f"s3://bench-rclone-small-{count}"):
        open_store(bucket).ensure_bucket()
    run = engine(f"file://{source}", f"s3://bench-small-{count}")
    _, theirs = timed(lambda: rclone(env, "copy", str(source), f"s3:bench-rclone-small-{count}"))
    lines.append(" | ".join([
        f"{count:>9,} x 256 B local → S3: skyshift {run.seconds:6.1f}s {count / run.seconds:6,.0f}/s",
        f"rclone {theirs:6.1f}s {count / theirs:6,.0f}/s", f"skyshift/rclone time {run.seconds / theirs:.2f}x",
        load()]))  # fmt: skip
    for bucket in (f"gs://bench-gcs-small-{count}", f"gs://bench-gcs-plain-{count}"):
        open_store(bucket).ensure_bucket()
    gcs = engine(f"s3://bench-small-{count}", f"gs://bench-gcs-small-{count}")
    _, plain = timed(lambda: plain_copy(f"bench-small-{count}", f"bench-gcs-plain-{count}"))
    lines.append(f"{count:>9,} x 256 B S3 → GCS: skyshift {gcs.seconds:6.1f}s {count / gcs.seconds:6,.0f}/s | plain "
                 f"clients (boto3 get + google-cloud-storage upload, 8 threads; rclone cannot reach the emulator) "
                 f"{plain:6.1f}s {count / plain:6,.0f}/s | skyshift/plain time {gcs.seconds / plain:.2f}x "
                 f"| {load()}")  # fmt: skip
    shutil.rmtree(source, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-size-mib", type=int, default=1024, help="size of each of the two big files")
    parser.add_argument("--objects", default="20000,200000", help="small-object counts, local → local")
    parser.add_argument("--s3-objects", default="20000", help="small-object counts, local → S3 and S3 → GCS")
    parser.add_argument("--scale", action="store_true", help="add 1,000,000 objects, flat and 1,000 per directory")
    parser.add_argument("--only", help="sections: small,s3,fingerprint,large,edits,workers,scale,chunks")
    parser.add_argument("--chunk-table", action="store_true", help="also the chunk-size table (six 1 GiB syncs)")
    parser.add_argument("--timeline", action="store_true", help="print each scale-out run's activities and workers")
    args = parser.parse_args()
    if not shutil.which("rclone") or not shutil.which("rsync"):
        print("rclone and rsync are needed: apt-get install -y rclone rsync", file=sys.stderr)
        return 2

    home = Path(tempfile.mkdtemp(prefix="skyshift-bench-"))
    os.environ["SKYSHIFT_HOME"] = str(home / "state")
    from skyshift.runtime import load_stack_env
    from starters import devstack

    for key in ("TEMPORAL_ADDRESS", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST"):
        os.environ.pop(key, None)
    devstack.up()
    load_stack_env()
    env = dict(os.environ)
    env.update({"RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
                "RCLONE_CONFIG_S3_ENDPOINT": env["AWS_ENDPOINT_URL_S3"], "RCLONE_CONFIG_S3_ACCESS_KEY_ID": "bench",
                "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": "bench"})  # fmt: skip
    from activities.stores import open_store

    for bucket in ("s3://bench-skyshift", "s3://bench-rclone", "s3://bench-nocopy", "s3://bench-workers"):
        open_store(bucket).ensure_bucket()
    open_store("gs://bench-gcs").ensure_bucket()
    try:
        return run(home, env, args)
    finally:
        devstack.down()
        shutil.rmtree(home, ignore_errors=True)


def run(home: Path, env: dict, args) -> int:
    sections = set(args.only.split(",")) if args.only else {"small", "s3", "large", "edits", "workers"}
    if args.scale:
        sections.add("scale")
    if args.chunk_table:
        sections.add("chunks")
    lines = Report()
    cores = len(os.sched_getaffinity(0))
    rclone_version = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.split()[1]
    rsync_version = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.split()[2]
    lines.append(f"skyshift transfer bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}: {cores} cores "
                 f"({platform.machine()}), Python {platform.python_version()}, rclone {rclone_version}, "
                 f"rsync {rsync_version}")  # fmt: skip
    lines.append("")
    if "small" in sections:
        for count in [int(c) for c in args.objects.split(",") if c]:
            small_lines(lines, home, env, count, flat=False)
        small_lines(lines, home, env, int(args.objects.split(",")[0]), flat=True)
    if "s3" in sections:
        for count in [int(c) for c in args.s3_objects.split(",") if c]:
            small_s3_lines(lines, home, env, count)
    if "scale" in sections:
        for flat in (True, False):
            small_lines(lines, home, env, 1_000_000, flat=flat)
    if "fingerprint" in sections and not sections & {"large", "edits", "chunks"}:  # alone: one big file
        generate(home / "fp", 1, args.big_size_mib * MiB, 0)
        fingerprint_line(lines, home / "fp" / "corpus" / "packed-0.bin")
    if sections & {"large", "edits", "chunks"}:
        large_lines(lines, home, env, args, sections)
    if "workers" in sections:
        from bench.scaleout import compare

        one, two = compare(home, "bench-workers")
        lines.append("")
        lines.append(f"1 vs 2 target workers (2 ranges each at once, window 4), each behind its own proxy (+50 ms a "
                     "request, a 12 MB/s link), "
                     f"{one.objects} x 1 MiB local → S3 through the workflow: 1 worker {one.seconds:.1f}s, 2 workers "
                     f"{two.seconds:.1f}s (speed-up {one.seconds / two.seconds:.2f}x); history events per run "
                     f"{max(one.history_events + two.history_events)} at most | {load()}")  # fmt: skip
        if args.timeline:
            for measured in (one, two):
                print(f"-- {measured.workers} target worker(s):", *measured.timeline, sep="\n  ")
    return 0


def large_lines(lines: Report, home: Path, env: dict, args, sections: set[str]) -> None:
    data, mirror, shards = home / "data", home / "rsync-mirror", 16
    print(f"generating {2 * args.big_size_mib} MiB of packed corpus, {shards} x 32 MiB shards, a 264 MiB checkpoint...",
          file=sys.stderr)  # fmt: skip
    generate(data, 2, args.big_size_mib * MiB, shards)
    total = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    lines.append("")
    lines.append(f"dataset: {total / GiB:.2f} GiB in {sum(1 for p in data.rglob('*') if p.is_file())} files")
    fingerprint_line(lines, data / "corpus" / "packed-0.bin")

    run = engine(f"file://{data}", "s3://bench-skyshift")
    _, theirs = timed(lambda: rclone(env, "sync", str(data), "s3:bench-rclone"))
    lines.append(f"initial local → S3, {total / GiB:.2f} GiB: skyshift {run.seconds:.1f}s, rclone {theirs:.1f}s "
                 f"(skyshift/rclone time {run.seconds / theirs:.2f}x) | {load()}")  # fmt: skip
    shard_bytes = sum(p.stat().st_size for p in (data / "shards").iterdir())
    gcs = engine("s3://bench-skyshift", "gs://bench-gcs", "shards")
    lines.append(f"initial S3 → GCS (shards, {shard_bytes / MiB:.0f} MiB): skyshift {gcs.seconds:.1f}s "
                 f"({shard_bytes / gcs.seconds / 1e6:.0f} MB/s); no peer (rclone cannot reach the emulator) "
                 f"| {load()}")  # fmt: skip
    no_copy = {"S3Store": {"part_copy": False}}
    engine(f"file://{data}", "s3://bench-nocopy", "corpus", overrides=no_copy)  # the same starting point
    subprocess.run(["rsync", "-a", f"{data}/", f"{mirror}/"], check=True)

    if "edits" in sections:
        lines.append("")
        lines.append("incremental edit                      changed      skyshift       rclone        rsync   "
                     "sky/rclone  sky/rsync")  # fmt: skip
        copies = None
        for name, edit in (("(a) 8 shards appended", lambda: edit_append(data, shards)),
                           ("(b) 1% edited in place, 2 big files", lambda: edit_in_place(data)),
                           ("(c) fine-tuned checkpoint, same base", lambda: edit_finetune(data))):  # fmt: skip
            changed = edit()
            ours = engine(f"file://{data}", "s3://bench-skyshift")
            theirs_bytes = rclone(env, "sync", str(data), "s3:bench-rclone")
            rsync_bytes = rsync_literal(data, mirror)
            sent = ours.totals.bytes_transferred
            lines.append(f"{name:<37} {changed / MiB:7.1f} MiB {sent / MiB:9.1f} MiB {theirs_bytes / MiB:9.1f} MiB "
                         f"{rsync_bytes / MiB:9.1f} MiB {sent / max(theirs_bytes, 1):9.3f} "
                         f"{sent / max(rsync_bytes, 1):9.2f}")  # fmt: skip
            if name.startswith("(b)"):
                without = engine(f"file://{data}", "s3://bench-nocopy", "corpus", overrides=no_copy)
                copies = (ours, without)
        if copies is not None:
            ours, without = copies
            lines.append(
                f"(b) with server-side part copies: {ours.seconds:.1f}s, read back through the worker "
                f"{ours.totals.bytes_read_back / MiB:.1f} MiB, copied inside S3 "
                f"{ours.totals.bytes_copied_server_side / MiB:.1f} MiB | without (same edit, corpus only): "
                f"{without.seconds:.1f}s, read back {without.totals.bytes_read_back / MiB:.1f} MiB "
                f"(read back {ours.totals.bytes_read_back / max(without.totals.bytes_read_back, 1):.3f}x) | {load()}"
            )
    if "chunks" in sections:
        lines.append("")
        lines.append(
            "chunk size (avg) for objects > 4 MiB: bytes sent for a fresh 1% edit of one big file, local → local"
        )
        for label, sent in chunk_size_table(data):
            lines.append(f"  {label:>9}: {sent / MiB:8.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
