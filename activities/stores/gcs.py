"""Google Cloud Storage through google-cloud-storage (`gs://bucket/prefix`)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from activities.stores.base import (
    BucketStore,
    Capabilities,
    ObjectInfo,
    PartInfo,
    PartWriter,
    StoreError,
    StoreSpec,
    directory_prefix,
    join_key,
)

_MiB = 1 << 20


class GCSStore(BucketStore):
    capabilities = Capabilities(ranged_read=True, multipart_writer=True, max_parts=32)

    def __init__(self, spec: StoreSpec) -> None:
        super().__init__(spec)
        self.client = self._client(spec)
        self.bucket = self.client.bucket(self.bucket_name)

    @staticmethod
    def _client(spec: StoreSpec) -> storage.Client:
        emulator = spec.endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            options = {"api_endpoint": spec.endpoint} if spec.endpoint else None
            return storage.Client(project="skyshift", credentials=AnonymousCredentials(), client_options=options)
        if spec.credentials:
            # A credential *name*: the worker's environment maps it to a service-account file.
            variable = f"SKYSHIFT_CREDENTIAL_{spec.credentials.upper().replace('-', '_')}"
            path = os.environ.get(variable)
            if not path:
                raise StoreError(f"{spec.url}: credential '{spec.credentials}' is not configured; set {variable}")
            return storage.Client.from_service_account_json(path)
        return storage.Client()

    @staticmethod
    def _etag(blob: storage.Blob) -> str:
        return f"{blob.crc32c}:{blob.generation}"

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        full = directory_prefix(self.prefix, prefix)
        # start_offset is inclusive: the object named start_after itself is skipped below.
        offset = self._key(start_after) if start_after else None
        try:
            for blob in self.client.list_blobs(
                self.bucket_name, prefix=full or None, page_size=1000, start_offset=offset
            ):
                if offset is not None and blob.name <= offset:
                    continue
                yield ObjectInfo(key=self._relative(blob.name), size=blob.size or 0, etag=self._etag(blob))
        except (gexc.NotFound, gexc.Forbidden, gexc.Unauthorized) as error:
            raise StoreError(
                f"{self.url}: cannot list: {error.message} (check the bucket and access)", permanent=True
            ) from error
        except gexc.GoogleAPIError as error:
            raise StoreError(f"{self.url}: cannot list: {error}") from error

    def info(self, key: str) -> ObjectInfo | None:
        try:
            blob = self.bucket.get_blob(self._key(key))
        except (gexc.Forbidden, gexc.Unauthorized) as error:
            raise StoreError(f"{self.url}: cannot stat {key!r}: {error.message}", permanent=True) from error
        return None if blob is None else ObjectInfo(key=key, size=blob.size or 0, etag=self._etag(blob))

    def open_read(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        blob = self.bucket.blob(self._key(key))
        try:
            if end is not None and end - start <= 8 * _MiB:
                return io.BytesIO(blob.download_as_bytes(start=start, end=end - 1))
            blob.reload()  # BlobReader is lazy: surface a missing object here, not on first read
            reader = blob.open("rb", chunk_size=8 * _MiB)
        except gexc.NotFound as error:
            raise StoreError(f"{self.url}: no object {key!r}") from error
        reader.seek(start)
        return reader if end is None else _Limited(reader, end - start)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        # GCS publishes an object when its upload finalizes; crc32c lets the server reject damage.
        blob = self.bucket.blob(self._key(key), chunk_size=16 * _MiB)
        try:
            blob.upload_from_filename(str(path), checksum="crc32c")
        except gexc.GoogleAPIError as error:
            raise StoreError(f"{self.url}: cannot write {key!r}: {error}") from error
        return self.info(key) or ObjectInfo(key=key, size=path.stat().st_size)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        blob = self.bucket.blob(self._key(key))
        try:
            blob.upload_from_string(data, checksum="crc32c")
        except gexc.GoogleAPIError as error:
            raise StoreError(f"{self.url}: cannot write {key!r}: {error}") from error
        return ObjectInfo(key=key, size=len(data), etag=self._etag(blob))

    def remove(self, key: str) -> bool:
        try:
            self.bucket.blob(self._key(key)).delete()
        except gexc.NotFound:
            return False
        return True

    def open_multipart(self, key: str, upload_id: str | None = None) -> PartWriter:
        return _GCSComposite(self, key, upload_id)

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (used by the embedded stack's seeding, not by migrations)."""
        if self.client.lookup_bucket(self.bucket_name) is None:
            self.client.create_bucket(self.bucket_name)


class _Limited(io.RawIOBase):
    """At most `left` bytes of a stream (a ranged read over BlobReader, which streams in chunks)."""

    def __init__(self, stream, left: int) -> None:
        self.stream, self.left = stream, left

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.stream.read(size) if size else b""
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.stream.close()
        super().close()


class _GCSComposite(PartWriter):
    """Parts are temporary objects; `compose` (atomic, server-side, 32 sources a call) publishes them.

    Chosen over a resumable-upload session because every uploaded part is a durable object: a
    different worker resumes from the part list alone.
    """

    def __init__(self, store: GCSStore, key: str, upload_id: str | None) -> None:
        self.store, self.key = store, key
        self.upload_id = upload_id or uuid.uuid4().hex
        self.part_prefix = join_key(".skyshift", "uploads", self.upload_id)

    def _part_key(self, number: int) -> str:
        return f"{self.part_prefix}/{number:05d}"

    def put_part(self, number: int, data: bytes) -> PartInfo:
        self.store.put_bytes(self._part_key(number), data)
        return PartInfo(number=number, size=len(data), token=self._part_key(number))

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        sources = [self.store.bucket.blob(self.store._key(p.token)) for p in sorted(parts, key=lambda p: p.number)]
        level = 0
        while len(sources) > 32:  # compose takes at most 32 sources: fold into intermediates
            folded = []
            for index in range(0, len(sources), 32):
                blob = self.store.bucket.blob(self.store._key(f"{self.part_prefix}/fold-{level}-{index:05d}"))
                blob.compose(sources[index : index + 32])
                folded.append(blob)
            sources, level = folded, level + 1
        target = self.store.bucket.blob(self.store._key(self.key))
        if sources:
            target.compose(sources)
        else:
            target.upload_from_string(b"")
        self.abort()  # the temporary parts are no longer needed
        info = self.store.info(self.key)
        assert info is not None
        return info

    def abort(self) -> None:
        for obj in list(self.store.list(self.part_prefix)):
            self.store.remove(obj.key)
