"""Counting apart from moving: what one batch sent across the boundary, each byte once, whatever crashed.

Kept apart from the copying (`sync.py`), as rclone keeps `fs/accounting` apart from `fs/sync`.

An attempt's totals are what the workflow adds for the batch (only the last attempt's result counts),
so each attempt must report every byte the batch sent, including what killed attempts sent. Heartbeats
cannot carry that: they are throttled, and a kill loses whatever was committed after the last one
that reached the server (a 192 MiB sync reported 96 MiB). So before it writes anything an attempt
records a *receipt* per object it is about to write (its root and the bytes and chunks it will send)
in the target's metadata area, beside the batch's staged manifests. A later attempt finds the objects
an earlier one committed already equal at the target and counts them from their receipts; the objects
it writes itself it counts as it commits them (parts an earlier attempt uploaded included, through the
upload records); small objects' bytes handed over with the range count once per attempt that used them.
"""

from __future__ import annotations

import json
import threading
import zlib

from pydantic import BaseModel

from activities.stores import Store
from activities.transfer.chunking import ObjectManifest
from activities.transfer.delta import ChunkIndex, ObjectProgress, Totals


class Receipt(BaseModel):
    """What writing one object costs: recorded before it is written, counted if an earlier attempt did."""

    root: str
    bytes: int
    chunks: int


def planned_receipt(manifest: ObjectManifest, index: ChunkIndex, staged: bool) -> Receipt:
    """The bytes that will cross for `manifest`: all of a small object (none when its bytes came staged with
    the range), the chunks of a large one the target holds nowhere."""
    if manifest.small:
        sent = 0 if staged else manifest.size
        return Receipt(root=manifest.root, bytes=sent, chunks=len(manifest.chunks) if not staged else 0)
    missing = [c for c in manifest.chunks if c.digest not in index.where]
    return Receipt(root=manifest.root, bytes=sum(c.length for c in missing), chunks=len(missing))


class Meter:
    """The running totals of one attempt at a batch, thread-safe, and what its heartbeats show."""

    def __init__(self, area: Store | None = None, receipts_key: str | None = None) -> None:
        self.area, self.receipts_key = area, receipts_key
        self.lock = threading.Lock()
        self.totals = Totals()
        self.in_flight: dict[str, ObjectProgress] = {}
        self.partial: dict[str, Totals] = {}
        self._earlier: dict[str, Receipt] | None = None

    # -- receipts ----------------------------------------------------------------------------------

    def earlier_receipts(self) -> dict[str, Receipt]:
        """Receipts an earlier attempt at this batch wrote (none on a first attempt)."""
        if self._earlier is None:
            self._earlier = {}
            if self.area is not None and self.receipts_key is not None and self.area.exists(self.receipts_key):
                raw = json.loads(zlib.decompress(self.area.read_bytes(self.receipts_key)))
                self._earlier = {key: Receipt.model_validate(value) for key, value in raw.items()}
        return self._earlier

    def record_receipts(self, receipts: dict[str, Receipt]) -> None:
        """Before anything is written: what each object this attempt writes will cost (kept with earlier ones)."""
        if self.area is None or self.receipts_key is None or not receipts:
            return
        merged = {**self.earlier_receipts(), **receipts}
        data = {key: receipt.model_dump() for key, receipt in merged.items()}
        self.area.put_bytes(self.receipts_key, zlib.compress(json.dumps(data).encode(), 6))

    def count_earlier(self, receipts: list[Receipt]) -> None:
        """Objects an earlier attempt committed (found equal at the target): what they cost, once."""
        with self.lock:
            for receipt in receipts:
                self.totals.bytes_transferred += receipt.bytes
                self.totals.chunks_transferred += receipt.chunks
                self.totals.objects_changed += 1
                self.totals.objects_verified += 1

    # -- this attempt ------------------------------------------------------------------------------

    def count_payload(self, payload: dict[str, bytes]) -> None:
        """Small objects' bytes the source worker staged: they crossed when staged, used or not."""
        with self.lock:
            self.totals.bytes_transferred += sum(len(body) for body in payload.values())

    def count_small(self, objects: int, read: int, chunks: int) -> None:
        with self.lock:
            self.totals.bytes_transferred += read
            self.totals.chunks_transferred += chunks
            self.totals.objects_verified += objects
            self.totals.objects_changed += objects

    def progress(self, key: str, progress: ObjectProgress, moved: Totals) -> None:
        """A large object's parts so far (heartbeats show them so any worker can resume the upload)."""
        with self.lock:
            self.in_flight[key] = progress.model_copy(deep=True)
            self.partial[key] = moved.model_copy()

    def count_large(self, key: str, moved: Totals, resumed_bytes: int, resumed_chunks: int) -> None:
        """A large object committed: what this attempt sent plus the parts earlier attempts uploaded."""
        moved = moved.model_copy()
        moved.bytes_transferred += resumed_bytes
        moved.chunks_transferred += resumed_chunks
        with self.lock:
            totals = self.totals.add(moved)
            totals.objects_changed += 1
            self.totals = totals
            self.in_flight.pop(key, None)
            self.partial.pop(key, None)

    def skip(self) -> None:
        with self.lock:
            self.totals.objects_skipped += 1

    def heartbeat_details(self) -> dict:
        """Counts for progress displays, and the uploads in flight (how another worker resumes them)."""
        with self.lock:
            moved = self.totals
            for partial in self.partial.values():
                moved = moved.add(partial)
            return {"objects_changed": moved.objects_changed, "bytes": moved.bytes_transferred,
                    "in_flight": [p.model_dump(mode="json") for p in self.in_flight.values()]}  # fmt: skip
