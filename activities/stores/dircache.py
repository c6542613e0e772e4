"""Sorted listings of large local directories, kept in memory while the directory is unchanged.

S3 and GCS list a prefix in key order from any key on; a POSIX directory can only be read whole and
in no particular order. Reading and sorting a flat directory of a million files for each key range
of a sync made the listing quadratic (a thousand ranges, each reading a million names). Here a
large directory's sorted names are read once per process and reused for as long as the directory's
inode, mtime and ctime say nothing changed; this process's own writes and deletes update the names
in place (under the directory's lock, checked against the signature before and after), so a target
being filled keeps its listing too.

Limits, stated rather than hidden: directory timestamps tick at the kernel's coarse clock, so
another process's change in the same tick as this process's last change is only seen at the next
change. A scan taken within `RACY_NS` of the directory's last change is therefore never trusted
(the next listing reads the directory again), and a directory this process writes to is trusted
after its own writes: a target object missed that way is copied again (the ledger keeps what it
held before), never lost.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from sortedcontainers import SortedList  # a well-kept sorted container: O(log n) inserts in a million names

T = TypeVar("T")
#: Smaller directories are read again each time: cheaper than keeping them.
MIN_ENTRIES = 1024
#: Names kept over all directories (~70 bytes each): older directories are dropped first.
MAX_NAMES = 3_000_000
#: A scan this close to the directory's last change may have missed a change in the same clock tick.
RACY_NS = 2_000_000_000
#: Names handed out per lock hold, so a long listing never blocks writers of the directory.
SLICE = 1024


def _signature(directory: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(directory)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns


def scan(directory: str) -> list[str]:
    """A directory's entries as sort keys, unsorted: files by name, directories as "name/" (key order:
    S3 and GCS list `a/b` after `a.txt` because '/' sorts after '.')."""
    with os.scandir(directory) as entries:
        return [entry.name + "/" if entry.is_dir() else entry.name for entry in entries]


@dataclass
class _Listing:
    signature: tuple[int, int, int]
    names: SortedList
    racy: bool
    lock: threading.Lock = field(default_factory=threading.Lock)


class DirectoryListings:
    """The process's sorted listings of large directories (thread-safe)."""

    def __init__(self, min_entries: int = MIN_ENTRIES, max_names: int = MAX_NAMES) -> None:
        self.min_entries, self.max_names = min_entries, max_names
        self._entries: OrderedDict[str, _Listing] = OrderedDict()
        self._lock = threading.Lock()
        self._scanning: dict[str, threading.Lock] = {}
        self._written: set[str] = set()  # directories this process writes to (see `_listing`)
        self.scans: Counter[str] = Counter()  # full reads of each directory, for tests and benchmarks

    def names_after(self, directory: str, after: str | None) -> Iterator[str]:
        """Sort keys of `directory` greater than `after`, in order, a slice at a time."""
        listing = self._listing(directory)
        if listing is None:  # small or changing: read it now, sorted
            names = sorted(scan(directory))
            self.scans[directory] += 1
            start = 0 if after is None else bisect.bisect_right(names, after)
            yield from names[start:]
            return
        while True:
            with listing.lock:
                start = 0 if after is None else listing.names.bisect_right(after)
                batch = list(listing.names.islice(start, start + SLICE))
            yield from batch
            if len(batch) < SLICE:
                return
            after = batch[-1]

    def _listing(self, directory: str) -> _Listing | None:
        signature = _signature(directory)
        if signature is None:
            return None
        with self._lock:
            listing = self._entries.get(directory)
            if listing is not None and listing.signature == signature and not listing.racy:
                self._entries.move_to_end(directory)
                return listing
            guard = self._scanning.setdefault(directory, threading.Lock())
        with guard:  # one thread reads a large directory; the others wait for its result
            with self._lock:
                listing = self._entries.get(directory)
                if listing is not None and listing.signature == _signature(directory) and not listing.racy:
                    return listing
            started = time.time_ns()
            before = _signature(directory)
            names = scan(directory)
            after = _signature(directory)
            self.scans[directory] += 1
            if after is None or before != after or len(names) < self.min_entries:
                with self._lock:
                    self._entries.pop(directory, None)
                return None
            # Racy: the directory changed within a clock tick or so of the scan. Trusted anyway where this process
            # is the writer (a target being filled), as the module says; otherwise scans back to back while
            # the writes go on would each be distrusted and the listing read again and again.
            racy = after[1] >= started - RACY_NS and directory not in self._written
            listing = _Listing(after, SortedList(names), racy=racy)
            with self._lock:
                self._entries[directory] = listing
                self._evict()
            return listing

    def _evict(self) -> None:
        total = sum(len(entry.names) for entry in self._entries.values())
        while total > self.max_names and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            total -= len(dropped.names)

    def own_change(self, directory: str, operation: Callable[[], T], added: str | None = None,
                   removed: str | None = None) -> T:  # fmt: skip
        """Run `operation` (a create, rename or delete in `directory` by this process) and keep the
        directory's listing current: `added`/`removed` are the sort keys it adds or removes.

        While another thread of this process reads the directory for a listing, the change waits for it:
        a scan that sees the directory change under it is thrown away, and a target directory being filled
        by several ranges at once then never kept a listing (each range read all of it again: 450 objects/s
        at 580,000 files, from 3,000/s)."""
        with self._lock:
            listing = self._entries.get(directory)
            guard = self._scanning.get(directory)
            if len(self._written) > 1_000_000:  # bounded: forgetting only costs a directory one more scan
                self._written.clear()
            self._written.add(directory)
        if listing is None:
            if guard is None:
                return operation()
            with guard:  # held by a scan in progress: this change comes after it, and updates its listing
                with self._lock:
                    listing = self._entries.get(directory)
                if listing is None:
                    return operation()
        with listing.lock:
            before, done = _signature(directory), False
            try:
                result = operation()
                done = True
            finally:
                after = _signature(directory)
                with self._lock:
                    current = self._entries.get(directory) is listing
                if current and done and after is not None and before == listing.signature:
                    if added is not None and added not in listing.names:
                        listing.names.add(added)
                    if removed is not None:
                        listing.names.discard(removed)
                    # This process writes here: its own changes are known, so the listing is trusted.
                    listing.signature, listing.racy = after, False
                elif current and after != listing.signature:
                    with self._lock:
                        self._entries.pop(directory, None)
        return result

    def forget(self, directory: str) -> None:
        with self._lock:
            self._entries.pop(directory, None)


#: The process's listings, shared by every LocalStore (stores are opened per activity).
listings = DirectoryListings()
