"""`make bench`: skyshift's delta engine against rclone and rsync on the same generated data.

Everything runs here, in one process tree, against the embedded stack (moto S3, GCS emulator):
initial syncs (wall time vs `rclone sync`), three incremental edits the way training pipelines
make them (bytes sent vs rclone and vs rsync's literal data), fingerprint throughput vs a raw
sequential read, the chunk-size choice, and peak RSS of a 100,000-object sync.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB, GiB = 1 << 20, 1 << 30


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def engine_sync(source: str, target: str, path: str = ""):
    from tests.engine import sync

    return sync(source, target, path)


def rclone(env: dict, *args: str) -> int:
    """Run rclone (without AWS_CA_BUNDLE, see VERIFIED.md); return bytes it transferred."""
    clean = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
    out = subprocess.run(["rclone", *args, "--use-json-log", "-v", "--stats", "1000h", "--transfers", "4"],
                         env=clean, capture_output=True, text=True, check=True)  # fmt: skip
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


def fingerprint_throughput(path: Path) -> tuple[float, float]:
    from activities.stores import ObjectInfo, open_store
    from activities.transfer.manifest import compute_manifest

    size = path.stat().st_size

    def raw() -> None:
        with open(path, "rb") as f:
            while f.read(8 * MiB):
                pass

    _, raw_s = timed(raw)
    store = open_store(f"file://{path.parent}")
    _, fp_s = timed(lambda: compute_manifest(store, ObjectInfo(key=path.name, size=size, etag="x")))
    return size / raw_s / 1e9, size / fp_s / 1e9


def chunk_size_table(root: Path) -> list[tuple[str, int]]:
    """Bytes sent for the in-place edit under several chunk sizes (local → local, same edit)."""
    from activities.transfer import chunking

    rows = []
    original = chunking.LARGE
    try:
        for avg in (16 * 1024, 64 * 1024, 128 * 1024, 256 * 1024, 1 * MiB, 8 * MiB):
            chunking.LARGE = chunking.ChunkParams(min_size=avg // 4, avg_size=avg, max_size=avg * 4)
            work = Path(tempfile.mkdtemp(dir=root.parent))
            (work / "src" / "corpus").mkdir(parents=True)
            shutil.copy(root / "corpus" / "packed-0.bin", work / "src" / "corpus" / "packed-0.bin")
            engine_sync(f"file://{work}/src", f"file://{work}/dst")
            edit_in_place(work / "src", seed=avg)  # a fresh edit: the corpus already holds edit (b)
            totals, _ = engine_sync(f"file://{work}/src", f"file://{work}/dst")
            rows.append((f"{avg // 1024} KiB", totals.bytes_transferred))
            shutil.rmtree(work)
    finally:
        chunking.LARGE = original
    return rows


def many_objects_rss(root: Path, count: int) -> tuple[float, float]:
    source = root / "many"
    for i in range(count):
        d = source / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"o{i:06d}.bin").write_bytes(i.to_bytes(8, "little") * 32)
    code = (
        "import resource, sys, time; sys.path.insert(0, '.'); from tests.engine import sync; t = time.time(); "
        f"sync('file://{source}', 'file://{root}/many-dst'); "
        "print(time.time() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, rss_kib = out.stdout.split()
    return float(seconds), int(rss_kib) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-size-mib", type=int, default=1024, help="size of each of the two big files")
    parser.add_argument("--objects", type=int, default=100_000, help="objects in the RSS run (0 skips it)")
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

    for bucket in ("s3://bench-skyshift", "s3://bench-rclone"):
        open_store(bucket).ensure_bucket()
    open_store("gs://bench-gcs").ensure_bucket()
    try:
        return run(home, env, args)
    finally:
        devstack.down()
        shutil.rmtree(home, ignore_errors=True)


class Report(list):
    """Lines of the result table, each printed as soon as it is measured."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def run(home: Path, env: dict, args) -> int:
    data, mirror, shards = home / "data", home / "rsync-mirror", 16
    print(f"generating {2 * args.big_size_mib} MiB of packed corpus, {shards} x 32 MiB shards, a 264 MiB checkpoint...",
          file=sys.stderr)  # fmt: skip
    generate(data, 2, args.big_size_mib * MiB, shards)
    total = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    lines = Report()
    lines.append(f"dataset: {total / GiB:.2f} GiB in {sum(1 for p in data.rglob('*') if p.is_file())} files")
    lines.append("")

    raw, fp = fingerprint_throughput(data / "corpus" / "packed-0.bin")
    lines.append(f"fingerprint (FastCDC + BLAKE3, one core): {fp:.2f} GB/s; raw sequential read {raw:.2f} GB/s "
                 f"(ratio {fp / raw:.2f})")  # fmt: skip

    (_, _), ours = timed(lambda: engine_sync(f"file://{data}", "s3://bench-skyshift"))
    theirs_bytes, theirs = timed(lambda: rclone(env, "sync", str(data), "s3:bench-rclone"))
    lines.append(
        f"initial local → S3:  skyshift {ours:.1f}s, rclone {theirs:.1f}s (skyshift/rclone {ours / theirs:.2f}x)"
    )
    # The GCS emulator composes in Python memory (GBs for 1 GiB objects): measure on the 32 MiB shards.
    shard_bytes = sum(p.stat().st_size for p in (data / "shards").iterdir())
    (_, _), s3_gcs = timed(lambda: engine_sync("s3://bench-skyshift", "gs://bench-gcs", "shards"))
    lines.append(f"initial S3 → GCS (shards, {shard_bytes / MiB:.0f} MiB): skyshift {s3_gcs:.1f}s "
                 f"({shard_bytes / s3_gcs / 1e6:.0f} MB/s); no peer (rclone cannot reach the emulator)")  # fmt: skip
    subprocess.run(["rsync", "-a", f"{data}/", f"{mirror}/"], check=True)

    lines.append("")
    lines.append("incremental edit                      changed      skyshift       rclone        rsync   "
              "sky/rclone  sky/rsync")  # fmt: skip
    for name, edit in (("(a) 8 shards appended", lambda: edit_append(data, shards)),
                       ("(b) 1% edited in place, 2 big files", lambda: edit_in_place(data)),
                       ("(c) fine-tuned checkpoint, same base", lambda: edit_finetune(data))):  # fmt: skip
        changed = edit()
        ours_totals, _ = engine_sync(f"file://{data}", "s3://bench-skyshift")
        ours_bytes = ours_totals.bytes_transferred
        theirs_bytes = rclone(env, "sync", str(data), "s3:bench-rclone")
        rsync_bytes = rsync_literal(data, mirror)
        lines.append(f"{name:<37} {changed / MiB:7.1f} MiB {ours_bytes / MiB:9.1f} MiB {theirs_bytes / MiB:9.1f} MiB "
                     f"{rsync_bytes / MiB:9.1f} MiB {ours_bytes / max(theirs_bytes, 1):9.3f} "
                     f"{ours_bytes / max(rsync_bytes, 1):9.2f}")  # fmt: skip

    lines.append("")
    lines.append("chunk size (avg) for objects > 4 MiB: bytes sent for a fresh 1% edit of one big file, local → local")
    for label, sent in chunk_size_table(data):
        lines.append(f"  {label:>9}: {sent / MiB:8.1f} MiB")

    if args.objects:
        seconds, rss = many_objects_rss(home, args.objects)
        lines.append(f"\n{args.objects:,} objects local → local: {seconds:.0f}s, peak RSS {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
