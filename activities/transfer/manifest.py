"""Object manifests: chunks, their BLAKE3 digests and a Merkle root, cached beside the data.

A manifest lives at `.skyshift/manifests/<key>.json` in the same store and records the etag (S3
ETag, GCS crc32c+generation, local mtime+size) it was computed for; while that is unchanged the
object is never read again to be fingerprinted.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from activities.stores import ObjectInfo, Store, join_key
from activities.transfer.chunking import Chunk, ChunkParams, chunk_stream, merkle_root, params_for_size

MANIFEST_PREFIX = ".skyshift/manifests"


class ObjectManifest(BaseModel):
    key: str
    size: int
    etag: str | None = Field(description="Change detector of the object this manifest describes")
    params: ChunkParams
    chunks: list[Chunk]
    root: str


def manifest_key(key: str) -> str:
    return join_key(MANIFEST_PREFIX, f"{key}.json")


def load_manifest(store: Store, info: ObjectInfo) -> ObjectManifest | None:
    """The cached manifest, if it still describes this version of the object."""
    key = manifest_key(info.key)
    if not store.exists(key):
        return None
    manifest = ObjectManifest.model_validate_json(store.read_bytes(key))
    if manifest.size != info.size or manifest.etag != info.etag or info.etag is None:
        return None
    return manifest


def save_manifest(store: Store, manifest: ObjectManifest) -> None:
    store.put_bytes(manifest_key(manifest.key), manifest.model_dump_json().encode())


def compute_manifest(store: Store, info: ObjectInfo) -> ObjectManifest:
    params = params_for_size(info.size)
    with store.open_read(info.key) as stream:
        chunks = [chunk for chunk, _ in chunk_stream(stream, params, with_data=False, size_hint=info.size)]
    return ObjectManifest(
        key=info.key, size=info.size, etag=info.etag, params=params, chunks=chunks, root=merkle_root(chunks)
    )


def remove_with_manifest(store: Store, key: str) -> bool:
    """Delete an object and its cached manifest; False when the object was already gone."""
    removed = store.remove(key)
    store.remove(manifest_key(key))
    return removed


def fingerprint(store: Store, info: ObjectInfo) -> tuple[ObjectManifest, bool]:
    """The object's manifest and whether its bytes had to be read (False: served from cache)."""
    cached = load_manifest(store, info)
    if cached is not None:
        return cached, False
    manifest = compute_manifest(store, info)
    save_manifest(store, manifest)
    return manifest, True
