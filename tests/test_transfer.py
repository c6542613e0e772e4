"""Copy, its compensation and decommission archiving, as activities against real stores."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.stores import StoreSpec, open_store
from activities.transfer.archive import ArchiveInput, archive_workload, release_source, verify_archive
from activities.transfer.copy import CopyInput, LedgerInput, copy_workload, ledger_key, remove_created
from tests.helpers import seed

pytestmark = pytest.mark.stack


def copy_input(source: str, target: str, migration: str = "m1") -> CopyInput:
    return CopyInput(migration_id=migration, workload="corpus", path="datasets/corpus", source=StoreSpec(url=source),
                     target=StoreSpec(url=target), source_env="a", target_env="b", egress_per_gb_usd=0.09)  # fmt: skip


def test_copy_verifies_meters_egress_and_skips_identical_objects(s3_bucket, gcs_bucket):
    source, target = f"s3://{s3_bucket}/ml", f"gs://{gcs_bucket}/ml"
    written = {k: v for k, v in seed(source).items() if k.startswith("datasets/")}
    env = ActivityEnvironment()
    first = env.run(copy_workload, copy_input(source, target))
    assert (first.objects_copied, first.objects_unchanged) == (len(written), 0)
    assert first.bytes_copied == sum(map(len, written.values())) and first.verified
    assert first.egress_cost_usd == pytest.approx(first.egress_bytes / 1e9 * 0.09)
    assert all(open_store(target).read_bytes(k) == v for k, v in written.items())
    again = env.run(copy_workload, copy_input(source, target))
    assert (again.objects_copied, again.objects_unchanged) == (0, len(written))


def test_compensation_removes_only_what_the_copy_created_and_is_idempotent(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    open_store(target).put_bytes("datasets/corpus/part-000.bin", b"pre-existing, different")
    env = ActivityEnvironment()
    env.run(copy_workload, copy_input(source, target))
    undo = LedgerInput(target=StoreSpec(url=target), ledger_key=ledger_key("m1", "corpus"))
    assert env.run(remove_created, undo) == 3  # part-001..003; part-000 existed before
    assert env.run(remove_created, undo) == 0
    assert [o.key for o in open_store(target).list()] == ["datasets/corpus/part-000.bin"]


def test_a_retried_copy_resumes_after_the_last_heartbeat(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    env = ActivityEnvironment()
    env.info = env.info.__class__(
        **{**env.info.__dict__, "heartbeat_details": [{"next_index": 3, "objects_copied": 3}]}
    )
    result = env.run(copy_workload, copy_input(source, target))
    assert result.objects_copied == 4 and [o.key for o in open_store(target).list("datasets")] == [
        "datasets/corpus/part-003.bin"
    ]


def test_decommission_archives_verifies_and_releases_only_unchanged_objects(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    env = ActivityEnvironment()
    env.run(copy_workload, copy_input(source, target))
    request = ArchiveInput(migration_id="m1", workload="corpus", path="datasets/corpus",
                           source=StoreSpec(url=source), target=StoreSpec(url=target))  # fmt: skip
    assert env.run(archive_workload, request).objects == 4
    assert env.run(verify_archive, request).objects_verified == 4
    open_store(source).put_bytes("datasets/corpus/part-002.bin", b"written after archiving")
    released = env.run(release_source, request)
    assert released.objects_deleted == 3 and released.kept_changed == ["datasets/corpus/part-002.bin"]
    assert [o.key for o in open_store(source).list("datasets")] == ["datasets/corpus/part-002.bin"]


def test_verify_archive_refuses_when_the_target_copy_differs(tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    env = ActivityEnvironment()
    env.run(copy_workload, copy_input(source, target))
    request = ArchiveInput(migration_id="m1", workload="corpus", path="datasets/corpus",
                           source=StoreSpec(url=source), target=StoreSpec(url=target))  # fmt: skip
    env.run(archive_workload, request)
    open_store(target).put_bytes("datasets/corpus/part-001.bin", b"damaged")
    with pytest.raises(ApplicationError, match="differ at the target"):
        env.run(verify_archive, request)
