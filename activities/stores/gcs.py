"""Google Cloud Storage through google-cloud-storage (`gs://bucket/prefix`)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import requests.adapters
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from activities.stores.base import (
    BucketStore,
    Capabilities,
    MissingObjectError,
    ObjectChangedError,
    ObjectInfo,
    PartInfo,
    PartWriter,
    StoreError,
    StoreSpec,
    directory_prefix,
    join_key,
    shared_client,
)
from activities.stores.resilient import resuming

_MiB = 1 << 20


class GCSStore(BucketStore):
    # Parts are objects composed 32 at a time (cloud.google.com/storage/docs/composite-objects) and folded,
    # so their count has no limit here; each is one upload request: 16 MiB parts. Compose takes whole
    # objects, never byte ranges, so there is no part copy (an unchanged run of a rebuilt object is read
    # back through the worker); whole objects are rewritten server-side. 1,024-byte names.
    capabilities = Capabilities(server_side_copy=True, part_copy=False, part_bytes=16 * _MiB, parallel_requests=32,
                                max_key_bytes=1024)  # fmt: skip

    def __init__(self, spec: StoreSpec) -> None:
        super().__init__(spec)
        self.client = self._client(spec)
        self.bucket = self.client.bucket(self.bucket_name)

    @staticmethod
    def _client(spec: StoreSpec) -> storage.Client:
        def build() -> storage.Client:
            client = GCSStore._new_client(spec)
            # Connections for every request in flight (requests keeps 10 per host by default).
            adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=128)
            client._http.mount("https://", adapter)
            client._http.mount("http://", adapter)
            return client

        return shared_client(("gcs", spec.endpoint, os.environ.get("STORAGE_EMULATOR_HOST"), spec.credentials), build)

    @staticmethod
    def _new_client(spec: StoreSpec) -> storage.Client:
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
                yield ObjectInfo.model_construct(key=self._relative(blob.name), size=blob.size or 0,
                                                 etag=self._etag(blob))  # fmt: skip
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
            blob.reload()  # size and generation: every window reads this version, never a newer one
        except gexc.NotFound as error:
            raise MissingObjectError(f"{self.url}: no object {key!r}") from error
        stop = min(end, blob.size or 0) if end is not None else blob.size or 0
        generation = blob.generation

        def opener(offset: int, stop_: int) -> BinaryIO:
            return _Windows(blob, offset, stop_, generation)

        return resuming(opener, start, max(start, stop), f"{self.url}/{key}")

    def put_file(self, key: str, path: Path, durable: bool = True) -> ObjectInfo:
        # GCS publishes an object when its upload finalizes; crc32c lets the server reject damage.
        blob = self.bucket.blob(self._key(key), chunk_size=16 * _MiB)
        try:
            blob.upload_from_filename(str(path), checksum="crc32c")
        except gexc.GoogleAPIError as error:
            raise StoreError(f"{self.url}: cannot write {key!r}: {error}") from error
        return self.info(key) or ObjectInfo(key=key, size=path.stat().st_size)

    def put_bytes(self, key: str, data: bytes, durable: bool = True) -> ObjectInfo:
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

    def remove_if_unchanged(self, listed: dict[str, str | None]) -> tuple[int, list[str]]:
        """Conditional deletes, each pinned to the generation listed (`if_generation_match`), after a look at the
        object (servers that ignore the precondition, as the emulator does, are still caught but for a window)."""
        deleted, changed = 0, []
        for key, etag in listed.items():
            now = self.info(key)
            if now is None:
                continue
            if etag is not None and now.etag != etag:
                changed.append(key)
                continue
            generation = etag.rpartition(":")[2] if etag else ""
            try:
                self.bucket.blob(self._key(key)).delete(if_generation_match=int(generation) if generation.isdigit()
                                                        else None)  # fmt: skip
                deleted += 1
            except gexc.NotFound:
                continue
            except gexc.PreconditionFailed:
                changed.append(key)
        return deleted, changed

    def open_multipart(self, key: str, upload_id: str | None = None) -> PartWriter:
        return _GCSComposite(self, key, upload_id)

    def root_exists(self) -> bool:
        try:
            return self.client.lookup_bucket(self.bucket_name) is not None
        except (gexc.Forbidden, gexc.Unauthorized) as error:
            raise StoreError(f"{self.url}: cannot read the bucket: {error.message}", permanent=True) from error

    def region(self) -> str | None:
        """The bucket's `location` (GCS says US-CENTRAL1, or a multi-region such as US or EU), lower case."""
        try:
            bucket = self.client.get_bucket(self.bucket_name)
        except gexc.NotFound as error:
            raise StoreError(f"{self.url}: no such bucket (create it or fix the URL)", permanent=True) from error
        except (gexc.Forbidden, gexc.Unauthorized) as error:
            raise StoreError(f"{self.url}: cannot read the bucket: {error.message}", permanent=True) from error
        return bucket.location.lower() if bucket.location else None

    def copy_object(self, key: str, destination, destination_key: str) -> ObjectInfo | None:
        if not isinstance(destination, GCSStore) or destination.spec.endpoint != self.spec.endpoint:
            return None
        source = self.bucket.blob(self._key(key))
        target = destination.bucket.blob(destination._key(destination_key))
        token, _, _ = target.rewrite(source)
        while token is not None:  # large objects are rewritten in several calls, all server-side
            token, _, _ = target.rewrite(source, token=token)
        return destination.info(destination_key)

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (used by the embedded stack's seeding, not by migrations)."""
        if self.client.lookup_bucket(self.bucket_name) is None:
            self.client.create_bucket(self.bucket_name)


class _Windows(io.RawIOBase):
    """Bytes [offset, stop) as consecutive ranged downloads of at most WINDOW bytes each.

    Each window is one request the client retries on its own; a download that breaks raises, and
    the ResumingReader around this stream reopens it at the byte where it stopped.
    """

    WINDOW = 8 * _MiB

    def __init__(self, blob: storage.Blob, offset: int, stop: int, generation: int | None) -> None:
        self.blob, self.offset, self.stop, self.generation = blob, offset, stop, generation
        self.buffer = io.BytesIO()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.buffer.read(size)
        if data or self.offset >= self.stop:
            return data
        last = min(self.stop, self.offset + self.WINDOW) - 1
        try:
            window = self.blob.download_as_bytes(start=self.offset, end=last, if_generation_match=self.generation)
        except gexc.PreconditionFailed as error:
            where = f"{self.blob.name}: changed while being read (generation {self.generation})"
            raise ObjectChangedError(where) from error
        except gexc.NotFound as error:
            raise MissingObjectError(f"{self.blob.name}: deleted while being read") from error
        if not window:
            return b""
        self.offset += len(window)
        self.buffer = io.BytesIO(window)
        return self.buffer.read(size)


class _GCSComposite(PartWriter):
    """Parts are temporary objects; `compose` (atomic, server-side, 32 sources a call) publishes them.

    Chosen over a resumable-upload session because every uploaded part is a durable object: a
    different worker resumes from the part list alone.
    """

    def __init__(self, store: GCSStore, key: str, upload_id: str | None) -> None:
        self.store, self.key = store, key
        self.upload_id = upload_id or uuid.uuid4().hex
        # Parts live in the store's metadata area: compose needs them in the same bucket.
        self.area: GCSStore = store.metadata  # type: ignore[assignment]
        if self.area.bucket_name != store.bucket_name:
            raise StoreError(f"{store.url}: the metadata location must be in the same bucket (compose)", True)
        self.part_prefix = join_key("uploads", self.upload_id)

    def _part_key(self, number: int) -> str:
        return f"{self.part_prefix}/{number:05d}"

    def put_part(self, number: int, data: bytes) -> PartInfo:
        self.area.put_bytes(self._part_key(number), data)
        return PartInfo(number=number, size=len(data), token=self._part_key(number))

    def uploaded_parts(self) -> list[PartInfo]:
        parts = []
        for obj in self.area.list(self.part_prefix):
            name = obj.key.rsplit("/", 1)[-1]
            if name.isdigit():
                parts.append(PartInfo(number=int(name), size=obj.size, token=obj.key))
        return sorted(parts, key=lambda p: p.number)

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        area = self.area
        sources = [area.bucket.blob(area._key(p.token)) for p in sorted(parts, key=lambda p: p.number)]
        level = 0
        while len(sources) > 32:  # compose takes at most 32 sources: fold into intermediates
            folded = []
            for index in range(0, len(sources), 32):
                blob = area.bucket.blob(area._key(f"{self.part_prefix}/fold-{level}-{index:05d}"))
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
        for obj in list(self.area.list(self.part_prefix)):
            self.area.remove(obj.key)
