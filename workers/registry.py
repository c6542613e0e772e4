"""Which workflows and activities each kind of task queue serves."""

from __future__ import annotations

from activities.assess import inventory_storage, project_assessment
from activities.checkpoints.at_rest import verify_sealed_archive
from activities.checkpoints.compat import checkpoint_compatibility
from activities.checkpoints.inspect import inspect_checkpoint
from activities.checkpoints.reshard import convert_checkpoint
from activities.checkpoints.sealed import open_sealed, remove_sealed, seal_checkpoint
from activities.failback import failback_drill
from activities.jobs import compare_job_arms, judge_handoff, judge_job_bench, judge_move, record_code_root, run_job
from activities.jobs.hand_back import hand_back_training
from activities.metrics import scrape_endpoints
from activities.microsuite import run_benchmark_activity
from activities.microsuite.judge import judge_bench_activity
from activities.microsuite.poc import compare_benchmarks
from activities.preemption.watch import acknowledge_preemption, watch_preemption
from activities.shadow.runner import run_shadow, set_mirror
from activities.traffic import route_traffic
from activities.training import compare_training, train_seeded
from activities.transfer.archive import archive_workload, release_source, verify_archive
from activities.transfer.ledger import remove_created
from activities.transfer.sync import (
    apply_batch,
    apply_range,
    check_source,
    fingerprint_batch,
    fingerprint_range,
    finish_sync,
)
from activities.windows import judge_window
from workflows.migration import MigrationWorkflow
from workflows.sync import DatasetSyncWorkflow
from workflows.training_run import TrainingRunWorkflow

#: Work that must run where an environment's data and GPUs are.
ENVIRONMENT_ACTIVITIES = [
    inventory_storage,
    check_source,
    fingerprint_batch,
    apply_batch,
    finish_sync,
    # The 0.1 sync interface, for syncs in flight when the workers were upgraded.
    fingerprint_range,
    apply_range,
    remove_created,
    run_benchmark_activity,
    train_seeded,
    archive_workload,
    verify_archive,
    verify_sealed_archive,
    release_source,
    run_job,
    record_code_root,
    inspect_checkpoint,
    checkpoint_compatibility,
    convert_checkpoint,
    seal_checkpoint,
    open_sealed,
    remove_sealed,
    watch_preemption,
    acknowledge_preemption,
]
#: Analysis, reports and traffic changes: anywhere with a view of both sides.
CONTROL_ACTIVITIES = [
    project_assessment,
    compare_benchmarks,
    compare_training,
    judge_window,
    scrape_endpoints,
    route_traffic,
    judge_bench_activity,
    compare_job_arms,
    judge_job_bench,
    judge_handoff,
    judge_move,
    hand_back_training,
    run_shadow,
    set_mirror,
    failback_drill,
]
CONTROL_WORKFLOWS = [MigrationWorkflow, DatasetSyncWorkflow, TrainingRunWorkflow]
