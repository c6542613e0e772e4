"""DatasetSyncWorkflow: make a target prefix equal to a source prefix, range by range.

Each batch is a key range: fingerprinted by the source's worker, applied by the target's. The
workflow keeps only a cursor and running totals, and continues as new long before its history
grows large, so a million-object dataset never makes one history heavy.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.stores import StoreSpec
    from activities.transfer.delta import Totals
    from activities.transfer.sync import ApplyInput, RangeInput, apply_range, fingerprint_range

#: Continue as new well before Temporal's suggestion: a batch is ~12 events.
MAX_HISTORY_EVENTS = 2_000


class SyncInput(BaseModel):
    source: StoreSpec
    target: StoreSpec
    source_queue: str
    target_queue: str
    path: str = ""
    delete: bool = False
    dry_run: bool = False
    egress_per_gb_usd: float = Field(0.0, ge=0)
    ledger_key: str | None = None
    batch_objects: int = Field(500, ge=1)
    batch_bytes: int = Field(8 << 30, ge=1)
    heartbeat_timeout_s: int = Field(300, ge=1, description="A silent worker is presumed dead after this long")
    max_history_events: int = Field(MAX_HISTORY_EVENTS, ge=20, description="Continue as new past this many events")
    # Carried across continue-as-new:
    cursor: str | None = None
    totals: Totals = Field(default_factory=Totals)
    fingerprint_bytes_read: int = 0
    batches: int = 0
    runs: int = 1


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
    verified: bool = Field(description="Every chunk written was checked against its BLAKE3 digest")
    dry_run: bool


@workflow.defn
class DatasetSyncWorkflow:
    @workflow.init
    def __init__(self, request: SyncInput) -> None:
        self.request = request

    @workflow.query
    def progress(self) -> SyncInput:
        return self.request

    @workflow.run
    async def run(self, request: SyncInput) -> SyncResult:
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
                task_queue=request.source_queue,
                **options,
                summary=f"fingerprint after {request.cursor or 'start'}",
            )  # fmt: skip
            applied = await workflow.execute_activity(
                apply_range,
                ApplyInput(source=request.source, target=request.target, path=request.path, after=request.cursor,
                           through=None if scanned.done else scanned.last_key, delete=request.delete,
                           dry_run=request.dry_run, ledger_key=request.ledger_key),
                task_queue=request.target_queue,
                **options,
                summary=f"apply {scanned.objects} objects up to {scanned.last_key or 'end'}",
            )  # fmt: skip
            request.totals = request.totals.add(applied)
            request.fingerprint_bytes_read += scanned.bytes_read
            request.batches += 1
            request.cursor = scanned.last_key or request.cursor
            if scanned.done:
                break
            info = workflow.info()
            if info.get_current_history_length() > request.max_history_events or info.is_continue_as_new_suggested():
                workflow.continue_as_new(request.model_copy(update={"runs": request.runs + 1}))
        egress = request.totals.bytes_transferred
        return SyncResult(
            source=request.source.url,
            target=request.target.url,
            path=request.path,
            totals=request.totals,
            egress_bytes=egress,
            egress_cost_usd=round(egress / 1e9 * request.egress_per_gb_usd, 6),
            fingerprint_bytes_read=request.fingerprint_bytes_read,
            batches=request.batches,
            runs=request.runs,
            verified=not request.dry_run,
            dry_run=request.dry_run,
        )
