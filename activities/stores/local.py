"""Local filesystem backend (`file:///abs/path`): on-prem volumes, NFS mounts, tests."""

from __future__ import annotations

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
    capabilities = Capabilities(ranged_read=True, multipart_writer=True)

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
        return ObjectInfo(
            key=path.relative_to(self.root).as_posix(), size=stat.st_size, etag=f"{stat.st_mtime_ns}-{stat.st_size}"
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
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".skyshift-tmp-", dir=target.parent)
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
        def write(out: BinaryIO) -> None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)

        return self._atomic_write(key, write)

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


class _LocalParts(PartWriter):
    """Parts are files under .skyshift/uploads/<id>/; `complete` concatenates and renames atomically."""

    def __init__(self, store: LocalStore, key: str, upload_id: str | None) -> None:
        self.store, self.key = store, safe_key(key)
        self.upload_id = upload_id or uuid.uuid4().hex
        self.directory = store.root / ".skyshift" / "uploads" / self.upload_id

    def put_part(self, number: int, data: bytes) -> PartInfo:
        token = f".skyshift/uploads/{self.upload_id}/{number:05d}"
        self.store.put_bytes(token, data)
        return PartInfo(number=number, size=len(data), token=token)

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        def write(out: BinaryIO) -> None:
            for part in sorted(parts, key=lambda p: p.number):
                with open(self.store.root / part.token, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)

        info = self.store._atomic_write(self.key, write)
        self.abort()
        return info

    def abort(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
