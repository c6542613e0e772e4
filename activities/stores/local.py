"""Local filesystem backend (`file:///abs/path`): on-prem volumes, NFS mounts, tests."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from activities.stores.base import (
    Capabilities,
    InvalidKeyError,
    ObjectInfo,
    PartInfo,
    PartWriter,
    Store,
    StoreError,
    StoreSpec,
    safe_key,
)


class _RangeReader(io.RawIOBase):
    """A file opened at `start` that reports EOF at `end`."""

    def __init__(self, path: Path, start: int, end: int | None) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._file.seek(start)
        self._left = None if end is None else max(0, end - start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._left is not None:
            view = view[: self._left]
        n = self._file.readinto(view)
        if self._left is not None:
            self._left -= n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


class LocalStore(Store):
    # Linux: NAME_MAX 255 bytes a file name; PATH_MAX 4096 for the whole path (root included).
    capabilities = Capabilities(
        ranged_read=True, multipart_writer=True, server_side_copy=True, max_segment_bytes=255, max_key_bytes=3800
    )

    def __init__(self, spec: StoreSpec) -> None:
        super().__init__(spec)
        self.root = Path(urlparse(spec.url).path)

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        base = self.root / safe_key(prefix.strip("/")) if prefix.strip("/") else self.root
        if base.is_dir():
            yield from self._walk(base, start_after)

    def _walk(self, directory: Path, start_after: str | None) -> Iterator[ObjectInfo]:
        """Yield files in full-key order, as S3 and GCS list: a directory sorts as "name/".
        Directories wholly before `start_after` are skipped without being read."""
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name + "/" if e.is_dir() else e.name)
        for entry in entries:
            key = Path(entry.path).relative_to(self.root).as_posix()
            if entry.is_dir():
                if start_after is None or start_after < key + "/\uffff":
                    yield from self._walk(Path(entry.path), start_after)
            elif not entry.name.startswith(".skyshift-tmp-") and (start_after is None or key > start_after):
                yield self._info(Path(entry.path))

    def _info(self, path: Path) -> ObjectInfo:
        stat = path.stat()
        # inode and ctime too: a file rewritten with the same size and mtime (or `touch -d`) still gets a
        # new etag, so a manifest cached for the old bytes is never taken for the new ones.
        return ObjectInfo(
            key=path.relative_to(self.root).as_posix(),
            size=stat.st_size,
            etag=f"{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ctime_ns}",
        )

    def info(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return self._info(path) if path.is_file() else None

    def open_read(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        path = self._path(key)
        if not path.is_file():
            raise StoreError(f"{self.url}: no object {key!r}")
        # A buffer no larger than what will be read: a million tiny reads must not each cost 1 MiB.
        wanted = (end if end is not None else path.stat().st_size) - start
        buffer = min(1 << 20, max(8 << 10, wanted))
        return io.BufferedReader(_RangeReader(path, start, end), buffer_size=buffer)  # type: ignore[return-value]

    def _atomic_write(self, key: str, write) -> ObjectInfo:
        self.check_key(key)
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=".skyshift-tmp-", dir=target.parent)
        except OSError as error:
            if error.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
                raise InvalidKeyError(f"refused object key {key!r}: {error.strerror} at {self.url}") from error
            raise
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return self._info(target)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        return self._atomic_write(key, lambda out: _copy_into(path, out))

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._atomic_write(key, lambda out: out.write(data))

    def remove(self, key: str) -> bool:
        path = self._path(key)
        if not path.exists():
            return False
        path.unlink()
        return True

    def open_multipart(self, key: str, upload_id: str | None = None) -> PartWriter:
        return _LocalParts(self, key, upload_id)

    def root_exists(self) -> bool:
        return self.root.is_dir()

    def copy_object(self, key: str, destination, destination_key: str) -> ObjectInfo | None:
        if not isinstance(destination, LocalStore):
            return None
        source = self._path(key)
        # A real copy, not a hard link: a backup must not change if someone edits the original in place.
        return destination._atomic_write(destination_key, lambda out: _copy_into(source, out))


def _copy_into(path: Path, out: BinaryIO) -> None:
    with open(path, "rb") as source:
        shutil.copyfileobj(source, out, 1 << 20)


class _LocalParts(PartWriter):
    """Parts are files under the metadata area's uploads/<id>/; `complete` concatenates and renames atomically."""

    def __init__(self, store: LocalStore, key: str, upload_id: str | None) -> None:
        self.store, self.key = store, safe_key(key)
        self.upload_id = upload_id or uuid.uuid4().hex
        self.area: LocalStore = store.metadata  # type: ignore[assignment]
        self.directory = self.area.root / "uploads" / self.upload_id

    def put_part(self, number: int, data: bytes) -> PartInfo:
        token = f"uploads/{self.upload_id}/{number:05d}"
        self.area.put_bytes(token, data)
        return PartInfo(number=number, size=len(data), token=token)

    def uploaded_parts(self) -> list[PartInfo]:
        if not self.directory.is_dir():
            return []
        parts = [PartInfo(number=int(p.name), size=p.stat().st_size, token=f"uploads/{self.upload_id}/{p.name}")
                 for p in self.directory.iterdir() if p.name.isdigit()]  # fmt: skip
        return sorted(parts, key=lambda p: p.number)

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        def write(out: BinaryIO) -> None:
            for part in sorted(parts, key=lambda p: p.number):
                _copy_into(self.area.root / part.token, out)

        info = self.store._atomic_write(self.key, write)
        self.abort()
        return info

    def abort(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
