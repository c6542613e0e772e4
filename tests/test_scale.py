"""The transfer engine at scale: flat directories read once, large objects chunked on every core exactly
as one pass would, reused runs copied inside the target store, small objects handed over with their
range, store capabilities steering the engine, heartbeats while listing and hashing."""

from __future__ import annotations

import dataclasses
import io
import itertools
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time

import pytest
from temporalio.testing import ActivityEnvironment

from activities.stores import StoreSpec, open_store
from activities.stores.dircache import listings
from activities.stores.s3 import S3Store
from activities.transfer import manifest as manifest_module
from activities.transfer import parallel, pool
from activities.transfer.chunking import ChunkParams, chunk_stream
from activities.transfer.ledger import LedgerEntry, Overwritten, entry_key, record
from activities.transfer.sync import (
    ApplyBatchInput,
    BatchInput,
    apply_batch,
    fingerprint_batch,
)
from bench.faultproxy import FaultProxy
from tests.engine import sync_batches, sync_specs

pytestmark = pytest.mark.stack
KiB, MiB = 1 << 10, 1 << 20
TINY = ChunkParams(min_size=2 * KiB, avg_size=8 * KiB, max_size=32 * KiB)


def age(directory: str) -> None:
    """Set a directory's mtime a minute back: a listing of it is then trusted (not racy)."""
    past = time.time_ns() - 60 * 10**9
    os.utime(directory, ns=(past, past))


# -- large objects on every core ------------------------------------------------------------------


def single_pass(data: bytes, params: ChunkParams) -> list[tuple[int, int, str]]:
    return [(c.offset, c.length, c.digest) for c, _ in chunk_stream(io.BytesIO(data), params, with_data=False)]


SHAPES = ["random", "zeros-across-segments", "periodic", "all-zeros", "segment-multiple", "no-head"]


@pytest.mark.parametrize("shape", SHAPES)
def test_chunking_in_processes_cuts_exactly_where_one_pass_cuts(shape, tmp_path, monkeypatch):
    rng = random.Random(shape)
    data = {
        "random": rng.randbytes(2 * MiB + 12345),
        "zeros-across-segments": rng.randbytes(300 * KiB) + bytes(400 * KiB) + rng.randbytes(700 * KiB),
        "periodic": rng.randbytes(3000) * 500,
        "all-zeros": bytes(1 * MiB + 7),
        "segment-multiple": rng.randbytes(16 * 64 * KiB),
        "no-head": rng.randbytes(MiB),  # segments return no head: every stitch reads on from the store
    }[shape]
    if shape == "no-head":
        monkeypatch.setattr(parallel, "HEAD_CHUNKS", 0)
    store = open_store(f"file://{tmp_path}")
    store.put_bytes("obj.bin", data)
    monkeypatch.setattr(parallel, "SEGMENT", 64 * KiB)
    chunks, reread = parallel.chunk_object(store, store.info("obj.bin"), TINY, workers=2)
    assert [(c.offset, c.length, c.digest) for c in chunks] == single_pass(data, TINY)
    if shape == "random":
        assert reread == 0, "a segment's head is enough to fall in step on ordinary data"
    if shape == "no-head":
        assert 0 < reread < len(data) // 4, "the stitch reads only until it falls in step"


def test_a_large_object_fingerprinted_on_two_cores_has_the_single_pass_manifest(tmp_path, monkeypatch):
    store = open_store(f"file://{tmp_path}")
    data = random.Random(5).randbytes(24 * MiB)
    store.put_bytes("big.bin", data)
    info = store.info("big.bin")
    monkeypatch.setenv("SKYSHIFT_FINGERPRINT_PROCESSES", "1")
    one = manifest_module.compute_manifest(store, info)
    monkeypatch.setenv("SKYSHIFT_FINGERPRINT_PROCESSES", "2")
    monkeypatch.setattr(parallel, "PARALLEL_FROM", 4 * MiB)
    monkeypatch.setattr(parallel, "SEGMENT", 4 * MiB)
    seen: list[int] = []
    two = manifest_module.compute_manifest(store, info, progress=seen.append)
    assert parallel.worth_it(info.size) and sum(seen) == info.size, "progress is reported segment by segment"
    assert (two.root, [c.digest for c in two.chunks]) == (one.root, [c.digest for c in one.chunks])


# -- flat directories -------------------------------------------------------------------------------


