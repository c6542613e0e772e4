"""One conformance suite for every storage backend: local files, S3 (moto), GCS (emulator)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from activities.stores import InvalidKeyError, Store, StoreError, StoreSpec, open_store, safe_key

pytestmark = pytest.mark.stack


@pytest.fixture(params=["local", "s3", "gcs"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return open_store(f"file://{tmp_path}/root")
    if request.param == "s3":
        return open_store(f"s3://{request.getfixturevalue('s3_bucket')}/prefix/{uuid.uuid4().hex[:6]}")
    return open_store(f"gs://{request.getfixturevalue('gcs_bucket')}/prefix")


def test_put_info_read_and_ranged_read(store: Store):
    data = bytes(range(256)) * 1000
    info = store.put_bytes("a/b/object.bin", data)
    assert info.size == len(data)
    assert store.info("a/b/object.bin").size == len(data)
    assert store.read_bytes("a/b/object.bin") == data
    assert store.read_bytes("a/b/object.bin", 1000, 1300) == data[1000:1300]
    assert store.read_bytes("a/b/object.bin", len(data) - 10) == data[-10:]


def test_put_file_replaces_atomically_and_changes_the_etag(store: Store, tmp_path: Path):
    source = tmp_path / "upload.bin"
    source.write_bytes(b"one" * 1000)
    first = store.put_file("k.bin", source)
    source.write_bytes(b"two!" * 1000)
    second = store.put_file("k.bin", source)
    assert store.read_bytes("k.bin") == b"two!" * 1000
    assert first.etag != second.etag and second.size == 4000


def test_list_is_sorted_scoped_to_the_directory_and_relative(store: Store):
    for key in ("d/b.bin", "d/a.bin", "d/sub/c.bin", "dx/not-me.bin", "top.bin"):
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list("d")] == ["d/a.bin", "d/b.bin", "d/sub/c.bin"]
    assert [o.key for o in store.list()] == ["d/a.bin", "d/b.bin", "d/sub/c.bin", "dx/not-me.bin", "top.bin"]
    assert list(store.list("nothing-here")) == []


def test_remove_is_idempotent_and_missing_objects_are_clear_errors(store: Store):
    store.put_bytes("gone.bin", b"x")
    assert store.remove("gone.bin") is True
    assert store.remove("gone.bin") is False
    assert store.info("gone.bin") is None
    with pytest.raises(StoreError):
        store.read_bytes("never-existed.bin")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd", "a\x00b", "a\\b", "a//b", "./a"])
def test_keys_that_escape_the_root_are_refused(store: Store, key: str):
    with pytest.raises(InvalidKeyError, match="refused object key"):
        store.put_bytes(key, b"x")


def test_capabilities_are_declared_as_data():
    from activities.stores.s3 import S3Store

    assert S3Store.capabilities.max_single_copy_bytes == 5 << 30
    assert S3Store.capabilities.max_parts == 10_000 and S3Store.capabilities.min_part_bytes == 5 << 20


def test_a_part_copied_inside_the_store_is_pinned_to_the_version_named(store: Store):
    """`part_copy` where declared (S3 UploadPartCopy, a local kernel copy); None everywhere else."""
    data = bytes(range(256)) * (6 * 4096 + 10)  # just over 6 MiB
    info = store.put_bytes("src.bin", data)
    writer = store.open_multipart("dst.bin")
    copied = writer.copy_part(1, "src.bin", 0, 6 << 20, info.etag)
    if not store.capabilities.part_copy:
        assert copied is None
        writer.abort()
        return
    assert copied is not None and copied.size == 6 << 20
    assert writer.copy_part(3, "src.bin", 0, 6 << 20, "another-version") is None, "never copies other bytes"
    tail = writer.put_part(2, b"tail")
    writer.complete([copied, tail])
    assert store.read_bytes("dst.bin") == data[: 6 << 20] + b"tail"


def test_writes_made_durable_later_are_visible_at_once(store: Store):
    store.put_bytes("later.bin", b"flushed with its batch", durable=False)
    assert store.read_bytes("later.bin") == b"flushed with its batch"
    store.flush()
    assert store.info("later.bin").size == len(b"flushed with its batch")


def test_a_large_directory_lists_in_key_order_from_any_key(store: Store, monkeypatch):
    from activities.stores.dircache import listings

    monkeypatch.setattr(listings, "min_entries", 8)  # the local store keeps its sorted listing from here on
    keys = sorted([f"big/{i:03d}.bin" for i in range(24)] + ["big/010/sub.bin", "big/010.txt", "big/0100"])
    for key in keys:
        store.put_bytes(key, b"x")
    for index, after in enumerate([None, *keys]):
        assert [o.key for o in store.list("big", start_after=after)] == keys[index:], after


def test_store_urls_are_validated():
    assert safe_key("a/b.c") == "a/b.c"
    with pytest.raises(ValueError, match="must start with one of"):
        StoreSpec(url="ftp://host/x")
    with pytest.raises(ValueError, match="bucket name of at least 3"):
        StoreSpec(url="s3://ab/x")


def test_multipart_write_is_invisible_until_complete_and_resumes_by_id(store: Store):
    part = bytes(range(256)) * (5 * 4096 + 1)  # just over S3's 5 MiB part minimum
    writer = store.open_multipart("big/object.bin")
    first = writer.put_part(1, part)
    assert store.info("big/object.bin") is None, "nothing is visible before complete"
    resumed = store.open_multipart("big/object.bin", upload_id=writer.upload_id)
    second = resumed.put_part(2, b"tail")
    info = resumed.complete([first, second])
    assert info.size == len(part) + 4 and store.read_bytes("big/object.bin") == part + b"tail"
    assert [o.key for o in store.list("big")] == ["big/object.bin"], "no part is left behind"


def test_aborted_multipart_leaves_nothing(store: Store):
    writer = store.open_multipart("aborted.bin")
    writer.put_part(1, b"x" * 1000)
    writer.abort()
    assert store.info("aborted.bin") is None and [o.key for o in store.list()] == []


def test_listing_resumes_after_a_key(store: Store):
    for key in ("p/a.bin", "p/b/c.bin", "p/b/d.bin", "p/e.bin"):
        store.put_bytes(key, b"x")
    assert [o.key for o in store.list("p", start_after="p/b/c.bin")] == ["p/b/d.bin", "p/e.bin"]
    assert [o.key for o in store.list("p", start_after="p/a.bin")] == ["p/b/c.bin", "p/b/d.bin", "p/e.bin"]
    assert list(store.list("p", start_after="p/e.bin")) == []
