"""Storage backends behind one small interface: local files, S3 (boto3) and GCS.

Like rclone's backends, each adapter implements the required operations and declares optional
features as data (`Capabilities`); callers check them and fall back instead of branching on the
provider.
"""

from activities.stores.base import (
    Capabilities,
    InvalidKeyError,
    ObjectInfo,
    PartInfo,
    PartWriter,
    Store,
    StoreError,
    StoreSpec,
    join_key,
    safe_key,
)
from activities.stores.registry import open_store

__all__ = [
    "Capabilities",
    "InvalidKeyError",
    "ObjectInfo",
    "PartInfo",
    "PartWriter",
    "Store",
    "StoreError",
    "StoreSpec",
    "join_key",
    "open_store",
    "safe_key",
]