def test_a_flat_directory_is_read_once_for_all_its_ranges(tmp_path, monkeypatch):
    monkeypatch.setattr(listings, "min_entries", 64)
    source, target = open_store(f"file://{tmp_path}/src"), f"file://{tmp_path}/dst"
    keys = [f"flat/{i:05d}.bin" for i in range(600)]
    for key in keys:
        source.put_bytes(key, key.encode())
    age(f"{tmp_path}/src/flat")
    listings.scans.clear()
    totals, _, batches = sync_batches(source.url, target, batch=50)
    assert len(batches) == 12 and totals.objects_changed == 600
    assert listings.scans[f"{tmp_path}/src/flat"] == 1, "the source directory is read once, not once per range"
    assert listings.scans[f"{tmp_path}/dst/flat"] <= 3, "the target's listing follows this process's own writes"
    assert [o.key for o in open_store(target).list()] == keys


def test_a_write_during_a_scan_waits_for_it_so_the_listing_is_kept(tmp_path, monkeypatch):
    """A target directory filled by several ranges at once: this process's writes that land while one of its
    threads reads the directory used to make that scan useless (thrown away), so every range read the
    whole directory again — 450 objects/s at 580,000 files. The write now waits for the scan, then
    updates the listing it produced."""
    from activities.stores import dircache

    monkeypatch.setattr(listings, "min_entries", 8)
    store = open_store(f"file://{tmp_path}")
    for i in range(20):
        store.put_bytes(f"d/{i:03d}", b"x")
    age(f"{tmp_path}/d")
    directory = f"{tmp_path}/d"
    listings.forget(directory)
    written = threading.Event()
    real_scan = dircache.scan

    def scan_while_another_thread_writes(path: str) -> list[str]:
        names = real_scan(path)
        time.sleep(0.02)  # the write's timestamp falls in a later clock tick than the scan's start
        threading.Thread(target=lambda: (store.put_bytes("d/new", b"y"), written.set())).start()
        written.wait(0.5)  # done at once when nothing makes the write wait; half a second when it waits
        return names

    monkeypatch.setattr(dircache, "scan", scan_while_another_thread_writes)
    listings.scans.clear()
    assert len(list(store.list("d"))) in (20, 21)
    assert written.wait(30)
    monkeypatch.setattr(dircache, "scan", real_scan)
    assert [o.key for o in store.list("d")][-1] == "d/new"
    assert listings.scans[directory] == 1, "the listing taken during the write is kept and follows it"


def test_a_directory_this_process_is_filling_is_read_once_while_it_changes(tmp_path, monkeypatch):
    """Scanned within a clock tick of a change, a listing is not trusted — unless this process is the writer:
    ranges listing a target directory between its own writes each re-read it otherwise."""
    monkeypatch.setattr(listings, "min_entries", 8)
    store = open_store(f"file://{tmp_path}")
    for i in range(20):
        store.put_bytes(f"d/{i:03d}", b"x")  # just now: any scan of d is within the racy window
    listings.forget(f"{tmp_path}/d")
    listings.scans.clear()
    assert len(list(store.list("d"))) == len(list(store.list("d", start_after="d/005"))) + 6 == 20
    assert listings.scans[f"{tmp_path}/d"] == 1


def test_a_file_another_process_adds_to_a_large_directory_is_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(listings, "min_entries", 8)
    store = open_store(f"file://{tmp_path}")
    for i in range(20):
        store.put_bytes(f"d/{i:03d}", b"x")
    age(f"{tmp_path}/d")
    assert len(list(store.list("d"))) == 20
    scans = listings.scans[f"{tmp_path}/d"]
    assert len(list(store.list("d", start_after="d/010"))) == 9 and listings.scans[f"{tmp_path}/d"] == scans
    subprocess.run([sys.executable, "-c", f"open('{tmp_path}/d/015b', 'wb').write(b'y')"], check=True)
    assert "d/015b" in [o.key for o in store.list("d", start_after="d/010")]
    store.remove("d/000")
    store.put_bytes("d/100", b"z")
    assert [o.key for o in store.list("d")][:2] == ["d/001", "d/002"] and store.info("d/100") is not None
    assert [o.key for o in store.list("d")][-1] == "d/100"


# -- server-side copies and capabilities ----------------------------------------------------------


@pytest.mark.parametrize("part_copy", [True, False], ids=["part-copy", "no-part-copy"])
def test_unchanged_runs_are_copied_inside_the_target_store(part_copy, tmp_path, s3_bucket, s3_endpoint,
                                                           monkeypatch):  # fmt: skip
    """S3 UploadPartCopy: a small edit of a large object reads back only the part around the edit."""
    if not part_copy:
        monkeypatch.setattr(S3Store, "capabilities", S3Store.capabilities.model_copy(update={"part_copy": False}))
    source = open_store(f"file://{tmp_path}/src")
    data = random.Random(9).randbytes(48 * MiB)
    source.put_bytes("ds/big.bin", data)
    proxy = FaultProxy(s3_endpoint)  # counts the bytes the target worker reads back from the target
    try:
        target = StoreSpec(url=f"s3://{s3_bucket}/ml-{part_copy}", endpoint=proxy.url)
        sync_specs(source.spec, target)
        edited = data[: 30 * MiB] + b"an edit in place" + data[30 * MiB + 16 :]
        source.put_bytes("ds/big.bin", edited)
        before = proxy.counters.bytes_served
        totals, _, _ = sync_specs(source.spec, target)
        read_back = proxy.counters.bytes_served - before
    finally:
        proxy.close()
    assert open_store(f"s3://{s3_bucket}/ml-{part_copy}").read_bytes("ds/big.bin") == edited
    assert totals.objects_verified == 1 and totals.bytes_transferred < MiB
    if part_copy:
        assert totals.bytes_copied_server_side >= 38 * MiB and read_back <= 10 * MiB, read_back
    else:
        assert totals.bytes_copied_server_side == 0 and read_back >= 46 * MiB, read_back


