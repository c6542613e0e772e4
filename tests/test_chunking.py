"""FastCDC chunking: shift resistance, streaming equals whole-buffer, and random edits sync exactly."""

from __future__ import annotations

import io
import os
import random

from fastcdc.fastcdc_cy import fastcdc_cy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities.stores import open_store
from activities.transfer.chunking import ChunkParams, MiB, chunk_stream, merkle_root, params_for_size
from tests.engine import sync

SMALL = ChunkParams(min_size=2048, avg_size=8192, max_size=32768)


def digests(data: bytes, params: ChunkParams = SMALL) -> list[str]:
    return [chunk.digest for chunk, _ in chunk_stream(io.BytesIO(data), params)]


def test_insertion_near_the_start_changes_o1_chunks():
    data = random.Random(1).randbytes(4 * MiB)
    before = digests(data)
    after = digests(data[:3000] + b"inserted bytes" + data[3000:])
    assert len(before) > 300
    assert len(set(after) - set(before)) <= 2, "only the chunk(s) around the insertion may change"


def test_deletion_and_append_keep_the_rest():
    data = random.Random(2).randbytes(2 * MiB)
    before = set(digests(data))
    assert len(set(digests(data[:100_000] + data[100_050:])) - before) <= 2
    assert len(set(digests(data + b"appended shard")) - before) <= 1


def test_streaming_cuts_exactly_where_whole_buffer_chunking_does():
    data = random.Random(3).randbytes(6 * MiB)
    params = params_for_size(len(data))
    streamed = [(c.offset, c.length) for c, _ in chunk_stream(io.BytesIO(data), params, window=params.max_size)]
    whole = [
        (c.offset, c.length) for c in fastcdc_cy(memoryview(data), params.min_size, params.avg_size, params.max_size)
    ]
    assert streamed == whole


def test_chunks_cover_the_stream_and_the_root_is_content_addressed():
    data = os.urandom(MiB)
    chunks = [c for c, _ in chunk_stream(io.BytesIO(data), SMALL)]
    assert sum(c.length for c in chunks) == len(data) and chunks[0].offset == 0
    assert merkle_root(chunks) == merkle_root([c for c, _ in chunk_stream(io.BytesIO(data), SMALL)])
    assert merkle_root(chunks) != merkle_root([c for c, _ in chunk_stream(io.BytesIO(data[:-1] + b"!"), SMALL)])


edits = st.lists(
    st.tuples(st.sampled_from(["insert", "delete", "replace", "append"]), st.integers(0, 10**9),
              st.binary(min_size=1, max_size=3000)),
    min_size=1, max_size=6,
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), edits=edits, objects=st.integers(1, 3))
def test_random_edits_then_sync_leave_the_target_byte_identical(tmp_path_factory, seed, edits, objects):
    root = tmp_path_factory.mktemp("prop")
    source, target = open_store(f"file://{root}/src"), f"file://{root}/dst"
    rng = random.Random(seed)
    files = {f"d/obj-{i}.bin": rng.randbytes(rng.randint(0, 300_000)) for i in range(objects)}
    for key, data in files.items():
        source.put_bytes(key, data)
    sync(source.url, target)
    for kind, position, blob in edits:
        key = rng.choice(sorted(files))
        data = files[key]
        at = position % (len(data) + 1)
        files[key] = {
            "insert": data[:at] + blob + data[at:],
            "delete": data[:at] + data[at + len(blob):],
            "replace": data[:at] + blob + data[at + len(blob):],
            "append": data + blob,
        }[kind]  # fmt: skip
        source.put_bytes(key, files[key])
    sync(source.url, target)
    result = open_store(target)
    assert {k: result.read_bytes(k) for k in files} == files
