"""The creation ledger: which target objects a migration created, recorded *before* creating them.

Rollback deletes exactly the ledger's keys (never an object that was there before) and then the
ledger itself; every step is idempotent, so the compensation can be retried any number of times.
"""

from __future__ import annotations

import json

from pydantic import BaseModel
from temporalio import activity

from activities.stores import Store, StoreSpec, join_key, open_store
from activities.transfer.layout import INTERNAL_PREFIX
from activities.transfer.manifest import remove_with_manifest


class LedgerInput(BaseModel):
    target: StoreSpec
    ledger_key: str


def ledger_key(migration_id: str, workload: str) -> str:
    return join_key(INTERNAL_PREFIX, "ledger", migration_id, f"{workload}.json")


def record_created(target: Store, key: str, created: list[str]) -> None:
    """Merge keys into the ledger: a retried attempt must not forget what an earlier one created."""
    if not created:
        return
    existing: list[str] = json.loads(target.read_bytes(key))["created"] if target.exists(key) else []
    target.put_bytes(key, json.dumps({"created": sorted(set(existing) | set(created))}).encode())


@activity.defn
def remove_created(request: LedgerInput) -> int:
    """Compensation for a migration's copies: delete the objects it created, then the ledger."""
    target = open_store(request.target)
    if not target.exists(request.ledger_key):
        return 0
    created = json.loads(target.read_bytes(request.ledger_key))["created"]
    removed = sum(remove_with_manifest(target, key) for key in created)
    target.remove(request.ledger_key)
    activity.logger.info("removed %d objects created by the migration at %s", removed, target.url)
    return removed
