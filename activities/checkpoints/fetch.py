"""Checkpoint URLs and local copies: where a URL's store and path are, and a checkpoint's files on local disk.

Loading with torch (the compatibility check's real `torch.load`, DCP conversion) needs files on a local
disk; inspection does not (it streams). `fetch_checkpoint` copies exactly the files inspection would read,
streamed to disk in bounded pieces, never holding a shard in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from activities.checkpoints.errors import CheckpointError
from activities.checkpoints.layout import DCP_METADATA, INDEX_SUFFIX
from activities.checkpoints.links import refuse_links_out
from activities.checkpoints.ranged import stream_range
from activities.stores import Store, StoreSpec, join_key
from activities.stores.local import LocalStore
from activities.transfer.layout import user_objects


def local_location(path: Path) -> tuple[StoreSpec, str]:
    """(store, path in it) of a local file or directory: a file's store is its directory.

    `file://` + the plain path, as LocalStore reads it (no percent-encoding)."""
    path = path.resolve()
    if path.is_file():
        return StoreSpec(url=f"file://{path.parent}"), path.name
    return StoreSpec(url=f"file://{path}"), ""


def split_url(url: str) -> tuple[StoreSpec, str]:
    """(store, path in it) for file:///abs/path, s3://bucket/key, gs://bucket/key or a plain local path.

    Local: a file's store is its directory; a directory is its own store. Buckets: the store is the bucket.
    """
    if "://" not in url:
        return local_location(Path(url))
    if url.startswith("file://"):
        return local_location(Path(urlparse(url).path))
    parsed = urlparse(url)
    return StoreSpec(url=f"{parsed.scheme}://{parsed.netloc}"), parsed.path.strip("/")


def checkpoint_files(store: Store, path: str) -> tuple[str, dict[str, int], str | None]:
    """(directory, {key relative to it: size}, the single file's name or None) of the checkpoint at `path`."""
    path = path.strip("/")
    info = store.info(path) if path else None
    if info is not None:
        directory, _, name = path.rpartition("/")
        if name != DCP_METADATA and not name.endswith(INDEX_SUFFIX):
            _no_links_out(store, directory, [name])
            return directory, {name: info.size}, name
        path = directory
        _no_links_out(store, path)
        keys = {o.key[len(path) + 1 if path else 0 :]: o.size for o in user_objects(store, path)}
        return path, {k: v for k, v in keys.items() if "/" not in k}, None
    _no_links_out(store, path)
    prefix = f"{path}/" if path else ""
    keys = without_sealed({o.key[len(prefix) :]: o.size for o in user_objects(store, path)})
    if not keys:
        raise CheckpointError(f"{store.url.rstrip('/')}/{path}", "no checkpoint here: the path holds no objects")
    return path, keys, None


def _no_links_out(store: Store, directory: str, only: list[str] | None = None) -> None:
    """On a local store, refuse a checkpoint with a symbolic link that leads out of its directory."""
    if isinstance(store, LocalStore):
        base = store.root / directory if directory else store.root
        if base.is_dir():
            refuse_links_out(base, f"{store.url.rstrip('/')}/{directory}".rstrip("/"), only)


def without_sealed(keys: dict[str, int]) -> dict[str, int]:
    """A checkpoint's files without the sealed repository kept beside them (`sealed/`, see `sealed`)."""
    if "sealed/config.json" not in keys:
        return keys
    return {k: v for k, v in keys.items() if not k.startswith("sealed/")}


def fetch_checkpoint(store: Store, path: str, destination: Path, progress: Callable[[int], None] | None = None) -> Path:
    """Copy the checkpoint at `path` under `destination`; return the local file or directory to load."""
    directory, keys, single = checkpoint_files(store, path)
    destination.mkdir(parents=True, exist_ok=True)
    for key in sorted(keys):
        local = destination / key
        local.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "wb") as out:
            for _, piece in stream_range(store, join_key(directory, key) if directory else key, 0, keys[key], progress):
                out.write(piece)
    return destination / single if single else destination
