"""The delta engine against real stores: incremental edits, compensation, archive and release."""

from __future__ import annotations

import os

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.stores import StoreSpec, open_store
from activities.transfer.archive import ArchiveInput, archive_workload, release_source, verify_archive
from activities.transfer.ledger import LedgerInput, ledger_key, remove_created
from activities.transfer.manifest import fingerprint
from tests.engine import sync
from tests.helpers import seed

pytestmark = pytest.mark.stack
MiB = 1 << 20


def user_keys(url: str, path: str = "") -> list[str]:
    return [o.key for o in open_store(url).list(path) if not o.key.startswith(".skyshift/")]


def test_initial_then_incremental_sync_sends_only_changed_chunks(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    store = open_store(source)
    big = os.urandom(40 * MiB)
    store.put_bytes("ds/big.bin", big)
    first, _ = sync(source, target, "ds")
    assert first.objects_changed == 1 and first.bytes_transferred == len(big)

    edited = big[:5000] + b"a small insertion near the start" + big[5000:]
    store.put_bytes("ds/big.bin", edited)
    store.put_bytes("ds/new-shard.bin", os.urandom(MiB))
    second, _ = sync(source, target, "ds")
    assert second.objects_changed == 2
    assert second.bytes_transferred < MiB + 2 * MiB, "the insertion must cost O(1) chunks, not the file"
    big_chunks = len(fingerprint(open_store(target), open_store(target).info("ds/big.bin"))[0].chunks)
    assert second.chunks_reused >= big_chunks - 2, "all but the chunk(s) around the insertion are reused"
    assert open_store(target).read_bytes("ds/big.bin") == edited


def test_unchanged_dataset_resyncs_reading_no_source_bytes(s3_bucket, gcs_bucket):
    source, target = f"s3://{s3_bucket}/ml", f"gs://{gcs_bucket}/ml"
    seed(source)
    sync(source, target)
    again, fingerprint_read = sync(source, target)
    assert (again.objects_changed, again.bytes_transferred, fingerprint_read) == (0, 0, 0)


def test_dry_run_moves_nothing_but_reports_what_would(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    written = seed(source)
    planned, _ = sync(source, target, dry_run=True)
    assert planned.objects_changed == len(written) and planned.bytes_transferred == sum(map(len, written.values()))
    assert user_keys(target) == []


def test_delete_only_when_asked(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    sync(source, target)
    open_store(source).remove("datasets/corpus/part-001.bin")
    kept, _ = sync(source, target)
    assert kept.objects_deleted == 0 and "datasets/corpus/part-001.bin" in user_keys(target)
    removed, _ = sync(source, target, delete=True)
    assert removed.objects_deleted == 1 and "datasets/corpus/part-001.bin" not in user_keys(target)


def test_compensation_removes_only_what_the_sync_created_and_is_idempotent(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    open_store(target).put_bytes("datasets/corpus/part-000.bin", b"pre-existing, different")
    ledger = ledger_key("m1", "corpus")
    sync(source, target, "datasets/corpus", ledger_key=ledger)
    undo = LedgerInput(target=StoreSpec(url=target), ledger_key=ledger)
    env = ActivityEnvironment()
    assert env.run(remove_created, undo) == 3  # part-001..003; part-000 existed before
    assert env.run(remove_created, undo) == 0
    assert user_keys(target) == ["datasets/corpus/part-000.bin"]


def _archive_request(source: str, target: str) -> ArchiveInput:
    return ArchiveInput(migration_id="m1", workload="corpus", path="datasets/corpus",
                        source=StoreSpec(url=source), target=StoreSpec(url=target))  # fmt: skip


def test_decommission_archives_verifies_and_releases_only_unchanged_objects(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    sync(source, target, "datasets/corpus")
    env, request = ActivityEnvironment(), _archive_request(source, target)
    assert env.run(archive_workload, request).objects == 4
    assert env.run(verify_archive, request).objects_verified == 4
    open_store(source).put_bytes("datasets/corpus/part-002.bin", b"written after archiving")
    released = env.run(release_source, request)
    assert released.objects_deleted == 3 and released.kept_changed == ["datasets/corpus/part-002.bin"]
    assert user_keys(source, "datasets") == ["datasets/corpus/part-002.bin"]


def test_verify_archive_refuses_when_the_target_copy_differs(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    sync(source, target, "datasets/corpus")
    env, request = ActivityEnvironment(), _archive_request(source, target)
    env.run(archive_workload, request)
    open_store(target).put_bytes("datasets/corpus/part-001.bin", b"damaged")
    with pytest.raises(ApplicationError, match="differ at the target"):
        env.run(verify_archive, request)


def test_a_source_key_that_would_escape_the_target_is_refused(s3_bucket, tmp_path):
    source, target = f"s3://{s3_bucket}/ml", f"file://{tmp_path}/dst"
    open_store(source).client.put_object(Bucket=s3_bucket, Key="ml/ds/../../../escape.bin", Body=b"x")
    with pytest.raises(ApplicationError, match="refused object key") as refused:
        sync(source, target, "ds")
    assert refused.value.non_retryable, "a key that escapes the destination must not be retried"
    assert not (tmp_path / "escape.bin").exists() and not any(tmp_path.rglob("escape.bin"))
