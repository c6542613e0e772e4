"""Files a job needs and leaves: its code (verified by BLAKE3 root), its datasets as local paths, its artifacts.

The code root is computed the same way wherever it is computed: BLAKE3 over the sorted
`(key relative to the prefix, size, BLAKE3 of the bytes)` of every object under the prefix, so the
source's recorded root and the root of what a target worker fetched are comparable. Artifacts
(metric series, checkpoints, logs) go to a store and travel through history as references.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import blake3
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import ObjectInfo, Store, StoreSpec, join_key, open_store, safe_key
from activities.transfer.layout import user_objects
from activities.transfer.manifest import compute_manifest, load_manifest

_BLOCK = 1 << 20


class ArtifactRef(BaseModel):
    """Where an artifact lies and what its bytes hash to: what history carries instead of the bytes."""

    store: StoreSpec
    key: str
    size: int
    blake3: str


class CodeRoot(BaseModel):
    root: str = Field(description="BLAKE3 over (relative key, size, BLAKE3) of every file, in key order")
    files: int
    bytes: int


class CodeRootInput(BaseModel):
    store: StoreSpec
    prefix: str


def _hash_stream(stream, sink=None, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    hasher, size = blake3.blake3(), 0
    while block := stream.read(_BLOCK):
        hasher.update(block)
        size += len(block)
        if sink is not None:
            sink.write(block)
        if progress is not None and size % (64 * _BLOCK) < len(block):
            progress(size)  # every 64 MiB: a large object must not outlast the heartbeat timeout
    return hasher.hexdigest(), size


def _code_objects(store: Store, prefix: str) -> list[ObjectInfo]:
    objects = list(user_objects(store, prefix))
    if not objects:
        raise ApplicationError(
            f"{store.url}/{prefix}: no code there; sync the job's code to this environment first",
            type="JobCodeMissing",
            non_retryable=True,
        )
    return objects


def _root(entries: list[tuple[str, int, str]]) -> str:
    hasher = blake3.blake3()
    for key, size, digest in sorted(entries):
        hasher.update(f"{key}\0{size}\0{digest}\n".encode())
    return hasher.hexdigest()


def code_root(store: Store, prefix: str) -> CodeRoot:
    """The root of the code under `prefix`, reading every object once (code is small)."""
    entries = []
    for info in _code_objects(store, prefix):
        with store.open_read(info.key) as stream:
            digest, size = _hash_stream(stream)
        entries.append((info.key[len(prefix) :].lstrip("/"), size, digest))
    return CodeRoot(root=_root(entries), files=len(entries), bytes=sum(e[1] for e in entries))


@activity.defn
@fail_fast_on_permanent_errors
def record_code_root(request: CodeRootInput) -> CodeRoot:
    """Run on the source's worker when the job's code is synced: the root every arm must match."""
    return code_root(open_store(request.store), request.prefix)


def fetch_code(store: Store, prefix: str, destination: Path, expected_root: str | None) -> CodeRoot:
    """Download the code under `prefix` into `destination`; refuse it unless its root is the expected one."""
    entries = []
    for info in _code_objects(store, prefix):
        relative = safe_key(info.key[len(prefix) :].lstrip("/"))
        path = destination / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with store.open_read(info.key) as stream, open(path, "wb") as out:
            digest, size = _hash_stream(stream, out)
        if size != info.size:
            raise ApplicationError(f"{store.url}/{info.key}: read {size} bytes, listed {info.size}")
        entries.append((relative, size, digest))
    found = CodeRoot(root=_root(entries), files=len(entries), bytes=sum(e[1] for e in entries))
    if expected_root is not None and found.root != expected_root:
        raise ApplicationError(
            f"{store.url}/{prefix}: code root {found.root[:16]} ({found.files} files) is not the source's "
            f"{expected_root[:16]}: the code differs from what the source ran; sync it again",
            type="JobCodeMismatch",
            non_retryable=True,
        )
    return found


# -- datasets ----------------------------------------------------------------------------------


def data_variable(name: str) -> str:
    return "SKYSHIFT_DATA_" + name.upper().replace("-", "_")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One download per cache directory at a time (arms of one worker may run side by side)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".skyshift-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def dataset_path(store: Store, path: str, cache_root: Path, on_object: Callable[[str], None] | None = None) -> Path:
    """A local directory holding the dataset at `path` in `store`.

    A local store's directory is used as it is. An object store's prefix is downloaded into a
    per-worker cache, re-fetched only for objects whose etag or size changed. Each downloaded object
    is checked against its listed size and, where this worker holds a manifest of that version (it
    synced or fingerprinted it), against its BLAKE3 Merkle root; a mismatch never enters the cache.
    """
    if store.spec.url.startswith("file://"):
        local = Path(urlparse(store.spec.url).path) / safe_key(path)
        if not local.is_dir():
            raise ApplicationError(f"{store.url}/{path}: no such dataset directory", non_retryable=True)
        return local
    directory = cache_root / blake3.blake3(store.spec.url.encode()).hexdigest()[:16] / safe_key(path)
    index_path = directory.parent / f".{directory.name}.skyshift-index.json"
    with _locked(directory):
        index: dict[str, dict] = json.loads(index_path.read_text()) if index_path.exists() else {}
        listed = list(user_objects(store, path))
        if not listed:
            raise ApplicationError(f"{store.url}/{path}: the dataset is empty or missing", non_retryable=True)
        for info in listed:
            relative = safe_key(info.key[len(path) :].lstrip("/"))
            local = directory / relative
            if index.get(relative) == {"etag": info.etag, "size": info.size} and local.is_file():
                continue
            if on_object is not None:
                on_object(info.key)  # long downloads heartbeat
            download_verified(store, info, local, on_object)
            index[relative] = {"etag": info.etag, "size": info.size}
        keep = {safe_key(i.key[len(path) :].lstrip("/")) for i in listed}
        for stale in set(index) - keep:
            (directory / stale).unlink(missing_ok=True)
            del index[stale]
        index_path.write_text(json.dumps(index))
    return directory


def download_verified(
    store: Store, info: ObjectInfo, local: Path, on_object: Callable[[str], None] | None = None
) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".skyshift-tmp-", dir=local.parent)
    try:
        with os.fdopen(fd, "wb") as out, store.open_read(info.key) as stream:
            beat = (lambda done: on_object(f"{info.key} ({done >> 20} MiB)")) if on_object else None
            _, size = _hash_stream(stream, out, beat)
        if size != info.size:
            raise ApplicationError(f"{store.url}/{info.key}: read {size} bytes, listed {info.size}")
        manifest = load_manifest(store, info)
        if manifest is not None:
            cache = open_store(StoreSpec(url=f"file://{local.parent}"))
            local_info = ObjectInfo(key=Path(temp).name, size=size, etag=None)
            if compute_manifest(cache, local_info).root != manifest.root:
                raise ApplicationError(f"{store.url}/{info.key}: downloaded bytes do not match its manifest root")
        os.replace(temp, local)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# -- artifacts ---------------------------------------------------------------------------------


def put_artifact(store: Store, key: str, path: Path) -> ArtifactRef:
    with open(path, "rb") as stream:
        digest, size = _hash_stream(stream)
    store.put_file(key, path)
    return ArtifactRef(store=store.spec, key=join_key(key), size=size, blake3=digest)


def read_artifact(ref: ArtifactRef) -> bytes:
    """The artifact's bytes, verified against the digest recorded when it was written."""
    data = open_store(ref.store).read_bytes(ref.key)
    if len(data) != ref.size or blake3.blake3(data).hexdigest() != ref.blake3:
        raise ApplicationError(
            f"{ref.store.url}/{ref.key}: artifact changed since it was written (size or BLAKE3 differ)",
            type="ArtifactCorrupt",
            non_retryable=True,
        )
    return data


def download_artifact(ref: ArtifactRef, path: Path) -> Path:
    """Stream the artifact to `path`, verified; large checkpoints never sit in memory whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_store(ref.store).open_read(ref.key) as stream, open(path, "wb") as out:
        digest, size = _hash_stream(stream, out)
    if size != ref.size or digest != ref.blake3:
        path.unlink(missing_ok=True)
        raise ApplicationError(
            f"{ref.store.url}/{ref.key}: artifact changed since it was written (size or BLAKE3 differ)",
            type="ArtifactCorrupt",
            non_retryable=True,
        )
    return path
