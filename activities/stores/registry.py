"""Pick the backend for a store URL."""

from __future__ import annotations

from activities.stores.base import Store, StoreError, StoreSpec


def open_store(spec: StoreSpec | str) -> Store:
    """Open the store a URL names: file:///path, s3://bucket/prefix or gs://bucket/prefix."""
    if isinstance(spec, str):
        spec = StoreSpec(url=spec)
    scheme = spec.url.split("://", 1)[0] if "://" in spec.url else ""
    if scheme == "file":
        from activities.stores.local import LocalStore

        return LocalStore(spec)
    if scheme == "s3":
        from activities.stores.s3 import S3Store

        return S3Store(spec)
    if scheme == "gs":
        from activities.stores.gcs import GCSStore

        return GCSStore(spec)
    raise StoreError(f"unsupported store URL {spec.url!r}: use file:///path, s3://bucket/prefix or gs://bucket/prefix")
