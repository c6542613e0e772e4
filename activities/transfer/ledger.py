"""The migration ledger: what each batch created or overwrote at the target, recorded *before* it acts.

One entry per batch, in the target's metadata area, named by the batch's workflow time so entries
sort in the order they were written. An overwritten object's prior bytes are copied (server-side
where the store can) into the metadata area before the overwrite. Rollback walks the entries
newest first: it restores every overwritten object byte-identical, deletes every created one, then
drops the entry, so the undo is idempotent and can be retried any number of times. Undoing in
reverse order is what makes "created by the POC sync, overwritten by the final sync" end deleted,
and "existed, overwritten twice" end with its original bytes.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field
from temporalio import activity

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import Store, StoreSpec, join_key, open_store
from activities.transfer.layout import backup_key, ledger_prefix

#: Ledgers written by skyshift 0.1 were one JSON object per workload inside the target store.
_LEGACY_PREFIX = ".skyshift/ledger/"


class LedgerInput(BaseModel):
    target: StoreSpec
    ledger_key: str = Field(description="The ledger's name (`<migration>/<workload>`), or a 0.1 ledger's key")


class Overwritten(BaseModel):
    key: str
    backup: str = Field(description="Key of the prior bytes in the target's metadata area")
    etag: str | None = Field(None, description="The prior version's etag, for the audit")


class LedgerEntry(BaseModel):
    created: list[str] = Field(default_factory=list)
    overwritten: list[Overwritten] = Field(default_factory=list)


class UndoResult(BaseModel):
    deleted: int = 0
    restored: int = 0
    entries: int = 0


def ledger_key(migration_id: str, workload: str) -> str:
    """The ledger name a migration passes to its syncs and to the compensation that undoes them."""
    return f"{migration_id}/{workload}"


def legacy_ledger_name(key: str) -> str:
    """The ledger a 0.1 ledger key (`.skyshift/ledger/<migration>/<workload>.json`) continues in."""
    return key.removeprefix(_LEGACY_PREFIX).removesuffix(".json") if key.startswith(_LEGACY_PREFIX) else key


def entry_key(ledger: str, stamp: str) -> str:
    return ledger_prefix(ledger) + f"{stamp}.json"


def copy(source: Store, key: str, destination: Store, destination_key: str) -> None:
    """Copy one object between stores: server-side when the provider can (`server_side_copy`), else
    streamed in parts through the worker."""
    if source.capabilities.server_side_copy and source.copy_object(key, destination, destination_key) is not None:
        return
    with source.open_read(key) as stream:
        writer = destination.open_multipart(destination_key)
        parts, number = [], 1
        while block := stream.read(64 << 20):
            parts.append(writer.put_part(number, block))
            number += 1
        if not parts:
            parts.append(writer.put_part(1, b""))
        writer.complete(parts)


def preserve(target: Store, ledger: str, stamp: str, key: str) -> Overwritten:
    """Copy the target's current `key` into the metadata area before it is overwritten."""
    backup = backup_key(ledger, stamp, key)
    info = target.info(key)
    if info is not None:
        copy(target, key, target.metadata, backup)
    return Overwritten(key=key, backup=backup, etag=info.etag if info else None)


def record(target: Store, ledger: str, stamp: str, entry: LedgerEntry) -> None:
    """Merge `entry` into the batch's ledger entry: a retried batch must not forget what an earlier
    attempt recorded (it may have committed objects the retry now sees as unchanged)."""
    if not entry.created and not entry.overwritten:
        return
    area, key = target.metadata, entry_key(ledger, stamp)
    if area.exists(key):
        earlier = LedgerEntry.model_validate_json(area.read_bytes(key))
        kept = {o.key for o in earlier.overwritten}
        overwritten = earlier.overwritten + [o for o in entry.overwritten if o.key not in kept]
        # An object an attempt preserved existed before the sync: a retry that sees it (say, through a
        # stale listing) as new must not turn its undo into a delete.
        preserved = {o.key for o in overwritten}
        created = sorted((set(earlier.created) | set(entry.created)) - preserved)
        entry = LedgerEntry(created=created, overwritten=overwritten)
    area.put_bytes(key, entry.model_dump_json().encode())


def _undo_legacy(target: Store, key: str) -> UndoResult:
    if not target.exists(key):
        return UndoResult()
    created = json.loads(target.read_bytes(key))["created"]
    deleted = 0
    for name in created:
        deleted += target.remove(name)
        target.remove(join_key(".skyshift/manifests", f"{name}.json"))
    target.remove(key)
    return UndoResult(deleted=deleted, entries=1)


@activity.defn
@fail_fast_on_permanent_errors
def remove_created(request: LedgerInput) -> UndoResult:
    """Compensation for a migration's copies: restore what it overwrote, delete what it created."""
    target = open_store(request.target)
    area, result = target.metadata, UndoResult()
    name = legacy_ledger_name(request.ledger_key)
    entries = sorted((o.key for o in area.list(ledger_prefix(name).rstrip("/"))), reverse=True)
    for key in entries:
        entry = LedgerEntry.model_validate_json(area.read_bytes(key))
        for item in entry.overwritten:
            if area.exists(item.backup):
                copy(area, item.backup, target, item.key)
                area.remove(item.backup)
                result.restored += 1
            activity.heartbeat(result.model_dump())
        for name in entry.created:
            result.deleted += target.remove(name)
            if result.deleted % 100 == 0:
                activity.heartbeat(result.model_dump())
        area.remove(key)  # done: a retry of this compensation starts with the next older entry
        result.entries += 1
    if request.ledger_key.startswith(_LEGACY_PREFIX):  # written by a 0.1 worker before the upgrade
        legacy = _undo_legacy(target, request.ledger_key)
        result.deleted, result.entries = result.deleted + legacy.deleted, result.entries + legacy.entries
    activity.logger.info("undid %d ledger entries at %s: %s", result.entries, target.url, result)
    return result
