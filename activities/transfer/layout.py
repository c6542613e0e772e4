"""Where skyshift keeps its own metadata inside a store, and how workloads are listed without it."""

from __future__ import annotations

from collections.abc import Iterator

from activities.stores import ObjectInfo, Store

#: Manifests, ledgers, archive manifests and in-flight upload parts live under this prefix.
INTERNAL_PREFIX = ".skyshift/"


def user_objects(store: Store, path: str = "", after: str | None = None) -> Iterator[ObjectInfo]:
    """The workload's objects under `path` in key order, skipping skyshift's own metadata."""
    return (o for o in store.list(path, start_after=after) if not o.key.startswith(INTERNAL_PREFIX))
