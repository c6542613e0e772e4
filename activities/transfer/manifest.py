"""Object manifests: chunks, their BLAKE3 digests and a Merkle root, computed from the bytes.

A manifest is computed by the worker that can read the object in-region and cached on that worker
(`activities.transfer.cache`) for the exact version it describes. Nothing is ever read back from a
store as a manifest: the stores hold only the user's data, so a planted file cannot steer what is
committed, and the target checks every written byte against the source worker's manifest anyway.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from activities.stores import ObjectInfo, Store, StoreError
from activities.transfer.chunking import (
    SMALL_OBJECT,
    Chunk,
    ChunkParams,
    chunk_stream,
    digest,
    merkle_root,
    params_for_size,
)


class ObjectManifest(BaseModel):
    key: str
    size: int
    etag: str | None = Field(description="Change detector of the object this manifest describes")
    params: ChunkParams
    chunks: list[Chunk]
    root: str

    @property
    def small(self) -> bool:
        """One chunk, one digest: copied whole, without chunk-level machinery."""
        return self.size <= SMALL_OBJECT


def compute_manifest(store: Store, info: ObjectInfo) -> ObjectManifest:
    """Read the object once and fingerprint it; a size that differs from the listing is an error."""
    params = params_for_size(info.size)
    if info.size <= SMALL_OBJECT:
        data = store.read_bytes(info.key)
        if len(data) != info.size:
            raise StoreError(f"{store.url}/{info.key}: read {len(data)} bytes, listed {info.size} (changed meanwhile?)")
        chunks = [Chunk.model_construct(offset=0, length=len(data), digest=digest(data))] if data else []
    else:
        with store.open_read(info.key) as stream:
            chunks = [chunk for chunk, _ in chunk_stream(stream, params, with_data=False, size_hint=info.size)]
        if sum(c.length for c in chunks) != info.size:
            raise StoreError(f"{store.url}/{info.key}: read {sum(c.length for c in chunks)} bytes, listed {info.size}")
    return ObjectManifest.model_construct(
        key=info.key, size=info.size, etag=info.etag, params=params, chunks=chunks, root=merkle_root(chunks)
    )


def load_manifest(store: Store, info: ObjectInfo) -> ObjectManifest | None:
    """This worker's cached manifest of exactly this version of the object, if it has one."""
    from activities.transfer.cache import manifest_cache

    return manifest_cache().get(store, info)


def fingerprint(store: Store, info: ObjectInfo) -> tuple[ObjectManifest, bool]:
    """The object's manifest and whether its bytes had to be read (False: served from this worker's cache)."""
    from activities.transfer.cache import manifest_cache

    cache = manifest_cache()
    cached = cache.get(store, info)
    if cached is not None:
        return cached, False
    manifest = compute_manifest(store, info)
    cache.put(store, manifest)
    return manifest, True
