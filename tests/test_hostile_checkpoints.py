"""Hostile checkpoints (issue 23): `checkpoint inspect` refuses them in bounded memory and time, by name.

Before: a zip whose data.pkl declares 200 bytes but inflates to 1 GiB was refused only after inflating it
all (2.3 GiB RSS); a small file holding a pickle of millions of Nones, and a ~1 KB pickle of 48 nested
shared dicts ("billion laughs"), ran out of memory; a symlink in a checkpoint directory made `inspect`
report the outside file's tensors as the checkpoint's.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from activities.checkpoints.torch_format import PICKLE_LIMIT
from activities.checkpoints.unpickle import MAX_PICKLE_OPS, MAX_WALK

MiB = 1 << 20


def inspect(url: str) -> tuple[subprocess.CompletedProcess, int]:
    """`skyshift checkpoint inspect URL --json` as a process; its result and its peak RSS in bytes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    run = subprocess.run([sys.executable, "-m", "starters.cli", "checkpoint", "inspect", url, "--json"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return run, max(before, after) * 1024  # ru_maxrss is KiB on Linux: the largest child so far


def _zip_with_data_pkl(path: Path, body_chunks, declared: int) -> None:
    """A torch-style zip `archive/data.pkl`, deflated from `body_chunks`, whose headers declare `declared`
    bytes (the zipfile module cannot write a lie, so the records are packed here)."""
    name = b"archive/data.pkl"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc, data = 0, bytearray()
    for chunk in body_chunks:
        crc = zlib.crc32(chunk, crc)
        data += compressor.compress(chunk)
    data += compressor.flush()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), declared, len(name), 0)
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), declared, len(name),
                          0, 0, 0, 0, 0, 0)  # fmt: skip
    offset = len(local) + len(name) + len(data)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), offset, 0)
    path.write_bytes(local + name + bytes(data) + central + name + end)


def _baseline_rss(tmp_path: Path) -> int:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(4)}, good)
    run, rss = inspect(f"file://{good}")
    assert run.returncode == 0, run.stderr
    return rss


def test_a_data_pkl_that_inflates_far_past_its_declared_size_is_refused_in_bounded_memory(tmp_path):
    baseline = _baseline_rss(tmp_path)
    bomb = tmp_path / "bomb.pt"
    zeros = bytes(16 * MiB)
    _zip_with_data_pkl(bomb, (zeros for _ in range(64)), declared=200)  # 1 GiB inflated, 200 bytes declared
    assert bomb.stat().st_size < 4 * MiB
    run, rss = inspect(f"file://{bomb}")
    assert run.returncode == 2, run.stderr[-2000:]
    assert "bomb.pt" in run.stderr and "data.pkl" in run.stderr, run.stderr[-2000:]
    assert rss < baseline + 2 * PICKLE_LIMIT, f"peak RSS {rss / MiB:.0f} MiB (baseline {baseline / MiB:.0f} MiB)"


def _torch_zip(path: Path, pickled: bytes) -> None:
    """A zip with an honest header around a hostile pickle."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")


def test_a_pickle_of_millions_of_nones_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "nones.pt"
    _torch_zip(path, pickle.dumps([None] * (MAX_PICKLE_OPS + 10), protocol=2))
    assert path.stat().st_size < 1 * MiB
    run, _ = inspect(f"file://{path}")
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"{MAX_PICKLE_OPS:,}" in run.stderr and "nones.pt" in run.stderr, run.stderr[-2000:]


def test_a_billion_laughs_pickle_of_shared_dicts_is_refused_naming_the_limit(tmp_path):
    laugh: dict = {"lol": None}
    for _ in range(48):
        laugh = {"a": laugh, "b": laugh}  # pickled once each (memo), 2**48 entries when walked
    path = tmp_path / "laughs.pt"
    _torch_zip(path, pickle.dumps(laugh, protocol=2))
    run, _ = inspect(f"file://{path}")
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"{MAX_WALK:,}" in run.stderr and "laughs.pt" in run.stderr, run.stderr[-2000:]


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_symlink_out_of_the_checkpoint_is_never_followed_and_named(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    torch.save({"secret.weight": torch.ones(3)}, outside / "model.pt")
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    torch.save({"own.weight": torch.zeros(2)}, checkpoint / "optimizer.pt")
    if kind == "file":
        os.symlink(outside / "model.pt", checkpoint / "model.pt")
        link = "model.pt"
    else:
        os.symlink(outside, checkpoint / "shards")
        link = "shards"
    run, _ = inspect(f"file://{checkpoint}")
    assert run.returncode == 2, run.stdout[-2000:]
    assert link in run.stderr and "outside" in run.stderr, run.stderr[-2000:]
    assert "secret.weight" not in run.stdout + run.stderr
    assert json.loads(run.stdout)["exit_code"] == 2


def test_compare_never_follows_a_link_out_of_either_checkpoint(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    torch.save({"w": torch.ones(3)}, outside / "model.pt")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    torch.save({"w": torch.ones(3)}, a / "model.pt")
    os.symlink(outside / "model.pt", b / "model.pt")
    run = subprocess.run([sys.executable, "-m", "starters.cli", "checkpoint", "compare", f"file://{a}", f"file://{b}"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2 and "model.pt is a symbolic link" in run.stderr, run.stderr[-2000:]
