"""Workflow versions: every change to running workflow code, as a `workflow.patched()` id with its reason.

Migrations run for weeks and outlive deploys. A change that alters the commands a workflow emits
(a new activity, a cancellation, a different order) would make an in-flight migration fail to
replay on the new workers, so each such change is guarded by a patch id: new executions take the
new path and record a marker; histories recorded before the change replay the old path. Patches
are listed here, oldest first, so the history of the workflow code is one table, and
`tests/histories/` gains a recorded history for each one (never re-recorded).

A patch is removed (`workflow.deprecate_patch`, then deleted) only once no execution that started
before it can still be running: the longest migration plus its retention period.

Why patches rather than Worker Versioning: skyshift's workers run in each customer cloud and
usually one deployment per environment; pinning each migration to the build that started it would
mean keeping old worker fleets alive for weeks in every cloud. Patching lets a migration move onto
new code mid-flight (its undo logic included), which is what an operator upgrading skyshift expects.
"""

from __future__ import annotations

from typing import NamedTuple


class Patch(NamedTuple):
    id: str
    since: str
    change: str


INTERRUPT_LONG_WORK = "2026-11-interrupt-long-work"
COMPENSATE_EVERY_EXIT = "2026-11-compensate-every-exit"
SYNC_V2 = "2026-11-sync-v2"
EMPTY_SOURCE_STOPS = "2026-11-empty-source-stops"
CHECKPOINT_REPORTS = "2026-11-checkpoint-reports"
BENCH_SUITE_JUDGE = "2026-11-bench-suite-judge"
FAILBACK_WINDOW = "2026-12-failback-window"
MONITORED_SOAK = "2026-12-monitored-soak"
HANDOFF_ARM = "2026-12-handoff-arm"
STAGE_VERDICTS = "2026-12-stage-verdicts"
INTERLEAVED_TRIALS = "2026-12-interleaved-trials"
CONTINUOUS_SYNC = "2026-12-continuous-sync"
SEALED_AT_REST = "2026-12-sealed-at-rest"
TRAINING_HANDOFF = "2026-12-training-handoff"

PATCHES: tuple[Patch, ...] = (
    Patch(INTERRUPT_LONG_WORK, "2026-11-29",
          "a rollback request cancels in-flight work (sync, benchmark, training) and waits for it to stop"),
    Patch(COMPENSATE_EVERY_EXIT, "2026-11-29",
          "a failed activity or child, or a cancel delivered during one, compensates and records an outcome"),
    Patch(SYNC_V2, "2026-11-29",
          "DatasetSyncWorkflow: metadata outside the data, pipelined ranges, deletes bounded and done last"),
    Patch(EMPTY_SOURCE_STOPS, "2026-11-29",
          "a workload with no objects at the source stops the migration at assess instead of copying nothing"),
    Patch(CHECKPOINT_REPORTS, "2026-11-29",
          "checkpoints inspected at assess (unsafe ones stop it) and judged on the target's worker in the POC"),
    Patch(BENCH_SUITE_JUDGE, "2026-11-29",
          "the POC micro-suite is judged side by side and against datasheet ceilings, with the environment matrix"),
    Patch(FAILBACK_WINDOW, "2026-12-03",
          "after the final sync the migration stays open in a failback window (reverse sync, failback, drills); "
          "the source is released only when it closes"),
    Patch(MONITORED_SOAK, "2026-12-03",
          "the soak before decommission judges the endpoints every interval like a cutover stage; a breach rolls back"),
    Patch(HANDOFF_ARM, "2026-12-03",
          "a resumable job (plan resume:) gets a fourth arm in the parallel run: SIGTERM on the source, its "
          "checkpoint delta-synced, resumed on the target, judged for continuity against the uninterrupted source"),
    Patch(STAGE_VERDICTS, "2026-12-03",
          "cutover: the source measured for one interval before traffic moves (load-matched baselines); windows "
          "judged with the stage's sequential test, its evidence reset per stage"),
    Patch(INTERLEAVED_TRIALS, "2026-12-03",
          "parallel run: arms interleaved (source, target, source again) and further runs a side up to "
          "parallel_run.throughput_trials, so throughput is judged from trials, never one run"),
    Patch(CONTINUOUS_SYNC, "2026-12-03",
          "a plan with `sync: {every}` delta-syncs its datasets to the target on that schedule from the POC to the "
          "final sync (a loop beside the phases, stopped and waited for before the final sync and before any undo)"),
    Patch(SEALED_AT_REST, "2026-12-03",
          "a checkpoint with `encryption.at_rest: sealed` is not opened into the target store: the compatibility "
          "check and the archive verification decrypt it into the target worker's scratch"),
    Patch(TRAINING_HANDOFF, "2026-12-03",
          "cutover.training: handoff starts a production run (TrainingRunWorkflow child) on the source when the "
          "cutover begins and, with its hand-back registered first, moves it to the target at the handoff stage"),
)  # fmt: skip
