"""Run the delta engine's activities directly (no workflow), as the two workers would."""

from __future__ import annotations

from temporalio.testing import ActivityEnvironment

from activities.stores import StoreSpec
from activities.transfer.delta import Totals
from activities.transfer.sync import ApplyInput, RangeInput, apply_range, fingerprint_range


def sync(source: str, target: str, path: str = "", **options) -> tuple[Totals, int]:
    """Sync every range; return the totals and the source bytes read to fingerprint."""
    env, after, totals, read = ActivityEnvironment(), None, Totals(), 0
    while True:
        scanned = env.run(fingerprint_range, RangeInput(source=StoreSpec(url=source), path=path, after=after,
                                                        max_objects=options.pop("batch", 500)))  # fmt: skip
        applied = env.run(apply_range, ApplyInput(source=StoreSpec(url=source), target=StoreSpec(url=target), path=path,
                                                  after=after, through=None if scanned.done else scanned.last_key,
                                                  **options))  # fmt: skip
        totals, read, after = totals.add(applied), read + scanned.bytes_read, scanned.last_key or after
        if scanned.done:
            return totals, read
