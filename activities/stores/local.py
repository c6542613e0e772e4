"""Local filesystem backend (`file:///abs/path`): on-prem volumes, NFS mounts, tests.

Written for a million small files: plain `os` calls on string paths (no pathlib per file), large
directories listed from a per-process sorted listing (`dircache`), and small writes made durable a
batch at a time (`put_bytes(..., durable=False)` then one `flush()`, a syncfs of the filesystem)
instead of an fsync per file. Copies inside the filesystem are done by the kernel
(copy_file_range, else sendfile): the bytes never pass through the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import itertools
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from activities.stores.base import (
    Capabilities,
    InvalidKeyError,
    MissingObjectError,
    ObjectInfo,
    PartInfo,
    PartWriter,
    Store,
    StoreError,
    StoreSpec,
    safe_key,
)
from activities.stores.dircache import listings

_MiB = 1 << 20
TEMP_PREFIX = ".skyshift-tmp-"
#: A full filesystem, a quota, or a file-size limit (RLIMIT_FSIZE): no retry will make the write fit.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class _RangeReader(io.RawIOBase):
    """A file opened at `start` that reports EOF at `end`."""

    def __init__(self, path: str, start: int, end: int | None) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._file.seek(start)
        self._left = None if end is None else max(0, end - start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._left is not None:
            view = view[: self._left]
        n = self._file.readinto(view) or 0
        if self._left is not None:
            self._left -= n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _etag(status: os.stat_result) -> str:
    # inode and ctime too: a file rewritten with the same size and mtime (or `touch -d`) still gets a
    # new etag, so a manifest cached for the old bytes is never taken for the new ones.
    return f"{status.st_ino}-{status.st_size}-{status.st_mtime_ns}-{status.st_ctime_ns}"


class LocalStore(Store):
    # Linux: NAME_MAX 255 bytes a file name; PATH_MAX 4096 for the whole path (root included). Parts are
    # files in the metadata area, so their size only bounds what a killed rebuild sends again; a disk
    # wants few requests in flight (the worker's GIL, not latency, is the limit).
    capabilities = Capabilities(server_side_copy=True, part_copy=True, part_bytes=8 * _MiB, parallel_requests=4,
                                max_segment_bytes=255, max_key_bytes=3800)  # fmt: skip

    def __init__(self, spec: StoreSpec) -> None:
        super().__init__(spec)
        self.root = Path(urlparse(spec.url).path)
        self._root = str(self.root).rstrip("/") or ""
        self._known_dirs: set[str] = set()

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def _file(self, key: str) -> str:
        return f"{self._root}/{safe_key(key)}"

    # -- listing ----------------------------------------------------------------------------------

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        prefix = prefix.strip("/")
        key_prefix = f"{safe_key(prefix)}/" if prefix else ""
        directory = f"{self._root}/{prefix}" if prefix else self._root or "/"
        if os.path.isdir(directory):
            yield from self._walk(directory, key_prefix, start_after)

    def _walk(self, directory: str, key_prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """Files in full-key order, as S3 and GCS list (a directory sorts as "name/"); names at or before
        `start_after` are skipped by bisection, never read."""
        after = None
        if start_after is not None and start_after.startswith(key_prefix):
            rest = start_after[len(key_prefix) :]
            after = rest.split("/", 1)[0] if "/" in rest else rest
        elif start_after is not None and start_after > key_prefix:
            return  # the whole directory sorts before start_after (the caller descends only when needed)
        base = directory.rstrip("/")
        for name in listings.names_after(directory, after):
            if name.endswith("/"):
                key = key_prefix + name
                if start_after is None or start_after < key + "\uffff":
                    yield from self._walk(f"{base}/{name[:-1]}", key, start_after)
                continue
            key = key_prefix + name
            if name.startswith(TEMP_PREFIX) or (start_after is not None and key <= start_after):
                continue
            try:
                status = os.stat(f"{base}/{name}")
            except FileNotFoundError:
                continue  # removed since the directory was read
            if stat.S_ISREG(status.st_mode):
                yield ObjectInfo.model_construct(key=key, size=status.st_size, etag=_etag(status))

    def info(self, key: str) -> ObjectInfo | None:
        try:
            status = os.stat(self._file(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        return ObjectInfo.model_construct(key=key, size=status.st_size, etag=_etag(status))

    # -- reading ----------------------------------------------------------------------------------

    def open_read(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        path = self._file(key)
        if not os.path.isfile(path):
            raise MissingObjectError(f"{self.url}: no object {key!r}")
        # A buffer no larger than what will be read: a million tiny reads must not each cost 1 MiB.
        wanted = (end if end is not None else os.path.getsize(path)) - start
        buffer = min(1 << 20, max(8 << 10, wanted))
        return io.BufferedReader(_RangeReader(path, start, end), buffer_size=buffer)  # type: ignore[return-value]

    def read_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            with open(self._file(key), "rb", buffering=0) as file:
                if start:
                    file.seek(start)
                return file.read() if end is None else _read_exactly(file, max(0, end - start))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise MissingObjectError(f"{self.url}: no object {key!r}") from error

    # -- writing ----------------------------------------------------------------------------------

    def _ensure_directory(self, directory: str, key: str) -> None:
        """Create the directories above a key, each as an own change of its parent's listing."""
        if directory in self._known_dirs:
            return
        if not os.path.isdir(directory):
            parent, _, name = directory.rpartition("/")
            if parent:
                self._ensure_directory(parent, key)
            try:
                listings.own_change(parent or "/", lambda: os.mkdir(directory), added=name + "/")
            except FileExistsError:
                if not os.path.isdir(directory):
                    raise InvalidKeyError(f"refused object key {key!r}: {directory} exists and is not a "
                                          "directory") from None  # fmt: skip
        self._known_dirs.add(directory)

    def _atomic_write(self, key: str, write: Callable[[int], None], durable: bool = True,
                      size: int | None = None) -> ObjectInfo:  # fmt: skip
        """Write a temporary file beside the key and rename it over the key: readers see the old object or
        the new one. `durable=False` leaves the fsync to the caller's next `flush()`. `size`: the bytes
        the object needs, to say how much space is missing when the filesystem is full."""
        self.check_key(key)  # includes safe_key
        target = f"{self._root}/{key}"
        parent, _, name = target.rpartition("/")
        temp = f"{parent}/{TEMP_PREFIX}{_temp_names.prefix}{next(_temp_names.counter)}"
        try:
            self._ensure_directory(parent, key)
            try:
                fd = listings.own_change(parent, lambda: os.open(temp, _OPEN_NEW, 0o644))
            except FileNotFoundError:  # a directory removed by someone else since we made it
                self._known_dirs.clear()
                self._ensure_directory(parent, key)
                fd = listings.own_change(parent, lambda: os.open(temp, _OPEN_NEW, 0o644))
        except OSError as error:
            if error.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
                raise InvalidKeyError(f"refused object key {key!r}: {error.strerror} at {self.url}") from error
            if error.errno in NO_SPACE:
                raise self._no_space(key, parent, size, error) from error
            raise
        try:
            try:
                write(fd)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            listings.own_change(parent, lambda: os.replace(temp, target), added=name)
        except BaseException as error:
            listings.own_change(parent, lambda: _unlink(temp))
            if isinstance(error, OSError) and error.errno in (errno.EISDIR, errno.ENOTEMPTY):
                raise InvalidKeyError(f"refused object key {key!r}: a directory of that name exists at "
                                      f"{self.url}") from error  # fmt: skip
            if isinstance(error, OSError) and error.errno in NO_SPACE:
                raise self._no_space(key, parent, size, error) from error
            raise
        status = os.stat(target)
        return ObjectInfo.model_construct(key=key, size=status.st_size, etag=_etag(status))

    def _no_space(self, key: str, directory: str, size: int | None, error: OSError) -> StoreError:
        """A full filesystem (or a file-size or quota limit) is permanent for this write: say where, how much
        the object needs and how much is free, so the operator can make room and rerun."""
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            free = None
        needs = f"{size:,} bytes" if size is not None else "its bytes"
        missing = f"; at least {size - free:,} bytes missing" if size is not None and free is not None else ""
        left = f", {free:,} bytes free" if free is not None else ""
        return StoreError(f"{self.url}: no space left writing {key!r} ({error.strerror}): the object needs "
                          f"{needs}{left}{missing}. Nothing partial was left; free space at {self.url} (or "
                          "choose another target), then rerun", permanent=True)  # fmt: skip

    def put_file(self, key: str, path: Path, durable: bool = True) -> ObjectInfo:
        def write(fd: int) -> None:
            with open(path, "rb", buffering=0) as source:
                _kernel_copy(source.fileno(), fd, 0, os.fstat(source.fileno()).st_size)

        return self._atomic_write(key, write, durable, size=path.stat().st_size)

    def put_bytes(self, key: str, data: bytes, durable: bool = True) -> ObjectInfo:
        def write(fd: int) -> None:
            view, written = memoryview(data), 0
            while written < len(view):
                written += os.write(fd, view[written:])

        return self._atomic_write(key, write, durable, size=len(data))

    def flush(self) -> None:
        if os.path.isdir(self._root or "/"):
            _sync_filesystem(self._root or "/")

    def remove(self, key: str) -> bool:
        path = self._file(key)
        parent, _, name = path.rpartition("/")
        try:
            listings.own_change(parent, lambda: os.unlink(path), removed=name)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def open_multipart(self, key: str, upload_id: str | None = None) -> PartWriter:
        return _LocalParts(self, key, upload_id)

    def root_exists(self) -> bool:
        return self.root.is_dir()

    def copy_object(self, key: str, destination, destination_key: str) -> ObjectInfo | None:
        if not isinstance(destination, LocalStore):
            return None
        source = self._file(key)
        # A real copy (by the kernel), not a hard link: a backup must not change if someone edits the original.

        def write(fd: int) -> None:
            with open(source, "rb", buffering=0) as stream:
                _kernel_copy(stream.fileno(), fd, 0, os.fstat(stream.fileno()).st_size)

        return destination._atomic_write(destination_key, write)


