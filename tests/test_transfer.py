"""The delta engine against real stores: incremental edits, compensation, archive and release."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.stores import StoreSpec, open_store
from activities.transfer.archive import ArchiveInput, archive_workload, release_source, verify_archive
from activities.transfer.ledger import LedgerInput, ledger_key, remove_created
from activities.transfer.manifest import fingerprint
from tests.engine import sync, sync_batches
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


@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_compensation_restores_overwritten_objects_and_deletes_created_ones(kind, tmp_path, s3_bucket, gcs_bucket):
    source = f"file://{tmp_path}/src"
    target = {"local": f"file://{tmp_path}/dst", "s3": f"s3://{s3_bucket}/ml", "gcs": f"gs://{gcs_bucket}/ml"}[kind]
    written = seed(source)
    before = {"datasets/corpus/part-000.bin": b"the target had these bytes before the migration",
              "datasets/corpus/unrelated.bin": b"never touched"}  # fmt: skip
    for key, data in before.items():
        open_store(target).put_bytes(key, data)
    ledger = ledger_key("m1", "corpus")
    sync(source, target, "datasets/corpus", ledger_key=ledger)  # the POC copy: creates 3, overwrites part-000
    assert open_store(target).read_bytes("datasets/corpus/part-000.bin") == written["datasets/corpus/part-000.bin"]
    open_store(source).put_bytes("datasets/corpus/part-001.bin", b"rewritten at the source during cutover")
    sync(source, target, "datasets/corpus", ledger_key=ledger)  # the final sync overwrites a key the POC created

    undo = LedgerInput(target=StoreSpec(url=target), ledger_key=ledger)
    env = ActivityEnvironment()
    first = env.run(remove_created, undo)
    assert (first.deleted, first.restored, first.entries) == (3, 2, 2)
    assert env.run(remove_created, undo).entries == 0, "a retried compensation finds nothing left to undo"
    after = {key: open_store(target).read_bytes(key) for key in user_keys(target)}
    assert after == before, "rollback must leave the target byte-identical to before the migration"
    assert [o.key for o in open_store(target).metadata.list("backup")] == [], "backups are dropped once restored"


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


def test_hostile_keys_are_skipped_by_name_while_the_rest_syncs(s3_bucket, tmp_path):
    source, target = f"s3://{s3_bucket}/ml", f"file://{tmp_path}/dst"
    client = open_store(source).client
    hostile = ["ml/ds/../../../escape.bin", "ml/ds//double.bin", "ml/ds/./dot.bin", "ml/ds/" + "n" * 300 + ".bin"]
    for key in hostile:
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    good = {f"ds/good-{i}.bin": os.urandom(1000 + i) for i in range(5)}
    for key, data in good.items():
        open_store(source).put_bytes(key, data)
    totals, _, batches = sync_batches(source, target, "ds")
    skipped = {s.key: s.reason for b in batches for s in b.skipped}
    assert set(skipped) == {k.removeprefix("ml/") for k in hostile}, skipped
    assert "255" in skipped["ds/" + "n" * 300 + ".bin"], "a name too long for the filesystem says so"
    assert totals.objects_skipped == 4 and totals.objects_changed == 5
    assert {k: open_store(target).read_bytes(k) for k in good} == good
    assert not any(tmp_path.rglob("escape.bin")) and not any(tmp_path.rglob("dot.bin"))


def test_a_planted_manifest_in_the_source_is_refused_by_name_and_changes_nothing(tmp_path):
    """0.1 read manifests from `.skyshift/manifests/` in the source; a planted one made it copy other bytes."""
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    store = open_store(source)
    victim, other = os.urandom(3 * MiB), os.urandom(3 * MiB)
    store.put_bytes("ds/victim.bin", victim)
    store.put_bytes("ds/other.bin", other)
    sync(source, target)
    forged = fingerprint(open_store(target), open_store(target).info("ds/other.bin"))[0]
    planted = json.dumps({**dataclasses.asdict(forged), "key": "ds/victim.bin"}, default=str).encode()
    store.put_bytes(".skyshift/manifests/ds/victim.bin.json", planted)
    victim = victim[:100] + b"changed" + victim[107:]
    store.put_bytes("ds/victim.bin", victim)
    totals, _, batches = sync_batches(source, target)
    assert open_store(target).read_bytes("ds/victim.bin") == victim
    assert [s.key for b in batches for s in b.skipped] == [".skyshift/manifests/ds/victim.bin.json"]
    assert "reserved name" in batches[0].skipped[0].reason and totals.objects_skipped == 1


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_nothing_is_written_to_the_source_and_the_target_holds_exactly_its_keys(kind, tmp_path, s3_bucket, gcs_bucket):
    source = {"local": f"file://{tmp_path}/src", "s3": f"s3://{s3_bucket}/ml"}[kind]
    target = f"gs://{gcs_bucket}/ml"
    written = seed(source)
    open_store(source).put_bytes("datasets/corpus/large.bin", os.urandom(20 * MiB))

    def listing(url: str) -> dict[str, str | None]:
        return {o.key: o.etag for o in open_store(url).list()}

    before = listing(source)
    sync(source, target, ledger_key="m2/all")
    sync(source, target, ledger_key="m2/all")
    assert listing(source) == before, "the source is read-only to a migration"
    assert set(listing(target)) == set(written) | {"datasets/corpus/large.bin"}, "no metadata inside the target"


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_a_target_object_the_worker_remembers_but_that_is_gone_is_fetched_from_the_source(kind, tmp_path, gcs_bucket):
    """The target worker's cache knows a sibling's chunks; the sibling was deleted behind its back (by a user, or
    a store that was reset): the new object's shared runs come from the source instead, nothing fails.
    Found by `make demo` on a restarted stack: 404 on the sibling, the migration failed in its poc."""
    source, target = f"file://{tmp_path}/src", {"local": f"file://{tmp_path}/dst", "gcs": f"gs://{gcs_bucket}/ml"}[kind]
    base = os.urandom(3 * MiB)
    open_store(source).put_bytes("d/base.bin", base)
    sync(source, target)
    open_store(target).remove("d/base.bin")
    open_store(source).remove("d/base.bin")
    edited = base[:MiB] + b"fine-tuned" + base[MiB:]
    open_store(source).put_bytes("d/next.bin", edited)

    totals, _ = sync(source, target)

    assert open_store(target).read_bytes("d/next.bin") == edited
    assert totals.objects_verified == 1 and totals.bytes_transferred >= len(edited)
