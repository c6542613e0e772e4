"""Bounded thread pools inside an activity: many objects in flight, heartbeats while waiting, a prompt stop.

Object stores are bound by per-request latency, so an activity keeps many requests in flight
(`Capabilities.parallel_requests`); a million tiny objects must not each cost a future and a context
copy, so small objects are handed to the pool in slices. The activity's own thread waits on the
pool, heartbeats every second (pool threads may hash one large object for minutes) and, when the
activity is cancelled, sets the stop event every task checks before it commits anything and waits
for the threads to return: when `run_pool` returns, nothing is still writing.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import CancelledError

T = TypeVar("T")
S = TypeVar("S")
#: Seconds between heartbeats while the pool works.
BEAT_S = 1.0


def run_pool(tasks: list[Callable[[], T]], workers: int, stop: threading.Event,
             beat: Callable[[], None]) -> list[tuple[Callable[[], T], T | BaseException]]:  # fmt: skip
    """Run tasks in up to `workers` threads; return each task with its result or its error.

    Pool threads run in a copy of the activity's context (heartbeats are context-bound)."""
    if not tasks:
        return []
    outcomes: list[tuple[Callable[[], T], T | BaseException]] = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks))), thread_name_prefix="skyshift-sync") as pool:
        futures: dict[Future, Callable[[], T]] = {
            pool.submit(contextvars.copy_context().run, task): task for task in tasks
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=BEAT_S, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                outcomes.append((futures[future], error if error is not None else future.result()))
            if cancelled() and not stop.is_set():
                stop.set()
                for future in pending:
                    future.cancel()
            beat()
    return outcomes


def slices(items: Sequence[S], workers: int, per_worker: int = 4) -> list[Sequence[S]]:
    """Split items into about `workers * per_worker` contiguous slices (load balance without a task each)."""
    if not items:
        return []
    size = max(1, -(-len(items) // (max(1, workers) * per_worker)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def cancelled() -> bool:
    return activity.in_activity() and activity.is_cancelled()


def raise_if_cancelled(stop: threading.Event) -> None:
    if stop.is_set() or cancelled():
        raise CancelledError("stopped before committing anything more")


class Ticker:
    """Calls `beat` at most once a second from a loop that has no pool to wait on (a long listing)."""

    def __init__(self, beat: Callable[[], None], every_s: float | None = None) -> None:
        import time

        self._clock = time.monotonic
        self.beat, self.every_s, self.last = beat, every_s, self._clock()

    def __call__(self) -> None:
        now = self._clock()
        if now - self.last >= (BEAT_S if self.every_s is None else self.every_s):
            self.last = now
            self.beat()


class Counter:
    """A number many pool threads add to (bytes hashed) or take from (a budget of bytes kept)."""

    def __init__(self, value: int = 0) -> None:
        self.lock, self.value = threading.Lock(), value

    def add(self, n: int) -> None:
        with self.lock:
            self.value += n

    def take(self, n: int) -> bool:
        """Take `n` from what is left, if that much is."""
        with self.lock:
            if n > self.value:
                return False
            self.value -= n
            return True
