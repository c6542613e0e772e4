"""MigrationWorkflow end to end: real Temporal dev server, moto S3, GCS emulator, HTTP router."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowUpdateFailedError

from activities.stores import open_store
from activities.traffic import HttpRouter, Weights
from skyshift.spec.traffic import HttpRouterSpec
from starters.load import LoadGenerator
from starters.operate import start_migration
from tests.conftest import running_workers
from tests.helpers import approve_gates, make_plan, seed, suffix, wait_for
from workflows.migration import MigrationWorkflow
from workflows.state import SA_OUTCOME, SA_PHASE, SA_TRAFFIC, ApproveInput, RollbackInput

pytestmark = pytest.mark.stack

DATA = {
    "datasets": [{"name": "corpus", "path": "datasets/corpus"}],
    "checkpoints": [{"name": "model", "path": "checkpoints/model"}],
}


def router_weights(serving) -> Weights:
    return HttpRouter(HttpRouterSpec(admin_url=serving.url("router"))).current()


def urls(s3_bucket: str, gcs_bucket: str) -> tuple[str, str]:
    return f"s3://{s3_bucket}/ml", f"gs://{gcs_bucket}/ml"


def user_keys(url: str) -> set[str]:
    return {o.key for o in open_store(url).list() if not o.key.startswith(".skyshift/")}


async def test_happy_path_runs_every_phase_and_moves_the_workload(client, s3_bucket, gcs_bucket, serving):
    src, dst = urls(s3_bucket, gcs_bucket)
    written = seed(src)
    plan = make_plan(suffix(), src, dst, workloads={**DATA, **serving.plan_workloads()},
                     decommission={"delete_source": True})  # fmt: skip
    load = LoadGenerator(serving.url("router"), rate=150, max_seconds=120).start()
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await approve_gates(handle, lambda s: s.outcome is not None)
        final = await handle.result()
    counts = load.stop()

    assert final.outcome == "completed", final.outcome_reason
    target = open_store(dst)
    assert all(target.read_bytes(key) == data for key, data in written.items()), "target copies differ"
    assert user_keys(src) == set(), "decommission should release the source copies"
    assert router_weights(serving) == Weights(source=0, target=100)
    assert final.traffic_percent == 100

    assert final.assessment.total_objects == len(written) and final.assessment.residency_ok
    assert sum(t.totals.objects_changed for t in final.poc.transfers) == len(written)
    assert all(t.verified for t in final.poc.transfers) and final.egress_cost_usd > 0
    assert final.poc.source_bench[0].device == "cpu" and final.poc.target_bench[0].median_train_samples_per_s > 0
    assert final.parallel_run.outcome == "pass"
    windows = [v for v in final.verdicts if v.subject.startswith("cutover:")]
    assert any(v.outcome == "pass" for v in windows), [v.summary for v in windows]
    assert final.egress_bytes >= sum(len(d) for d in written.values())
    assert final.decommission.verified_objects == len(written)

    approvals = [(e.actor, e.detail.split(":")[0]) for e in final.audit if e.action == "approved"]
    assert ("tester", "poc") in approvals and ("tester", "decommission") in approvals
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(SA_PHASE) == "done" and attributes.get(SA_OUTCOME) == "completed"
    assert attributes.get(SA_TRAFFIC) == 100
    assert load.failures == 0, f"requests failed while weights changed: {counts}"
    assert counts.get("backend_target", 0) > 0 and counts.get("backend_source", 0) > 0


async def test_forced_rollback_during_cutover_compensates_in_reverse(client, s3_bucket, gcs_bucket, serving):
    src, dst = urls(s3_bucket, gcs_bucket)
    seed(src)
    existing = "datasets/corpus/already-there.bin"
    open_store(dst).put_bytes(existing, b"the target had this before the migration")
    source_before = {o.key: o.etag for o in open_store(src).list()}
    plan = make_plan(suffix(), src, dst, workloads={**DATA, **serving.plan_workloads()},
                     cutover={"stages": [{"percent": 30, "duration": "1h"}, {"percent": 100}]})  # fmt: skip
    load = LoadGenerator(serving.url("router"), rate=100, max_seconds=120).start()
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await approve_gates(handle, lambda s: s.traffic_percent == 30)
        assert router_weights(serving) == Weights(source=70, target=30)
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="error budget burning", by="alice"))
        final = await handle.result()
    load.stop()

    assert final.outcome == "rolled_back"
    assert "error budget burning" in final.outcome_reason and "alice" in final.outcome_reason
    requested = [e for e in final.audit if e.action == "rollback_requested"]
    assert [(e.actor, e.detail) for e in requested] == [("alice", "error budget burning")]
    undone = [e.detail for e in final.audit if e.action == "compensated"]
    assert undone[0] == f"route 100% to {plan.source}"
    assert undone[1:] == [
        f"delete what the migration created for model at {plan.target}",
        f"delete what the migration created for corpus at {plan.target}",
    ], "compensations must run newest first"
    assert router_weights(serving) == Weights(source=100, target=0) and final.traffic_percent == 0
    assert user_keys(dst) == {existing}, "only what the migration created may be deleted"
    assert {o.key: o.etag for o in open_store(src).list()} == source_before, "a migration never writes to its source"
    assert load.failures == 0


async def test_rollback_while_an_approval_is_pending(client, s3_bucket, gcs_bucket):
    src, dst = urls(s3_bucket, gcs_bucket)
    seed(src)
    plan = make_plan(suffix(), src, dst)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await wait_for(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "poc", what="poc gate")
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="budget cut", by="bob"))
        final = await handle.result()

    assert final.outcome == "rolled_back" and final.pending_gate is None
    assert [e.actor for e in final.audit if e.action == "rollback_requested"] == ["bob"]
    assert user_keys(dst) == set(), "copies made during the POC are removed"
    assert not open_store(dst).exists(f".skyshift/ledger/{handle.id}/corpus.json"), "ledger cleaned up"


async def test_cancellation_also_compensates(client, s3_bucket, gcs_bucket, serving):
    src, dst = urls(s3_bucket, gcs_bucket)
    seed(src)
    plan = make_plan(suffix(), src, dst, workloads={**DATA, **serving.plan_workloads()},
                     cutover={"stages": [{"percent": 40, "duration": "1h"}, {"percent": 100}]})  # fmt: skip
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await approve_gates(handle, lambda s: s.traffic_percent == 40)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        description = await handle.describe()
        final = await handle.query(MigrationWorkflow.status)

    assert description.status == WorkflowExecutionStatus.CANCELED
    assert final.outcome == "cancelled"
    assert router_weights(serving) == Weights(source=100, target=0)
    assert user_keys(dst) == set()


async def test_approve_for_the_wrong_stage_is_rejected_and_changes_nothing(client, s3_bucket, gcs_bucket):
    src, dst = urls(s3_bucket, gcs_bucket)
    seed(src)
    plan = make_plan(suffix(), src, dst)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        before = await wait_for(handle, lambda s: s.pending_gate is not None, what="poc gate")
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(MigrationWorkflow.approve, ApproveInput(stage="decommission", by="mallory"))
        after = await handle.query(MigrationWorkflow.status)
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="test over"))
        await handle.result()

    assert "pending gate is 'poc'" in str(rejected.value.cause)
    assert after.pending_gate == before.pending_gate and after.audit == before.audit
    history = [e async for e in handle.fetch_history_events()]
    assert not any("mallory" in str(e) for e in history), "a rejected update must leave no trace in history"


async def test_residency_breach_stops_before_anything_moves(client, s3_bucket, gcs_bucket):
    src, dst = urls(s3_bucket, gcs_bucket)
    seed(src)
    plan_env = make_plan(suffix(), src, dst).model_dump(mode="json")
    plan_env["environments"][0]["allowed_data_regions"] = ["us-east-1"]
    from workflows.plan import parse_plan

    plan = parse_plan(plan_env)
    async with running_workers(client, plan.source, plan.target):
        final = await (await start_migration(client, plan)).result()
    assert final.outcome == "stopped" and "residency" in final.outcome_reason
    assert "eu-north1" in final.outcome_reason
    assert user_keys(dst) == set()


async def test_egress_over_budget_waits_for_approval(client, s3_bucket, gcs_bucket):
    src, dst = urls(s3_bucket, gcs_bucket)
    seed(src)
    plan = make_plan(suffix(), src, dst, egress_budget_usd=0)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        state = await wait_for(handle, lambda s: s.pending_gate is not None, what="egress gate")
        assert state.pending_gate.stage == "egress-budget" and state.poc.transfers == []
        await handle.execute_update(MigrationWorkflow.approve, ApproveInput(stage="egress-budget", by="finops"))
        state = await wait_for(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "poc")
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="test over"))
        await handle.result()
    assert sum(t.totals.objects_changed for t in state.poc.transfers) == 5


async def test_corrupted_target_copy_fails_the_parallel_run_and_rolls_back(client, s3_bucket, gcs_bucket):
    src, dst = urls(s3_bucket, gcs_bucket)
    seed(src)
    plan = make_plan(suffix(), src, dst)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await wait_for(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "poc")
        # Silent damage after the copy: the parallel run must notice before any traffic moves.
        open_store(dst).put_bytes("datasets/corpus/part-000.bin", b"\0" * 150_000)
        await handle.execute_update(MigrationWorkflow.approve, ApproveInput(stage="poc", by="tester"))
        final = await handle.result()
    assert final.outcome == "rolled_back"
    assert final.parallel_run.outcome == "fail"
    failed = {c.metric for c in final.parallel_run.checks if c.outcome == "fail"}
    assert {"training_data", "loss_curve"} <= failed
    assert final.rollback_request.by == "skyshift:parallel_run" and final.traffic_percent == 0
