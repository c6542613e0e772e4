"""Amazon S3 and S3-compatible stores through boto3 (`s3://bucket/prefix`)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from activities.aws import aws_client
from activities.stores.base import (
    BucketStore,
    Capabilities,
    MissingObjectError,
    ObjectInfo,
    PartInfo,
    PartWriter,
    StoreError,
    StoreSpec,
    directory_prefix,
    shared_client,
)
from activities.stores.resilient import resuming

_MiB = 1 << 20
_GiB = 1 << 30
#: Error codes no retry can fix: the operator must create the bucket or grant access.
_PERMANENT = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
              "InvalidBucketName", "AccountProblem"}  # fmt: skip


def _failure(url: str, action: str, error: ClientError) -> StoreError:
    code = error.response.get("Error", {}).get("Code", "")
    hint = " (create the bucket or fix the URL)" if code == "NoSuchBucket" else ""
    return StoreError(f"{url}: cannot {action}: {code or error}{hint}", permanent=code in _PERMANENT)


class S3Store(BucketStore):
    # Provider limits are data the transfer engine reads, not branches in it.
    capabilities = Capabilities(
        server_side_copy=True,
        part_copy=True,  # UploadPartCopy with CopySourceRange and CopySourceIfMatch
        max_single_copy_bytes=5 * _GiB,
        part_bytes=8 * _MiB,
        max_parts=10_000,
        min_part_bytes=5 * _MiB,
        max_part_bytes=5 * _GiB,
        parallel_requests=32,
        max_key_bytes=1024,
    )

    def __init__(self, spec: StoreSpec) -> None:
        super().__init__(spec)
        self.bucket = self.bucket_name
        self.client = self._client(spec)
        self._transfer = TransferConfig(multipart_threshold=64 * _MiB, multipart_chunksize=64 * _MiB, max_concurrency=8)

    @staticmethod
    def _client(spec: StoreSpec):
        endpoint = spec.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3")
        # Connections for every request in flight: activities at once x parallel_requests each.
        return shared_client(("s3", endpoint, spec.credentials),
                             lambda: aws_client("s3", endpoint, spec.credentials, max_pool=128))  # fmt: skip

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        full = directory_prefix(self.prefix, prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"StartAfter": self._key(start_after)} if start_after else {}
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full, **extra):
                for item in page.get("Contents", []):
                    yield ObjectInfo.model_construct(key=self._relative(item["Key"]), size=item["Size"],
                                                     etag=item["ETag"].strip('"'))  # fmt: skip
        except ClientError as error:
            raise _failure(self.url, "list", error) from error

    def info(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _failure(self.url, f"stat {key!r}", error) from error
        return ObjectInfo(key=key, size=head["ContentLength"], etag=head["ETag"].strip('"'))

    def _get(self, key: str, start: int, end: int | None, etag: str | None = None) -> dict:
        kwargs: dict = {"IfMatch": f'"{etag}"'} if etag else {}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise MissingObjectError(f"{self.url}: no object {key!r}") from error
            if code == "InvalidRange" and start == 0:
                return {"Body": io.BytesIO(b""), "ContentLength": 0, "ETag": etag or ""}  # an empty object
            raise _failure(self.url, f"read {key!r}", error) from error

    def open_read(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        first = self._get(key, start, end)
        stop = start + first["ContentLength"]
        version = first["ETag"].strip('"') or None
        pending: list = [first["Body"]]

        def opener(offset: int, stop_: int):
            if pending and offset == start:
                return pending.pop()
            # The same version only: a resumed read never splices two versions of an object.
            return self._get(key, offset, stop_, etag=version)["Body"]

        return resuming(opener, start, stop, f"{self.url}/{key}")

    def region(self) -> str | None:
        """GetBucketLocation: no LocationConstraint means us-east-1; `EU` is the legacy name of eu-west-1."""
        try:
            answer = self.client.get_bucket_location(Bucket=self.bucket)
        except ClientError as error:
            raise _failure(self.url, "read the bucket's location", error) from error
        constraint = answer.get("LocationConstraint") or "us-east-1"
        return {"EU": "eu-west-1"}.get(constraint, constraint).lower()

    def put_file(self, key: str, path: Path, durable: bool = True) -> ObjectInfo:
        # S3 publishes an object only when its PUT or CompleteMultipartUpload succeeds: atomic.
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer)
        except ClientError as error:
            raise _failure(self.url, f"write {key!r}", error) from error
        except boto3.exceptions.S3UploadFailedError as error:
            raise StoreError(
                f"{self.url}: cannot write {key!r}: {error}", permanent="NoSuchBucket" in str(error)
            ) from error
        return self.info(key) or ObjectInfo(key=key, size=path.stat().st_size)

    def put_bytes(self, key: str, data: bytes, durable: bool = True) -> ObjectInfo:
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # lets S3 reject a damaged PUT
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentMD5=md5)
        except ClientError as error:
            raise _failure(self.url, f"write {key!r}", error) from error
        return ObjectInfo.model_construct(key=key, size=len(data), etag=response["ETag"].strip('"'))

    def remove(self, key: str) -> bool:
        if self.info(key) is None:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return True

    def remove_many(self, keys: list[str]) -> int:
        deleted = 0
        for start in range(0, len(keys), 1000):
            objects = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            try:
                reply = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": False})
            except ClientError as error:
                raise _failure(self.url, f"delete {len(objects)} objects", error) from error
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise StoreError(f"{self.url}: cannot delete {first.get('Key')!r}: {first.get('Code')} "
                                 f"({len(reply['Errors'])} of {len(objects)} failed)")  # fmt: skip
            deleted += len(reply.get("Deleted", []))
        return deleted

    def open_multipart(self, key: str, upload_id: str | None = None) -> PartWriter:
        return _S3Multipart(self, key, upload_id)

    def root_exists(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise _failure(self.url, "read the bucket", error) from error
        return True

    def copy_object(self, key: str, destination, destination_key: str) -> ObjectInfo | None:
        info = self.info(key)
        limit = self.capabilities.max_single_copy_bytes
        if (not isinstance(destination, S3Store) or destination.spec.endpoint != self.spec.endpoint
                or info is None or (limit is not None and info.size > limit)):  # fmt: skip
            return None
        try:
            destination.client.copy_object(Bucket=destination.bucket, Key=destination._key(destination_key),
                                           CopySource={"Bucket": self.bucket, "Key": self._key(key)})  # fmt: skip
        except ClientError as error:
            raise _failure(self.url, f"copy {key!r}", error) from error
        return destination.info(destination_key)

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (used by the embedded stack's seeding, not by migrations)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)


class _S3Multipart(PartWriter):
    """S3 multipart upload: parts >= 5 MiB but the last, published by CompleteMultipartUpload."""

    def __init__(self, store: S3Store, key: str, upload_id: str | None) -> None:
        self.store, self.key, self.full_key = store, key, store._key(key)
        self.upload_id = (
            upload_id or store.client.create_multipart_upload(Bucket=store.bucket, Key=self.full_key)["UploadId"]
        )

    def put_part(self, number: int, data: bytes) -> PartInfo:
        # botocore sends a CRC32 of every part (flexible checksums): S3 rejects a part damaged in transit.
        response = self.store.client.upload_part(Bucket=self.store.bucket, Key=self.full_key, UploadId=self.upload_id,
                                                 PartNumber=number, Body=data)  # fmt: skip
        return PartInfo(number=number, size=len(data), token=response["ETag"])

    def copy_part(self, number: int, source_key: str, start: int, end: int, etag: str | None) -> PartInfo | None:
        store = self.store
        condition = {"CopySourceIfMatch": f'"{etag}"'} if etag else {}
        try:
            response = store.client.upload_part_copy(
                Bucket=store.bucket, Key=self.full_key, UploadId=self.upload_id, PartNumber=number,
                CopySource={"Bucket": store.bucket, "Key": store._key(source_key)},
                CopySourceRange=f"bytes={start}-{end - 1}", **condition,
            )  # fmt: skip
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                return None  # that version is gone: the caller streams the part
            raise _failure(store.url, f"copy part of {source_key!r}", error) from error
        if etag is not None:
            # Some S3-compatible servers ignore CopySourceIfMatch on UploadPartCopy (moto does): a version
            # that changed by now may have been copied, so the caller streams (and overwrites) the part.
            current = store.info(source_key)
            if current is None or current.etag != etag:
                return None
        return PartInfo(number=number, size=end - start, token=response["CopyPartResult"]["ETag"])

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        self.store.client.complete_multipart_upload(
            Bucket=self.store.bucket, Key=self.full_key, UploadId=self.upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.token}
                                       for p in sorted(parts, key=lambda p: p.number)]},
        )  # fmt: skip
        info = self.store.info(self.key)
        assert info is not None
        return info

    def uploaded_parts(self) -> list[PartInfo] | None:
        parts, marker = [], 0
        while True:
            try:
                page = self.store.client.list_parts(Bucket=self.store.bucket, Key=self.full_key,
                                                    UploadId=self.upload_id, PartNumberMarker=marker)  # fmt: skip
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return None
                raise
            parts += [PartInfo(number=p["PartNumber"], size=p["Size"], token=p["ETag"]) for p in page.get("Parts", [])]
            if not page.get("IsTruncated"):
                return parts
            marker = page["NextPartNumberMarker"]

    def abort(self) -> None:
        try:
            self.store.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.full_key, UploadId=self.upload_id
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
