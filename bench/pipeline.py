"""The sync activities run the way `DatasetSyncWorkflow` runs them, without Temporal in between.

A source worker process fingerprints range N+1 while a target worker process applies up to
`window` ranges at once (in threads, as a worker runs activities), then `finish_sync`: the same
calls, inputs and order as the workflow's, each side with its own interpreter (its own GIL), as the
two workers are deployed. Benchmarks use it to measure the engine itself; `--json` results of the
real workflow come from `skyshift sync`.
"""

from __future__ import annotations

import multiprocessing
import resource
import threading
import time
import traceback
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from activities.stores import StoreSpec
from activities.transfer.delta import Totals

ACTIVITIES = ("fingerprint_batch", "apply_batch", "finish_sync")


def _serve(connection, threads: int, overrides: dict[str, dict]) -> None:
    """A worker process: run each request in a thread, send back (id, result JSON or error text).
    `overrides`: capability fields per store class name, set before serving (a benchmark's variant)."""
    from temporalio.testing import ActivityEnvironment

    from activities.stores.gcs import GCSStore
    from activities.stores.local import LocalStore
    from activities.stores.s3 import S3Store
    from activities.transfer import sync

    for store in (LocalStore, S3Store, GCSStore):
        if store.__name__ in overrides:
            store.capabilities = store.capabilities.model_copy(update=overrides[store.__name__])

    lock = threading.Lock()
    models = {"fingerprint_batch": sync.BatchInput, "apply_batch": sync.ApplyBatchInput,
              "finish_sync": sync.FinishInput}  # fmt: skip

    def run(call_id: str, name: str, payload: str) -> None:
        try:
            result = ActivityEnvironment().run(getattr(sync, name), models[name].model_validate_json(payload))
            reply = (call_id, result.model_dump_json(), None)
        except BaseException:  # reported to the driver, which raises it
            reply = (call_id, None, traceback.format_exc())
        with lock:
            connection.send(reply)

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            while True:
                message = connection.recv()
                if message is None:
                    break
                if message == "rss":
                    with lock:
                        connection.send(("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None))
                    continue
                pool.submit(run, *message)
    finally:
        from activities.transfer import parallel

        parallel.shutdown()


class Worker:
    """A process serving the sync activities (the stand-in for `skyshift-worker --env`)."""

    def __init__(self, threads: int, overrides: dict[str, dict] | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        # Not a daemon: a worker process starts processes of its own (fingerprinting on every core).
        self.process = context.Process(target=_serve, args=(child, threads, overrides or {}))
        self.process.start()
        self.pending: dict[str, Future] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                call_id, result, error = self.connection.recv()
            except (EOFError, OSError):
                return
            with self.lock:
                future = self.pending.pop(call_id)
            if error is not None:
                future.set_exception(RuntimeError(error))
            else:
                future.set_result(result)

    def submit(self, name: str, request) -> Future:
        call_id = uuid.uuid4().hex if name != "rss" else "rss"
        future: Future = Future()
        with self.lock:
            self.pending[call_id] = future
            self.connection.send("rss" if name == "rss" else (call_id, name, request.model_dump_json()))
        return future

    def peak_rss(self) -> int:
        return self.submit("rss", None).result()

    def close(self) -> None:
        self.connection.send(None)
        self.process.join(timeout=30)


@dataclass
class Run:
    totals: Totals
    seconds: float
    batches: int
    fingerprint_bytes_read: int
    peak_rss: dict[str, int] = field(default_factory=dict)


def sync(source: StoreSpec, target: StoreSpec, path: str = "", *, batch_objects: int = 1000, window: int = 4,
         inline_bytes: int | None = None, overrides: dict[str, dict] | None = None) -> Run:  # fmt: skip
    """One sync, pipelined like the workflow, by a fresh source worker and a fresh target worker."""
    from activities.transfer import sync as activities

    inline = activities.INLINE_BYTES if inline_bytes is None else inline_bytes
    src = Worker(threads=2, overrides=overrides)
    dst = Worker(threads=max(2, window), overrides=overrides)
    src.peak_rss(), dst.peak_rss()  # both have started and imported the engine: a worker is long-lived
    sync_id, cursor, batches, read = f"bench-{uuid.uuid4().hex[:8]}", None, 0, 0
    totals, deletable, target_objects = Totals(), 0, 0
    window_: deque[Future] = deque()
    started = time.perf_counter()

    def account(future: Future) -> None:
        nonlocal totals, deletable, target_objects
        applied = activities.AppliedBatch.model_validate_json(future.result())
        totals, deletable = totals.add(applied.totals), deletable + applied.deletable
        target_objects += applied.target_objects

    try:
        while True:
            request = activities.BatchInput(source=source, target=target, sync=sync_id, batch=batches, path=path,
                                            after=cursor, max_objects=batch_objects, inline_bytes=inline)  # fmt: skip
            scanned = activities.FingerprintedBatch.model_validate_json(
                src.submit("fingerprint_batch", request).result()
            )
            read += scanned.bytes_read
            totals = totals.add(Totals(metadata_bytes=scanned.metadata_bytes))
            apply = activities.ApplyBatchInput(
                source=source, target=target, sync=sync_id, batch=batches, staging_key=scanned.staging_key, path=path,
                after=cursor, through=None if scanned.done else scanned.last_key,
                ledger_stamp=f"{time.time_ns():020d}-{batches:08d}",
            )  # fmt: skip
            window_.append(dst.submit("apply_batch", apply))
            batches += 1
            cursor = scanned.last_key or cursor
            while len(window_) >= window or (window_ and window_[0].done()):
                account(window_.popleft())
            if scanned.done:
                break
        while window_:
            account(window_.popleft())
        finish = activities.FinishInput(target=target, sync=sync_id, batches=batches, deletable=deletable,
                                        target_objects=target_objects)  # fmt: skip
        activities.Finished.model_validate_json(dst.submit("finish_sync", finish).result())
        seconds = time.perf_counter() - started
        return Run(totals=totals, seconds=seconds, batches=batches, fingerprint_bytes_read=read,
                   peak_rss={"source worker": src.peak_rss(), "target worker": dst.peak_rss()})  # fmt: skip
    finally:
        src.close()
        dst.close()
