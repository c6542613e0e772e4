"""The worker's local manifest cache: one SQLite file, keyed by store, key and version.

Fingerprinting an object means reading all of it; the cache remembers each object's manifest for
the exact version it was computed from (S3 ETag, GCS crc32c+generation, local inode+size+mtime+
ctime), so an unchanged dataset is never read twice by the same worker. It lives on the worker,
never in the stores: the source of a migration is someone's production data, often read-only, and
a file planted in a store can never pose as a manifest. A miss only costs a re-read in-region, so
losing the file (a new worker, a wiped disk) is harmless: the cache simply rebuilds.

Manifests are stored compactly (chunk lengths and digests packed, not JSON), so a million small
objects cost ~100 MB of disk, and writes are batched per thread-safe connection.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from pathlib import Path

from activities.stores import ObjectInfo, Store
from activities.transfer.chunking import Chunk, ChunkParams, ObjectManifest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    store TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL, size INTEGER NOT NULL,
    root BLOB NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (store, key)
) WITHOUT ROWID
"""
_HEADER = struct.Struct("<IIII")  # min, avg, max, chunk count


def cache_dir() -> Path:
    """`SKYSHIFT_CACHE_DIR`, else `$SKYSHIFT_HOME/cache`, else `~/.cache/skyshift`."""
    if os.environ.get("SKYSHIFT_CACHE_DIR"):
        return Path(os.environ["SKYSHIFT_CACHE_DIR"])
    if os.environ.get("SKYSHIFT_HOME"):
        return Path(os.environ["SKYSHIFT_HOME"]) / "cache"
    return Path.home() / ".cache" / "skyshift"


def store_identity(store: Store) -> str:
    """Two specs naming the same bytes share entries; a different endpoint is a different store."""
    return f"{store.spec.endpoint or ''}|{store.url}"


_ONE = struct.Struct("<IIIII")  # the header and the length of a one-chunk (small) object


def encode(manifest: ObjectManifest) -> bytes:
    p, chunks = manifest.params, manifest.chunks
    if len(chunks) == 1:  # a million small objects: no generators per object
        return _ONE.pack(p.min_size, p.avg_size, p.max_size, 1, chunks[0].length) + bytes.fromhex(chunks[0].digest)
    lengths = struct.pack(f"<{len(chunks)}I", *(c.length for c in chunks))
    digests = b"".join(bytes.fromhex(c.digest) for c in chunks)
    return _HEADER.pack(p.min_size, p.avg_size, p.max_size, len(chunks)) + lengths + digests


_params: dict[tuple[int, int, int], ChunkParams] = {}


def _chunk_params(low: int, avg: int, high: int) -> ChunkParams:
    """One validated ChunkParams per size class, shared by every decoded manifest."""
    params = _params.get((low, avg, high))
    if params is None:
        params = _params[(low, avg, high)] = ChunkParams(min_size=low, avg_size=avg, max_size=high)
    return params


def decode(key: str, size: int, etag: str, root: bytes, body: bytes) -> ObjectManifest:
    low, avg, high, n = _HEADER.unpack_from(body)
    lengths = struct.unpack_from(f"<{n}I", body, _HEADER.size)
    digests = memoryview(body)[_HEADER.size + 4 * n :]
    chunks, offset = [], 0
    for index, length in enumerate(lengths):
        digest = digests[32 * index : 32 * index + 32].hex()
        chunks.append(Chunk(offset=offset, length=length, digest=digest))
        offset += length
    return ObjectManifest(
        key=key, size=size, etag=etag, params=_chunk_params(low, avg, high),
        chunks=chunks, root=root.hex(),
    )  # fmt: skip


class ManifestCache:
    """Thread-safe: one connection per thread, WAL journal so readers never wait for a writer."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "manifests.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().execute(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    def get(self, store: Store, info: ObjectInfo) -> ObjectManifest | None:
        """The manifest of exactly this version of the object, if this worker computed it before."""
        if info.etag is None:
            return None
        query = "SELECT etag, size, root, body FROM manifests WHERE store = ? AND key = ?"
        row = self._connection().execute(query, (store_identity(store), info.key)).fetchone()
        if row is None or row[0] != info.etag or row[1] != info.size:
            return None
        return decode(info.key, info.size, row[0], row[2], row[3])

    def get_many(self, store: Store, infos: list[ObjectInfo]) -> dict[str, ObjectManifest]:
        """The cached manifests of exactly these versions, by key: one query per 500 keys, not one per object."""
        found: dict[str, ObjectManifest] = {}
        wanted = {info.key: info for info in infos if info.etag is not None}
        keys, identity, connection = list(wanted), store_identity(store), self._connection()
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            query = ("SELECT key, etag, size, root, body FROM manifests WHERE store = ? AND key IN "
                     f"({', '.join('?' * len(part))})")  # fmt: skip
            for key, etag, size, root, body in connection.execute(query, (identity, *part)):
                info = wanted[key]
                if etag == info.etag and size == info.size:
                    found[key] = decode(key, size, etag, root, body)
        return found

    def in_directory(self, store: Store, directory: str, min_size: int, limit: int) -> list[ObjectManifest]:
        """Manifests this worker holds of objects directly in `directory` larger than `min_size`: versions
        it wrote or read before, which may be stale (a reuse read is verified chunk by chunk, a server-side
        copy is pinned to the version's etag, so a stale one only costs the reuse)."""
        prefix = f"{directory}/" if directory else ""
        query = ("SELECT key, etag, size, root, body FROM manifests WHERE store = ? AND key >= ? AND key < ? "
                 "AND size > ? LIMIT ?")  # fmt: skip
        rows = self._connection().execute(query, (store_identity(store), prefix, prefix + "\U0010ffff", min_size,
                                                  4 * limit))  # fmt: skip
        found = [decode(key, size, etag, root, body) for key, etag, size, root, body in rows
                 if "/" not in key[len(prefix) :]]  # fmt: skip
        return found[:limit]

    def put_many(self, store: Store, manifests: list[ObjectManifest]) -> None:
        identity = store_identity(store)
        rows = [(identity, m.key, m.etag, m.size, bytes.fromhex(m.root), encode(m)) for m in manifests if m.etag]
        if rows:
            connection = self._connection()
            connection.execute("BEGIN")
            connection.executemany("INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?, ?, ?)", rows)
            connection.execute("COMMIT")

    def put(self, store: Store, manifest: ObjectManifest) -> None:
        self.put_many(store, [manifest])

    def forget(self, store: Store, key: str) -> None:
        self.forget_many(store, [key])

    def forget_many(self, store: Store, keys: list[str]) -> None:
        identity, connection = store_identity(store), self._connection()
        connection.execute("BEGIN")
        connection.executemany("DELETE FROM manifests WHERE store = ? AND key = ?", [(identity, k) for k in keys])
        connection.execute("COMMIT")


_shared: dict[Path, ManifestCache] = {}
_shared_lock = threading.Lock()


def manifest_cache() -> ManifestCache:
    """The process's cache for the current cache directory (tests point SKYSHIFT_HOME elsewhere)."""
    path = cache_dir() / "manifests.sqlite3"
    with _shared_lock:
        if path not in _shared:
            _shared[path] = ManifestCache(path)
        return _shared[path]
