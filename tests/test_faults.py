"""Faults nobody named before issue 23: a source that changes under a sync, a full disk, oversized failures.

Each test drives the engine's real activities against real stores (a local directory, moto's S3) and
asserts what an operator would see: the object named, the rest committed, a bounded failure that says
what to do, and a rerun that converges.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import MAX_FAILURE_CHARS, fail_fast_on_permanent_errors
from activities.stores import StoreError, StoreSpec, open_store
from activities.transfer.sync import ApplyBatchInput, BatchInput, apply_batch, fingerprint_batch
from tests.engine import sync

pytestmark = pytest.mark.stack
KiB, MiB = 1 << 10, 1 << 20


def _user_keys(url: str) -> list[str]:
    return sorted(o.key for o in open_store(url).list("") if not o.key.startswith(".skyshift/"))


def _fingerprint_then(source: str, target: str, between) -> tuple:
    """Fingerprint the whole source as one range, run `between()`, then apply that range."""
    env, src, dst = ActivityEnvironment(), StoreSpec(url=source), StoreSpec(url=target)
    sync_id = f"faults-{uuid.uuid4().hex[:8]}"
    scanned = env.run(fingerprint_batch, BatchInput(source=src, target=dst, sync=sync_id, batch=0))
    between()
    return env.run(apply_batch, ApplyBatchInput(source=src, target=dst, sync=sync_id, batch=0,
                                                staging_key=scanned.staging_key, ledger_stamp="0"))  # fmt: skip


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_source_object_deleted_while_its_range_applies_is_skipped_by_name(where, tmp_path, s3_bucket):
    """Before: a vanished source object raised a retryable error and the batch retried forever."""
    source = f"file://{tmp_path}/src" if where == "file" else f"s3://{s3_bucket}/src"
    target = f"file://{tmp_path}/dst"
    store = open_store(source)
    bodies = {"a.bin": os.urandom(KiB), "b-small.bin": os.urandom(KiB), "c-large.bin": os.urandom(2 * MiB),
              "d.bin": os.urandom(3 * MiB)}  # fmt: skip
    for key, body in bodies.items():
        store.put_bytes(key, body)

    def vanish() -> None:
        store.remove("b-small.bin")
        store.remove("c-large.bin")

    applied = _fingerprint_then(source, target, vanish)
    skipped = {s.key: s.reason for s in applied.skipped}
    assert set(skipped) == {"b-small.bin", "c-large.bin"}
    assert all("changed at the source" in reason for reason in skipped.values()), skipped
    assert applied.totals.objects_skipped == 2 and applied.totals.objects_changed == 2
    dst = open_store(target)
    assert _user_keys(target) == ["a.bin", "d.bin"]
    assert dst.read_bytes("a.bin") == bodies["a.bin"] and dst.read_bytes("d.bin") == bodies["d.bin"]

    again, _ = sync(source, target)  # a rerun converges: the source no longer has them, nothing is skipped
    assert again.objects_skipped == 0 and again.objects_changed == 0
    assert _user_keys(target) == ["a.bin", "d.bin"]


# -- a full disk ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (needs root: CAP_SYS_ADMIN); skipped where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here ({mounted.stderr.strip()}); run as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_file_target_stops_naming_the_target_and_the_space_missing(tmp_path):
    """Before: `[Errno 28] No space left on device` was retried forever, the target never named."""
    source = f"file://{tmp_path}/src"
    store = open_store(source)
    bodies = {f"shard-{i}.bin": os.urandom(700 * KiB) for i in range(3)}
    for key, body in bodies.items():
        store.put_bytes(key, body)
    with _small_filesystem(tmp_path / "small", "1m") as disk:
        target = f"file://{disk}/dst"
        with pytest.raises(ApplicationError) as caught:
            sync(source, target)
        error = caught.value
        assert error.non_retryable, "a full disk does not heal by retrying the same batch"
        assert target in error.message and "no space left" in error.message
        assert "missing" in error.message and "free" in error.message, error.message
        for key in _user_keys(target):  # no partial object: whatever is there is whole
            assert open_store(target).read_bytes(key) == bodies[key]
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        sync(source, target)  # with space, a rerun completes
        assert {k: open_store(target).read_bytes(k) for k in _user_keys(target)} == bodies


# -- failures bounded in size -------------------------------------------------------------------------


@pytest.mark.parametrize("permanent", [True, False])
def test_an_enormous_error_becomes_a_bounded_failure_that_keeps_its_first_cause(permanent):
    """Before: a retryable error went out as it was, of any size (the server then replaced it with
    'Failure exceeds size limit.', hiding the cause)."""

    @fail_fast_on_permanent_errors
    def noisy() -> None:
        try:
            raise ConnectionError("the first cause " + "x" * (4 * MiB))
        except ConnectionError as cause:
            raise StoreError("s3://bucket/key: cannot read " + "y" * (4 * MiB), permanent=permanent) from cause

    with pytest.raises(ApplicationError) as caught:
        ActivityEnvironment().run(noisy)
    error = caught.value
    assert len(error.message) <= MAX_FAILURE_CHARS
    assert error.message.startswith("s3://bucket/key: cannot read yyy")
    assert "the first cause xxx" in error.message, "the first cause stays readable"
    assert error.non_retryable == permanent
    assert error.__cause__ is None, "the cause travels inside the bounded message, not as a chain"
    assert sum(len(str(d)) for d in error.details) <= MAX_FAILURE_CHARS


# -- plans ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deadline", ["0s", 0, "PT0S"])
def test_a_zero_inconclusive_deadline_is_refused_naming_the_field(tmp_path, capsys, deadline):
    """Before: `inconclusive_deadline: 0s` was accepted (a pause for an operator that waits for nobody)."""
    import yaml

    from starters.cli import main

    plan = yaml.safe_load((Path(__file__).parent.parent / "examples" / "plan.yaml").read_text())
    plan.setdefault("cutover", {})["inconclusive_deadline"] = deadline
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    assert main(["plan", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cutover.inconclusive_deadline: must be at least 1 s" in err, err


# -- conditional deletes -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "s3", "gcs"])
def test_delete_spares_a_target_object_rewritten_after_the_sync_listed_it(where, tmp_path, s3_bucket, gcs_bucket):
    """Before: `sync --delete` deleted an object a user rewrote in the target after the listing (it was
    named in deletable_examples, and gone)."""
    from activities.transfer.sync import FinishInput, finish_sync

    target = {"file": f"file://{tmp_path}/dst", "s3": f"s3://{s3_bucket}/dst", "gcs": f"gs://{gcs_bucket}/dst"}[where]
    source = f"file://{tmp_path}/src"
    open_store(source).put_bytes("keep.bin", b"in both")
    dst = open_store(target)
    for key in ("keep.bin", "stale.bin", "rewritten.bin"):
        dst.put_bytes(key, b"old " + key.encode())
    env, src_spec, dst_spec = ActivityEnvironment(), StoreSpec(url=source), StoreSpec(url=target)
    sync_id = f"faults-{uuid.uuid4().hex[:8]}"
    scanned = env.run(fingerprint_batch, BatchInput(source=src_spec, target=dst_spec, sync=sync_id, batch=0))
    applied = env.run(apply_batch, ApplyBatchInput(source=src_spec, target=dst_spec, sync=sync_id, batch=0, delete=True,
                                                   staging_key=scanned.staging_key, ledger_stamp="0"))  # fmt: skip
    assert sorted(applied.deletable_examples) == ["rewritten.bin", "stale.bin"]
    dst.put_bytes("rewritten.bin", b"a user's new bytes, written after the listing")
    finished = env.run(finish_sync, FinishInput(target=dst_spec, sync=sync_id, batches=1, delete=True,
                                                deletable=applied.deletable, target_objects=applied.target_objects,
                                                max_delete_percent=None))  # fmt: skip
    assert finished.deleted == 1 and dst.info("stale.bin") is None
    assert dst.read_bytes("rewritten.bin") == b"a user's new bytes, written after the listing"
    assert finished.kept_changed == ["rewritten.bin"], "the object spared is reported by name"
