"""DatasetSyncWorkflow: make a target prefix equal to a source prefix, range by range, in a pipeline.

The source's worker fingerprints range N+1 while target workers apply range N and the ranges before
it: up to `window` ranges are applied at once, so every worker on the target's queue takes a share
(more workers in a cloud move a dataset faster, the way Skyplane spreads one transfer over VMs).
Deletions are collected per range and carried out last, after every copy, within a bound. The
workflow keeps a cursor and running totals only, and continues as new (after draining the window)
long before its history grows large, so a million-object dataset never makes one history heavy.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.stores import StoreSpec
    from activities.transfer.delta import Totals
    from activities.transfer.ledger import legacy_ledger_name
    from activities.transfer.staging import Skipped
    from activities.transfer.sync import (
        LISTED,
        AppliedBatch,
        ApplyBatchInput,
        ApplyInput,
        BatchInput,
        FinishInput,
        RangeInput,
        SourceCheckInput,
        apply_batch,
        apply_range,
        check_source,
        fingerprint_batch,
        fingerprint_range,
        finish_sync,
    )
    from workflows.versions import SYNC_V2

#: Continue as new well before Temporal's suggestion: a batch is ~12 events.
MAX_HISTORY_EVENTS = 2_000
#: Failures that retrying the same batch cannot fix.
NON_RETRYABLE = ["CorruptionError", "DeleteBoundExceeded", "StoreError"]


class SyncInput(BaseModel):
    source: StoreSpec
    target: StoreSpec
    source_queue: str
    target_queue: str
    path: str = ""
    delete: bool = False
    dry_run: bool = False
    egress_per_gb_usd: float = Field(0.0, ge=0)
    ledger_key: str | None = Field(None, description="Record what is created or overwritten here (migration undo)")
    batch_objects: int = Field(1000, ge=1)
    batch_bytes: int = Field(8 << 30, ge=1)
    window: int = Field(4, ge=1, le=64, description="Ranges applied at once (spread over the target's workers)")
    heartbeat_timeout_s: int = Field(30, ge=1, description="A silent worker is presumed dead after this long")
    abandon_after_s: int | None = Field(
        None, ge=1, description="Fail when no worker picks up a task for this long (a CLI sync whose process died)"
    )
    max_history_events: int = Field(MAX_HISTORY_EVENTS, ge=20, description="Continue as new past this many events")
    max_delete: int | None = Field(None, ge=0)
    max_delete_percent: float | None = Field(10.0, ge=0, le=100)
    force_delete: bool = False
    # Carried across continue-as-new:
    cursor: str | None = None
    totals: Totals = Field(default_factory=Totals)
    fingerprint_bytes_read: int = 0
    batches: int = 0
    runs: int = 1
    started_at: float | None = None
    deletable: int = 0
    target_objects: int = 0
    skipped: list[Skipped] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    deletable_examples: list[str] = Field(default_factory=list)


class SyncResult(BaseModel):
    source: str
    target: str
    path: str
    totals: Totals
    egress_bytes: int
    egress_cost_usd: float
    fingerprint_bytes_read: int = Field(description="Source bytes read in-region to fingerprint (not egress)")
    batches: int
    runs: int = Field(description="Workflow runs (continue-as-new count + 1)")
    verified: bool = Field(description="Every object written was committed only after its written root equalled the "
                           "source's, and none was left out")  # fmt: skip
    dry_run: bool
    skipped: list[Skipped] = Field(default_factory=list, description=f"Objects left out, by name (first {LISTED})")
    changed: list[str] = Field(default_factory=list, description=f"Keys written, or to be written (first {LISTED})")
    deletable: int = 0
    deletable_examples: list[str] = Field(default_factory=list)
    deleted: int = 0
    aborted_uploads: int = 0
    kept_changed: list[str] = Field(default_factory=list, description="Not deleted: changed at the target after "
                                    f"the sync listed them (first {LISTED})")  # fmt: skip
    kept_changed_count: int = 0


@workflow.defn
class DatasetSyncWorkflow:
    @workflow.init
    def __init__(self, request: SyncInput) -> None:
        self.request = request

    @workflow.query
    def progress(self) -> SyncInput:
        return self.request

    def _options(self) -> dict:
        request = self.request
        options = {
            "start_to_close_timeout": timedelta(hours=12),
            "heartbeat_timeout": timedelta(seconds=request.heartbeat_timeout_s),
            "retry_policy": RetryPolicy(maximum_interval=timedelta(minutes=1), non_retryable_error_types=NON_RETRYABLE),
            "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        }
        if request.abandon_after_s:
            options["schedule_to_start_timeout"] = timedelta(seconds=request.abandon_after_s)
        return options

    @workflow.run
    async def run(self, request: SyncInput) -> SyncResult:
        if not workflow.patched(SYNC_V2):
            return await self._run_v1(request)
        options = self._options()
        if request.started_at is None:
            request.started_at = workflow.now().timestamp()
            await workflow.execute_activity(
                check_source, SourceCheckInput(source=request.source, path=request.path),
                task_queue=request.source_queue, **options, summary=f"check {request.source.url} exists",
            )  # fmt: skip
        window: deque[asyncio.Task[AppliedBatch]] = deque()
        try:
            while True:
                scanned = await workflow.execute_activity(
                    fingerprint_batch,
                    BatchInput(source=request.source, target=request.target, sync=workflow.info().workflow_id,
                               batch=request.batches, path=request.path, after=request.cursor,
                               max_objects=request.batch_objects, max_bytes=request.batch_bytes),
                    task_queue=request.source_queue, **options,
                    summary=f"fingerprint range {request.batches} after {request.cursor or 'start'}",
                )  # fmt: skip
                request.fingerprint_bytes_read += scanned.bytes_read
                request.totals = request.totals.add(Totals(metadata_bytes=scanned.metadata_bytes))
                work = self._apply(request.batches, request.cursor, scanned.staging_key, scanned.done, scanned.last_key)
                window.append(asyncio.ensure_future(work))
                request.batches += 1
                request.cursor = scanned.last_key or request.cursor
                while len(window) >= request.window or (window and window[0].done()):
                    self._account(await window.popleft())
                if scanned.done:
                    break
                if self._history_full():
                    while window:
                        self._account(await window.popleft())
                    workflow.continue_as_new(request.model_copy(update={"runs": request.runs + 1}))
            while window:
                self._account(await window.popleft())
        except BaseException:
            # Cancelled or failed: stop the other ranges and wait until their writers have stopped.
            for task in window:
                task.cancel()
            if window:
                await workflow.wait(list(window))
            raise
        finished = await workflow.execute_activity(
            finish_sync,
            FinishInput(target=request.target, sync=workflow.info().workflow_id, batches=request.batches,
                        delete=request.delete, dry_run=request.dry_run, deletable=request.deletable,
                        target_objects=request.target_objects, max_delete=request.max_delete,
                        max_delete_percent=request.max_delete_percent, force=request.force_delete,
                        started_at=request.started_at),
            task_queue=request.target_queue, **options,
            summary=f"{'delete ' + str(request.deletable) + ' extra objects, ' if request.delete else ''}clean up",
        )  # fmt: skip
        request.totals = request.totals.add(Totals(objects_deleted=finished.deleted))
        result = self._result(deleted=finished.deleted, aborted=finished.aborted_uploads)
        # Reported, not a command: no patch needed (results are not compared on replay).
        result.kept_changed, result.kept_changed_count = finished.kept_changed, finished.kept_changed_count
        return result

    async def _apply(self, batch: int, after: str | None, staging_key: str, done: bool,
                     last_key: str | None) -> AppliedBatch:  # fmt: skip
        request = self.request
        stamp = f"{workflow.now():%Y%m%dT%H%M%S%f}-{batch:08d}"
        return await workflow.execute_activity(
            apply_batch,
            ApplyBatchInput(source=request.source, target=request.target, sync=workflow.info().workflow_id,
                            batch=batch, staging_key=staging_key, path=request.path, after=after,
                            through=None if done else last_key, delete=request.delete, dry_run=request.dry_run,
                            ledger_key=legacy_ledger_name(request.ledger_key) if request.ledger_key else None,
                            ledger_stamp=stamp),
            task_queue=request.target_queue, **self._options(),
            summary=f"apply range {batch} up to {last_key or 'end'}",
        )  # fmt: skip

    def _account(self, applied: AppliedBatch) -> None:
        request = self.request
        request.totals = request.totals.add(applied.totals)
        request.deletable += applied.deletable
        request.target_objects += applied.target_objects
        request.skipped = (request.skipped + applied.skipped)[:LISTED]
        request.changed = (request.changed + applied.changed)[:LISTED]
        request.deletable_examples = (request.deletable_examples + applied.deletable_examples)[:LISTED]

    def _result(self, deleted: int = 0, aborted: int = 0) -> SyncResult:
        request = self.request
        totals = request.totals
        egress = totals.bytes_transferred + totals.metadata_bytes
        written = totals.objects_changed
        return SyncResult(
            source=request.source.url, target=request.target.url, path=request.path, totals=totals,
            egress_bytes=egress, egress_cost_usd=round(egress / 1e9 * request.egress_per_gb_usd, 6),
            fingerprint_bytes_read=request.fingerprint_bytes_read, batches=request.batches, runs=request.runs,
            verified=not request.dry_run and totals.objects_verified == written and totals.objects_skipped == 0,
            dry_run=request.dry_run, skipped=request.skipped, changed=request.changed,
            deletable=request.deletable, deletable_examples=request.deletable_examples, deleted=deleted,
            aborted_uploads=aborted,
        )  # fmt: skip

    async def _run_v1(self, request: SyncInput) -> SyncResult:
        """The loop as 0.1 ran it, for syncs started before SYNC_V2: one range at a time, deletes inline."""
        options = {
            "start_to_close_timeout": timedelta(hours=12),
            "heartbeat_timeout": timedelta(seconds=request.heartbeat_timeout_s),
            "retry_policy": RetryPolicy(
                maximum_interval=timedelta(minutes=1), non_retryable_error_types=["CorruptionError"]
            ),
        }
        while True:
            scanned = await workflow.execute_activity(
                fingerprint_range,
                RangeInput(source=request.source, path=request.path, after=request.cursor,
                           max_objects=request.batch_objects, max_bytes=request.batch_bytes),
                task_queue=request.source_queue, **options, summary=f"fingerprint after {request.cursor or 'start'}",
            )  # fmt: skip
            applied = await workflow.execute_activity(
                apply_range,
                ApplyInput(source=request.source, target=request.target, path=request.path, after=request.cursor,
                           through=None if scanned.done else scanned.last_key, delete=request.delete,
                           dry_run=request.dry_run, ledger_key=request.ledger_key),
                task_queue=request.target_queue, **options,
                summary=f"apply {scanned.objects} objects up to {scanned.last_key or 'end'}",
            )  # fmt: skip
            request.totals = request.totals.add(applied)
            request.fingerprint_bytes_read += scanned.bytes_read
            request.batches += 1
            request.cursor = scanned.last_key or request.cursor
            if scanned.done:
                break
            if self._history_full():
                workflow.continue_as_new(request.model_copy(update={"runs": request.runs + 1}))
        return self._result()

    def _history_full(self) -> bool:
        info = workflow.info()
        events = info.get_current_history_length()
        return events > self.request.max_history_events or info.is_continue_as_new_suggested()
