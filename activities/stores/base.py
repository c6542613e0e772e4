"""The store interface, its models and key safety."""

from __future__ import annotations

import abc
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMES = ("s3://", "gs://", "file://")


T = TypeVar("T")
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def shared_client(key: tuple, build: Callable[[], T]) -> T:
    """One provider client per `key` (service, endpoint, credential) in the process, built on first use:
    clients are thread-safe, building one costs ~0.1-1 s, and a sync opens its stores in every activity."""
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = build()
    return client  # type: ignore[return-value]


class StoreError(RuntimeError):
    """A store operation failed in a way the caller can explain to an operator.

    `permanent` errors (a missing bucket, denied access, a refused key) do not heal by retrying:
    activities turn them into non-retryable failures instead of retrying forever.
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class MissingObjectError(StoreError):
    """The object is not there (never written, or deleted since it was listed or remembered)."""


class ObjectChangedError(StoreError):
    """The object changed while it was being read (a new generation or version, a body of another
    length): the bytes in hand belong to no single version of it."""


class InvalidKeyError(StoreError, ValueError):
    """A key that would escape the store's root or is otherwise unusable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class StoreSpec(BaseModel):
    """Where a store is and how to reach it: what activities receive instead of clients or secrets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="s3://bucket/prefix, gs://bucket/prefix or file:///absolute/path")
    endpoint: str | None = Field(None, description="Override the provider endpoint (emulators, S3-compatible stores)")
    credentials: str | None = Field(None, description="Name of a credential the worker resolves; never a secret")
    metadata_url: str | None = Field(
        None,
        description="Where skyshift keeps this store's metadata (ledgers, backups, upload parts); default: a "
        "`.skyshift/` root beside the store's root, never inside the data",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        """One spelling per location: a trailing '/' is dropped; '.', '..' and empty path segments are
        refused (stores treat `a//b` and `a/./b` as other keys than `a/b`, and `..` would escape the
        root); bucket names follow the provider's rules, so a typo fails here, not mid-migration."""
        shown = repr(url) if len(url) <= 80 else f"{repr(url)[:77]}..."
        if not url.startswith(SCHEMES):
            raise ValueError(f"url {shown} must start with one of {', '.join(SCHEMES)}")
        scheme, rest = url.split("://", 1)
        if any(c in rest for c in "?#\\") or any(ord(c) < 32 or ord(c) == 127 for c in rest):
            raise ValueError(f"url {shown} must not contain '?', '#', backslashes or control characters")
        if scheme == "file":
            if not rest.startswith("/"):
                raise ValueError(f"url {shown} must be an absolute path: file:///abs/path")
            root, path = "", rest[1:]
        else:
            bucket, _, path = rest.partition("/")
            if len(bucket) < 3:
                raise ValueError(f"url {shown} needs a bucket name of at least 3 characters")
            # S3: docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html (general purpose);
            # GCS: cloud.google.com/storage/docs/buckets#naming.
            rules = {
                "s3": (r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", ("xn--", "sthree-", "amzn-s3-demo-"),
                       ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"), ()),
                "gs": (r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", ("goog",), (), ("google", "g00gle")),
            }  # fmt: skip
            pattern, prefixes, suffixes, forbidden = rules[scheme]
            component_too_long = any(len(part) > 63 for part in bucket.split("."))
            if (
                not re.fullmatch(pattern, bucket)
                or ".." in bucket
                or ("." not in bucket and len(bucket) > 63)
                or component_too_long
                or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket)
            ):
                raise ValueError(
                    f"url {shown}: bucket {bucket[:70]!r} is not a valid {scheme} bucket name (3-63 lowercase "
                    f"letters, digits, '-' or '.'{', _' if scheme == 'gs' else ''}; starting and ending with a "
                    "letter or digit; not an IP address)"
                )
            reserved = [p for p in prefixes if bucket.startswith(p)] + [s for s in suffixes if bucket.endswith(s)]
            reserved += [word for word in forbidden if word in bucket]
            if reserved:
                raise ValueError(f"url {shown}: bucket names may not use the reserved {reserved[0]!r}")
            root = bucket
        path = path.removesuffix("/")
        if path and any(segment in ("", ".", "..") for segment in path.split("/")):
            raise ValueError(
                f"url {shown} has a '.', '..' or empty path segment; write the location once, as segments "
                "joined by single '/'"
            )
        return f"{scheme}://{root}/{path}" if path or scheme == "file" else f"{scheme}://{root}"


class ObjectInfo(BaseModel):
    """One object as listed: key relative to the store's root."""

    key: str
    size: int
    etag: str | None = Field(None, description="Change detector only (S3 ETag, GCS crc32c+generation, mtime)")


class PartInfo(BaseModel):
    """One uploaded part of a multipart write; kept in heartbeats so an upload resumes anywhere."""

    number: int = Field(ge=1)
    size: int
    token: str = Field(description="Provider's handle for the part (S3 ETag, GCS/local part key)")


class PartWriter(abc.ABC):
    """An object written in parts, invisible until `complete` publishes it atomically."""

    upload_id: str

    @abc.abstractmethod
    def put_part(self, number: int, data: bytes) -> PartInfo: ...

    def copy_part(self, number: int, source_key: str, start: int, end: int, etag: str | None) -> PartInfo | None:
        """Fill part `number` with bytes [start, end) of `source_key` in the same store, inside the provider
        (only where `capabilities.part_copy`). `etag` pins the version whose bytes the caller knows: None
        when the object is no longer that version (the caller then streams the part instead)."""
        return None

    @abc.abstractmethod
    def complete(self, parts: list[PartInfo]) -> ObjectInfo: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    @abc.abstractmethod
    def uploaded_parts(self) -> list[PartInfo] | None:
        """The parts the provider holds for this upload, how a new process resumes it; None when the
        provider no longer knows the upload (completed or aborted meanwhile)."""


_MiB = 1 << 20


class Capabilities(BaseModel):
    """What a backend can do and its limits, as data the transfer engine reads before acting.

    Every field is read by the engine (a declared feature nothing checks is a lie in waiting); ranged
    reads and multipart writes are not listed because every backend must have them.
    """

    #: `copy_object` copies a whole object inside the provider, the bytes never passing through the worker
    #: (ledger backups and restores; without it they are streamed through the worker).
    server_side_copy: bool = False
    #: `PartWriter.copy_part` fills a part from a byte range of an object in the same store inside the
    #: provider (S3 UploadPartCopy with CopySourceRange): a rebuild copies long unchanged runs instead of
    #: reading them back through the worker.
    part_copy: bool = False
    #: Largest object a single server-side copy call may produce, if limited (S3 CopyObject: 5 GiB).
    max_single_copy_bytes: int | None = None
    #: The part size the engine starts from: it bounds what a killed rebuild sends again and how many
    #: requests an object costs; raised to fit `max_parts`, never below `min_part_bytes`.
    part_bytes: int = 8 * _MiB
    max_parts: int | None = None
    min_part_bytes: int | None = None
    max_part_bytes: int | None = None
    #: Requests worth keeping in flight from one worker: an object store across a network is bound by
    #: latency and wants many; a local disk is bound by the worker's CPU and wants a few.
    parallel_requests: int = Field(8, ge=1)
    #: Longest key the provider accepts, in UTF-8 bytes, and longest path segment (a file name).
    max_key_bytes: int | None = None
    max_segment_bytes: int | None = None


def part_size_for(size: int, capabilities: Capabilities, preferred: int | None = None) -> int:
    """The part size for an object of `size` bytes: the store's `part_bytes` (or `preferred`), raised to
    fit its part count and floor, capped by its part ceiling (S3: 5 MiB..5 GiB and 10,000 parts; GCS
    compose: 1,024 components)."""
    part = max(preferred or capabilities.part_bytes, capabilities.min_part_bytes or 0)
    if capabilities.max_parts:
        part = max(part, -(-size // capabilities.max_parts))
    if capabilities.max_part_bytes:
        part = min(part, capabilities.max_part_bytes)
    return part


#: skyshift's metadata root name, beside (or, for a bucket or filesystem root, inside) a store's root.
METADATA_NAME = ".skyshift"


def metadata_spec(spec: StoreSpec) -> StoreSpec:
    """Where a store's metadata lives: `spec.metadata_url`, else `.skyshift/<root>` next to the root.

    `s3://bucket/ml` keeps its metadata under `s3://bucket/.skyshift/ml`, `file:///data/ds` under
    `file:///data/.skyshift/ds`: outside the synced prefix, so a listing of the data shows exactly
    the user's objects and read-only data stays untouched. Only a store rooted at a bucket or at
    `/` has no outside; its metadata is `.skyshift/` inside, and that name is reserved there.
    """
    if spec.metadata_url:
        return StoreSpec(url=spec.metadata_url, endpoint=spec.endpoint, credentials=spec.credentials)
    scheme, rest = spec.url.split("://", 1)
    root, _, path = rest.partition("/")
    path = path.strip("/")
    location = f"{METADATA_NAME}/{path}" if path else METADATA_NAME
    if scheme == "file":  # rest is "/abs/path": root is "", path is "abs/path"
        parent, _, name = path.rpartition("/")
        location = "/".join(p for p in (parent, METADATA_NAME, name) if p) if path else METADATA_NAME
    return StoreSpec(url=f"{scheme}://{root}/{location}", endpoint=spec.endpoint, credentials=spec.credentials)


def reserved_prefix(spec: StoreSpec) -> str | None:
    """The key prefix (ending in '/') of the store's own metadata when it lies inside the store's root."""
    inside = metadata_spec(spec).url
    root = spec.url if spec.url.endswith("/") else spec.url + "/"
    return inside[len(root) :].rstrip("/") + "/" if inside.startswith(root) else None


def location(spec: StoreSpec, resolve: bool = True) -> tuple[str, ...]:
    """A store's location as comparable parts: scheme, endpoint, bucket, then path segments.

    With `resolve`, local paths are resolved on this machine (symlinks), so two spellings of one
    directory compare equal; without it (plan validation, which also runs inside workflows and must
    not touch the filesystem) only their normalized text is compared.
    """
    scheme, rest = spec.url.split("://", 1)
    if scheme == "file":
        resolved = os.path.realpath(rest or "/") if resolve else os.path.normpath(rest or "/")
        return ("file", "", "", *[p for p in resolved.split("/") if p])
    bucket, _, path = rest.partition("/")
    return (scheme, spec.endpoint or "", bucket, *[p for p in path.split("/") if p])


def overlap(a: StoreSpec, b: StoreSpec, resolve: bool = True) -> str | None:
    """How two stores overlap ('the same location', 'X is inside Y'), or None when they are apart.

    A sync between overlapping stores would delete its own source (`--delete`) or copy into itself
    without end, so it is refused before anything starts (rclone refuses the same).
    """
    left, right = location(a, resolve), location(b, resolve)
    if left == right:
        return f"{a.url} and {b.url} are the same location"
    if right[: len(left)] == left:
        return f"{b.url} is inside {a.url}"
    if left[: len(right)] == right:
        return f"{a.url} is inside {b.url}"
    return None


def safe_key(key: str) -> str:
    """Validate a key relative to a store root; refuse anything that could escape it."""
    if not key or key.startswith("/") or "\x00" in key or "\\" in key:
        raise InvalidKeyError(f"refused object key {key!r}: keys must be relative, without NUL or backslashes")
    if any(part in ("..", ".") for part in key.split("/")) or "//" in key:
        raise InvalidKeyError(f"refused object key {key!r}: '..', '.' and empty path segments are not allowed")
    return key


def join_key(*parts: str) -> str:
    """Join key parts with '/', ignoring empty ones, and validate the result."""
    return safe_key("/".join(p.strip("/") for p in parts if p and p.strip("/")))


def directory_prefix(root: str, prefix: str) -> str:
    """The provider-side prefix for everything under `prefix` (a directory, never a partial name)."""
    joined = "/".join(p.strip("/") for p in (root, prefix) if p.strip("/"))
    return f"{joined}/" if joined else ""


class Store(abc.ABC):
    """A bucket or directory addressed by URL; all keys are relative to its root prefix."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec

    @property
    def url(self) -> str:
        return self.spec.url

    @abc.abstractmethod
    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Yield objects under prefix in key order, a page at a time (never the whole listing in memory),
        beginning after the key `start_after` when given."""

    @abc.abstractmethod
    def info(self, key: str) -> ObjectInfo | None:
        """Size and change detector of one object, or None when it does not exist."""

    @abc.abstractmethod
    def open_read(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A readable stream of bytes [start, end) of the object (end None: to the end)."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, durable: bool = True) -> ObjectInfo:
        """Write a local file as the object, atomically: readers see the old object or the new one."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, durable: bool = True) -> ObjectInfo:
        """Write a small object atomically. `durable=False`: it may be lost in a crash until the next
        `flush()` (object stores are durable once a write returns and ignore it)."""

    def flush(self) -> None:  # noqa: B027 - object stores are durable once a write returns: nothing to do
        """Make every write so far durable (a local filesystem syncs once for a batch of small writes)."""

    @abc.abstractmethod
    def remove(self, key: str) -> bool:
        """Delete the object; return False when it was already absent (idempotent)."""

    def remove_many(self, keys: list[str]) -> int:
        """Delete many objects (S3: 1,000 a request); return how many the provider confirmed deleted."""
        return sum(self.remove(key) for key in keys)

    def remove_if_unchanged(self, listed: dict[str, str | None]) -> tuple[int, list[str]]:
        """Delete each key only while it is the version listed (its etag then); return (deleted, keys spared
        because they changed since). Here each object is looked at again just before it is deleted (a
        window of one request); backends with conditional deletes override this to close it."""
        unchanged, changed = [], []
        for key, etag in listed.items():
            info = self.info(key)
            if info is None:
                continue
            if etag is not None and info.etag != etag:
                changed.append(key)
            else:
                unchanged.append(key)
        return self.remove_many(unchanged), changed

    @abc.abstractmethod
    def open_multipart(self, key: str, upload_id: str | None = None) -> PartWriter:
        """Start (or, given its id, resume) a multipart write of `key`."""

    def read_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        with self.open_read(key, start, end) as stream:
            return stream.read()

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    @abc.abstractmethod
    def root_exists(self) -> bool:
        """The bucket or directory this store is rooted at exists (it may be empty)."""

    def region(self) -> str | None:
        """Where the store's data lives, as its own API says (lower case: `eu-west-1`, `us-central1`, `us`).

        None for a store with no region (a local directory). Residency is judged on this, not the plan's string.
        """
        return None

    def check_key(self, key: str) -> None:
        """Raise InvalidKeyError naming `key` when this store cannot hold it safely."""
        safe_key(key)
        limits = self.capabilities
        encoded = key.encode("utf-8", "surrogatepass")
        if limits.max_key_bytes and len(encoded) > limits.max_key_bytes:
            raise InvalidKeyError(f"refused object key {key!r}: {len(encoded)} bytes, {self.url} allows "
                                  f"{limits.max_key_bytes}")  # fmt: skip
        if limits.max_segment_bytes:
            longest = max(len(part.encode("utf-8", "surrogatepass")) for part in key.split("/"))
            if longest > limits.max_segment_bytes:
                raise InvalidKeyError(f"refused object key {key!r}: a path segment of {longest} bytes, {self.url} "
                                      f"allows {limits.max_segment_bytes}")  # fmt: skip

    def copy_object(self, key: str, destination: Store, destination_key: str) -> ObjectInfo | None:
        """Copy `key` to `destination_key` in `destination` without the bytes passing through this
        process, when the provider can (`capabilities.server_side_copy` and the same service);
        None when it cannot, and the caller streams the bytes instead."""
        return None

    @property
    def metadata(self) -> Store:
        """This store's metadata area (see `metadata_spec`), a store of the same backend."""
        cached = getattr(self, "_metadata", None)
        if cached is None:
            cached = type(self)(metadata_spec(self.spec))
            self._metadata = cached
        return cached


class BucketStore(Store):
    """A store rooted at `scheme://bucket/prefix`: skyshift keys map to provider keys under the prefix."""

    def __init__(self, spec: StoreSpec) -> None:
        super().__init__(spec)
        parsed = urlparse(spec.url)
        self.bucket_name = parsed.netloc
        self.prefix = parsed.path.strip("/")

    def _key(self, key: str) -> str:
        return join_key(self.prefix, safe_key(key))

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key
