"""Where skyshift keeps its metadata for a sync, and how workloads are listed without it.

Every piece of metadata lives in the *target's* metadata area (`Store.metadata`: beside the
target's root, see `activities.stores.base.metadata_spec`), never in the source and never inside
the synced prefix. Names here are keys relative to that area:

    staging/<sync>/<batch>.manifests   the source worker's manifests of one key range, for the target
    staging/<sync>/<batch>.deletes     target keys the source no longer has (deleted last, if asked)
    ledger/<migration>/<workload>/<stamp>.json   what one batch created or overwrote (undo data)
    backup/<migration>/<workload>/<stamp>/<key>  an overwritten object's prior bytes
    uploads/records/<hash>.json        an in-flight multipart upload, so any later run resumes it
    uploads/<id>/<part>                parts of GCS composite and local multipart writes
    archive/<migration>/<workload>.json          the decommission archive manifest
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from activities.stores import ObjectInfo, Store
from activities.stores.base import METADATA_NAME, reserved_prefix

#: skyshift's name at the root of any store: its metadata area when that lies inside (a bucket- or
#: `/`-rooted store), and where skyshift 0.1 wrote manifests and ledgers into the data. Like `.git`,
#: it is reserved: a source object under it is refused by name, never synced or parsed.
RESERVED = f"{METADATA_NAME}/"


def reserved_reason(key: str) -> str | None:
    """Why `key` may not be synced (it lies under the reserved name), or None."""
    if not (key + "/").startswith(RESERVED):
        return None
    return (f"'{RESERVED}' at a store's root is skyshift's reserved name (its metadata, or what skyshift 0.1 wrote "
            "into the data); rename the object, or delete the directory if it is 0.1's metadata")  # fmt: skip


def user_objects(store: Store, path: str = "", after: str | None = None,
                 include_reserved: bool = False) -> Iterator[ObjectInfo]:  # fmt: skip
    """The workload's objects under `path` in key order, without anything under the reserved name.

    The sync's source listing passes `include_reserved` so it can refuse those objects *by name*
    instead of leaving them out unnoticed.
    """
    reserved = {RESERVED} | ({prefix} if (prefix := reserved_prefix(store.spec)) else set())
    listing = store.list(path, start_after=after)
    if include_reserved:
        return listing
    return (o for o in listing if not any(o.key.startswith(r) for r in reserved))


def sync_name(workflow_id: str) -> str:
    """A workflow id as one safe key segment."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", workflow_id)[:200] or "sync"


def staging_key(sync: str, batch: int, kind: str = "manifests") -> str:
    return f"staging/{sync_name(sync)}/{batch:08d}.{kind}"


def ledger_prefix(ledger: str) -> str:
    return f"ledger/{ledger.strip('/')}/"


def backup_key(ledger: str, stamp: str, key: str) -> str:
    return f"backup/{ledger.strip('/')}/{stamp}/{key}"


def archive_key(migration_id: str, workload: str) -> str:
    return f"archive/{sync_name(migration_id)}/{workload}.json"