def test_a_run_whose_version_changed_is_streamed_not_copied(tmp_path):
    """Copies are pinned to the version the index describes: a changed object is never copied as if it were."""
    target = open_store(f"file://{tmp_path}/dst")
    data = os.urandom(3 * MiB)
    info = target.put_bytes("a.bin", data)
    writer = target.open_multipart("b.bin")
    assert writer.copy_part(1, "a.bin", MiB, 2 * MiB, info.etag).size == MiB
    target.put_bytes("a.bin", os.urandom(3 * MiB))
    assert writer.copy_part(2, "a.bin", 0, MiB, info.etag) is None, "a stale version is refused"
    writer.complete([p for p in writer.uploaded_parts()])
    assert target.read_bytes("b.bin") == data[MiB : 2 * MiB]


def test_the_part_size_is_the_target_stores(tmp_path, s3_bucket, s3_endpoint, monkeypatch):
    source = open_store(f"file://{tmp_path}/src")
    source.put_bytes("ds/big.bin", os.urandom(48 * MiB))
    puts = {}
    for part_mib in (8, 16):
        capabilities = S3Store.capabilities.model_copy(update={"part_bytes": part_mib * MiB})
        monkeypatch.setattr(S3Store, "capabilities", capabilities)
        proxy = FaultProxy(s3_endpoint)
        try:
            sync_specs(source.spec, StoreSpec(url=f"s3://{s3_bucket}/p{part_mib}", endpoint=proxy.url))
        finally:
            proxy.close()
        puts[part_mib] = proxy.counters.methods["PUT"]
    assert puts[8] - puts[16] == 6 - 3, puts


# -- small objects ----------------------------------------------------------------------------------


def test_small_objects_handed_over_with_their_range_are_read_from_the_source_once(tmp_path, s3_bucket, s3_endpoint,
                                                                                  monkeypatch):  # fmt: skip
    files = {f"ds/{i:04d}.txt": os.urandom(100 + i) for i in range(60)}
    for key, body in files.items():
        open_store(f"s3://{s3_bucket}/small").put_bytes(key, body)
    total = sum(map(len, files.values()))
    served = {}
    for inline in (0, 1 << 20):
        proxy = FaultProxy(s3_endpoint)
        try:
            source = StoreSpec(url=f"s3://{s3_bucket}/small", endpoint=proxy.url)
            monkeypatch.setenv("SKYSHIFT_CACHE_DIR", str(tmp_path / f"cache-{inline}"))  # a fresh source worker
            totals, read, _ = sync_specs(source, StoreSpec(url=f"file://{tmp_path}/dst-{inline}"), inline_bytes=inline,
                                       batch=25)  # fmt: skip
        finally:
            proxy.close()
        served[inline] = proxy.counters.object_bytes_served
        target = open_store(f"file://{tmp_path}/dst-{inline}")
        assert {k: target.read_bytes(k) for k in files} == files
        assert totals.bytes_transferred == total and read == total and totals.objects_verified == 60
    assert served == {0: 2 * total, 1 << 20: total}, "handed over: read once, to fingerprint"


def test_a_range_handed_over_is_only_counted_once_when_its_batch_is_retried(tmp_path):
    source, target = StoreSpec(url=f"file://{tmp_path}/src"), StoreSpec(url=f"file://{tmp_path}/dst")
    for i in range(10):
        open_store(source).put_bytes(f"k{i}", b"x" * 100)
    env = ActivityEnvironment()
    scanned = env.run(fingerprint_batch, BatchInput(source=source, target=target, sync="s", batch=0,
                                                    inline_bytes=1 << 20))  # fmt: skip
    assert scanned.inlined_bytes == 1000
    request = ApplyBatchInput(source=source, target=target, sync="s", batch=0, staging_key=scanned.staging_key)
    beats: list = []
    env.on_heartbeat = lambda *details: beats.append(details[-1])
    first = env.run(apply_batch, request)
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, heartbeat_details=[beats[-1]])  # as Temporal hands a retry
    again = retry.run(apply_batch, request)
    assert first.totals.bytes_transferred == 1000 and again.totals.bytes_transferred == 1000