class _TempNames:
    """Unique temporary names without a uuid4 per file: a random prefix per process and a counter
    (O_EXCL still refuses a name that exists)."""

    def __init__(self) -> None:
        self.prefix = f"{uuid.uuid4().hex[:12]}-"
        self.counter = itertools.count()


_temp_names = _TempNames()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _read_exactly(file, length: int) -> bytes:
    parts, left = [], length
    while left > 0:
        block = file.read(left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def _kernel_copy(source_fd: int, target_fd: int, offset: int, count: int) -> int:
    """Copy `count` bytes from `offset` of one file to the end of another inside the kernel
    (copy_file_range, which may reflink; else sendfile); return the bytes copied."""
    copied = 0
    use_range = hasattr(os, "copy_file_range")
    while copied < count:
        n = 0
        if use_range:
            try:
                n = os.copy_file_range(source_fd, target_fd, count - copied, offset + copied)
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_range = False
                continue
        else:
            n = os.sendfile(target_fd, source_fd, offset + copied, min(count - copied, 1 << 30))
        if n == 0:
            break  # the source ended early
        copied += n
    return copied


_libc: ctypes.CDLL | None = None


def _sync_filesystem(path: str) -> None:
    """syncfs(2) of the filesystem holding `path`: one flush for a whole batch of writes. Called through
    libc because Python's `os` has no syncfs; os.sync() (every filesystem) where libc lacks it."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(_libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs({path}) failed")
    finally:
        os.close(fd)


class _LocalParts(PartWriter):
    """Parts are files under the metadata area's uploads/<id>/; `complete` concatenates them (in the
    kernel) into a temporary file renamed over the key."""

    def __init__(self, store: LocalStore, key: str, upload_id: str | None) -> None:
        self.store, self.key = store, safe_key(key)
        self.upload_id = upload_id or uuid.uuid4().hex
        self.area: LocalStore = store.metadata  # type: ignore[assignment]
        self.directory = self.area.root / "uploads" / self.upload_id

    def _token(self, number: int) -> str:
        return f"uploads/{self.upload_id}/{number:05d}"

    def put_part(self, number: int, data: bytes) -> PartInfo:
        self.area.put_bytes(self._token(number), data)
        return PartInfo(number=number, size=len(data), token=self._token(number))

    def copy_part(self, number: int, source_key: str, start: int, end: int, etag: str | None) -> PartInfo | None:
        source = self.store._file(source_key)
        try:
            with open(source, "rb", buffering=0) as stream:
                if etag is not None and _etag(os.fstat(stream.fileno())) != etag:
                    return None

                def write(fd: int) -> None:
                    if _kernel_copy(stream.fileno(), fd, start, end - start) != end - start:
                        raise StoreError(f"{self.store.url}/{source_key}: shorter than {end} bytes")

                self.area._atomic_write(self._token(number), write)
                if etag is not None and _etag(os.fstat(stream.fileno())) != etag:
                    self.area.remove(self._token(number))  # the source changed while being copied
                    return None
        except FileNotFoundError:
            return None
        return PartInfo(number=number, size=end - start, token=self._token(number))

    def uploaded_parts(self) -> list[PartInfo]:
        if not self.directory.is_dir():
            return []
        parts = [PartInfo(number=int(p.name), size=p.stat().st_size, token=f"uploads/{self.upload_id}/{p.name}")
                 for p in self.directory.iterdir() if p.name.isdigit()]  # fmt: skip
        return sorted(parts, key=lambda p: p.number)

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        def write(fd: int) -> None:
            for part in sorted(parts, key=lambda p: p.number):
                with open(self.area._file(part.token), "rb", buffering=0) as stream:
                    _kernel_copy(stream.fileno(), fd, 0, os.fstat(stream.fileno()).st_size)

        info = self.store._atomic_write(self.key, write, size=sum(part.size for part in parts))
        self.abort()
        return info

    def abort(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