# -- heartbeats --------------------------------------------------------------------------------------


def test_listing_and_hashing_heartbeat_as_they_go(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "BEAT_S", 0.01)
    monkeypatch.setenv("SKYSHIFT_FINGERPRINT_PROCESSES", "1")  # one pass: progress window by window
    source = open_store(f"file://{tmp_path}/src")
    for i in range(2000):
        source.put_bytes(f"a/{i:04d}", b"x", durable=False)
    size = 80 * MiB  # more than one 64 MiB window
    source.put_bytes("b/large.bin", os.urandom(size))
    beats: list[dict] = []
    sync_specs(source.spec, StoreSpec(url=f"file://{tmp_path}/dst"), batch=3000, heartbeats=beats)
    listed = [b["listed"] for b in beats if "listed" in b and b["bytes_hashed"] == 0]
    hashed = {b["bytes_hashed"] for b in beats if "bytes_hashed" in b}
    assert any(0 < n < 2001 for n in listed), "the listing heartbeats before it ends"
    assert any(2000 < n < 2000 + size for n in hashed), "a large object heartbeats while it is hashed"


# -- the ledger --------------------------------------------------------------------------------------


def test_a_preserved_object_is_never_recorded_as_created(tmp_path):
    """A retry that (through a stale listing) takes an object an earlier attempt preserved for new must
    not turn its undo into a delete."""
    target = open_store(f"file://{tmp_path}/dst")
    record(target, "m/w", "0001", LedgerEntry(overwritten=[Overwritten(key="a", backup="backup/a")]))
    record(target, "m/w", "0001", LedgerEntry(created=["a", "b"]))
    entry = LedgerEntry.model_validate_json(target.metadata.read_bytes(entry_key("m/w", "0001")))
    assert entry.created == ["b"] and [o.key for o in entry.overwritten] == ["a"]


@pytest.mark.parametrize("edited", [[5, 200, 201, 399], [390], [0], [], list(range(0, 400, 7))])
def test_a_part_plan_covers_the_object_with_parts_the_store_accepts(edited):
    """Copied runs of reused chunks and streamed parts between them: contiguous, none below S3's 5 MiB
    minimum but the last, copies taken from where the index says the chunks are."""
    from activities.stores.base import part_size_for
    from activities.transfer.chunking import Chunk, ObjectManifest, params_for_size
    from activities.transfer.delta import ChunkIndex, Location, plan_parts

    chunks = [Chunk(offset=i * 128 * KiB, length=128 * KiB, digest=f"{i:064x}") for i in range(400)]
    size = 400 * 128 * KiB
    manifest = ObjectManifest(key="ds/big.bin", size=size, etag="new", params=params_for_size(size), chunks=chunks,
                              root="r")  # fmt: skip
    index = ChunkIndex()
    for i, chunk in enumerate(chunks):
        if i not in edited:
            index.where[chunk.digest] = Location("ds/big.bin", chunk.offset + 64 * KiB, "old-etag")
    capabilities = S3Store.capabilities
    plan = plan_parts(manifest, index, capabilities, part_size_for(size, capabilities))
    assert plan[0].start == 0 and plan[-1].end == size
    assert all(a.end == b.start for a, b in itertools.pairwise(plan))
    assert all(p.end - p.start >= capabilities.min_part_bytes for p in plan[:-1])
    for part in plan:
        if part.copy is not None:
            assert part.copy.etag == "old-etag" and part.copy.start == part.chunks[0].offset + 64 * KiB
            assert part.copy.end - part.copy.start == part.end - part.start == sum(c.length for c in part.chunks)
            assert not {chunks.index(c) for c in part.chunks} & set(edited)
    copied = sum(p.end - p.start for p in plan if p.copy is not None)
    assert copied >= size - (len(edited) + 1) * 16 * MiB or len(edited) > 40
    no_copy = capabilities.model_copy(update={"part_copy": False})
    assert all(p.copy is None for p in plan_parts(manifest, index, no_copy, part_size_for(size, no_copy)))


def _child_that_fingerprints_then_exits() -> None:
    from activities.transfer import parallel

    pool = parallel._executor(2)
    assert pool.submit(len, b"abc").result() == 3  # the pool's processes are running
    parallel.shutdown()


def test_a_worker_process_that_used_the_fingerprint_pool_exits():
    """A multiprocessing child joins its own children as it exits: the pool must be stopped and waited for,
    or the child waits forever for idle pool processes (a bench worker was seen 15 minutes after its last task)."""
    child = multiprocessing.get_context("spawn").Process(target=_child_that_fingerprints_then_exits)
    child.start()
    child.join(timeout=120)  # a guard against hanging the suite, not a measurement
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
