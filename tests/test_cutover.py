"""Staged cutover on a real router, real endpoints and real load on loopback, stages in seconds."""

from __future__ import annotations

import asyncio
import time

import boto3
import pytest

from activities.traffic import HttpRouter, Route53Router, Weights
from skyshift.spec.traffic import HttpRouterSpec, Route53RouterSpec
from starters.load import LoadGenerator
from starters.operate import start_migration
from tests.conftest import ServingPair, running_workers
from tests.helpers import approve_gates, make_plan, seed, suffix, wait_for
from workflows.migration import MigrationWorkflow
from workflows.state import OperatorInput, RollbackInput

pytestmark = pytest.mark.stack


def plan_for(tmp_path, serving: ServingPair | None, stages: list[dict], **overrides):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source, objects=1, size=40_000)
    workloads = {"datasets": [{"name": "corpus", "path": "datasets/corpus"}]}
    if serving is not None:
        workloads |= serving.plan_workloads()
    thresholds = {"min_samples": 30, **overrides.pop("thresholds", {})}
    cutover = {"monitor_interval": "1s", "stages": stages, **overrides.pop("cutover", {})}
    return make_plan(suffix(), source, target, workloads=workloads, thresholds=thresholds, cutover=cutover, **overrides)


def weights(serving: ServingPair) -> Weights:
    return HttpRouter(HttpRouterSpec(admin_url=serving.url("router"))).current()


async def run_until(client, plan, stop, timeout: float = 90):
    handle = await start_migration(client, plan)
    state = await approve_gates(handle, stop, timeout=timeout)
    return handle, state


REGRESSIONS = [({"latency_factor": 1.6}, "latency"), ({"error_rate": 0.25}, "error_rate")]


@pytest.mark.parametrize(("fault", "metric"), REGRESSIONS, ids=["latency-regression", "error-spike"])
async def test_a_regression_rolls_back_by_itself_within_one_interval(client, tmp_path, serving, fault, metric):
    plan = plan_for(tmp_path, serving, [{"percent": 40, "duration": "10m"}, {"percent": 100}])
    load = LoadGenerator(serving.url("router"), rate=150, max_seconds=120).start()
    async with running_workers(client, plan.source, plan.target):
        handle, _ = await run_until(client, plan, lambda s: s.traffic_percent == 40 and len(s.verdicts) >= 3)
        serving.set_faults("target", **fault)
        breached = time.monotonic()
        while weights(serving).target != 0:
            assert time.monotonic() - breached < 1 + 5 + 5, "rollback took longer than one interval + 5 s (+ slack)"
            await asyncio.sleep(0.05)
        rollback_seconds = time.monotonic() - breached
        final = await handle.result()
    load.stop()
    assert final.outcome == "rolled_back" and final.rollback_request.by == "skyshift:analysis"
    assert f"chat.{metric}" in final.rollback_request.reason
    assert rollback_seconds < 6, rollback_seconds
    deciding = final.verdicts[-1]
    assert deciding.outcome == "fail" and any(c.p_value is not None and c.p_value < 0.02 for c in deciding.checks)


@pytest.mark.parametrize("stage", [0, 1, 2])
async def test_forced_rollback_from_every_stage(client, tmp_path, serving, stage):
    stages = [{"percent": 10, "duration": "1h"}, {"percent": 50, "duration": "1h"}, {"percent": 100, "duration": "1h"}]
    plan = plan_for(tmp_path, serving, stages)
    async with running_workers(client, plan.source, plan.target):
        handle, _ = await run_until(client, plan, lambda s: s.traffic_percent == 10)
        for index in range(stage):
            await handle.execute_update(MigrationWorkflow.skip_stage, OperatorInput(by="ops", note=f"skip {index}"))
            await wait_for(handle, lambda s, i=index: s.traffic_percent == stages[i + 1]["percent"])
        assert weights(serving).target == stages[stage]["percent"]
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="forced", by="oncall"))
        final = await handle.result()
    assert final.outcome == "rolled_back" and weights(serving) == Weights(source=100, target=0)
    assert [e.actor for e in final.audit if e.action == "skip_stage"] == ["ops"] * stage


async def test_compensation_is_retried_until_a_failing_router_comes_back(client, tmp_path):
    serving = ServingPair(state_file=tmp_path / "weights.json")
    try:
        plan = plan_for(tmp_path, serving, [{"percent": 30, "duration": "1h"}, {"percent": 100}])
        async with running_workers(client, plan.source, plan.target):
            handle, _ = await run_until(client, plan, lambda s: s.traffic_percent == 30)
            serving.stop_router()
            await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="router maintenance", by="oncall"))
            await asyncio.sleep(4)
            assert (await handle.query(MigrationWorkflow.status)).phase == "rolling_back", "must keep retrying"
            serving.start_router()  # restarts with the persisted 70/30 split
            final = await asyncio.wait_for(handle.result(), timeout=60)
        assert final.outcome == "rolled_back" and weights(serving) == Weights(source=100, target=0)
    finally:
        serving.close()


async def test_inconclusive_windows_pause_until_an_operator_accepts(client, tmp_path, serving):
    plan = plan_for(tmp_path, serving, [{"percent": 30, "duration": "3s"}, {"percent": 100}],
                    thresholds={"min_samples": 10**9, "inconclusive_limit": 2})  # fmt: skip
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await approve_gates(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage.startswith("incon"))
        state = await handle.query(MigrationWorkflow.status)
        assert state.pending_gate.stage == "inconclusive-30pct" and state.traffic_percent == 30
        await approve_gates(handle, lambda s: s.outcome is not None)
        final = await handle.result()
    assert final.outcome == "completed"
    accepted = [e for e in final.audit if e.action == "approved" and e.detail.startswith("inconclusive-")]
    assert accepted, "the operator's acceptance is in the audit log"


async def test_an_unanswered_inconclusive_pause_rolls_back_at_its_deadline(client, tmp_path, serving):
    plan = plan_for(tmp_path, serving, [{"percent": 30, "duration": "1h"}, {"percent": 100}],
                    thresholds={"min_samples": 10**9, "inconclusive_limit": 2},
                    cutover={"inconclusive_deadline": "3s"})  # fmt: skip
    async with running_workers(client, plan.source, plan.target):
        handle, _ = await run_until(client, plan, lambda s: s.traffic_percent == 30)
        final = await asyncio.wait_for(handle.result(), timeout=60)
    assert final.outcome == "rolled_back" and final.rollback_request.by == "skyshift:deadline"
    assert any(e.action == "gate_expired" for e in final.audit) and weights(serving).target == 0


async def test_a_dry_run_metric_never_acts(client, tmp_path, serving):
    serving.set_faults("target", latency_factor=2.0)
    plan = plan_for(tmp_path, serving, [{"percent": 50, "duration": "4s"}, {"percent": 100, "duration": "2s"}],
                    thresholds={"dry_run": ["latency"]})  # fmt: skip
    load = LoadGenerator(serving.url("router"), rate=150, max_seconds=120).start()
    async with running_workers(client, plan.source, plan.target):
        handle, _ = await run_until(client, plan, lambda s: s.outcome is not None)
        final = await handle.result()
    load.stop()
    assert final.outcome == "completed" and weights(serving).target == 100
    assert any("dry-run: chat.latency would be fail" in v.summary for v in final.verdicts)


async def test_promote_goes_straight_to_100_percent(client, tmp_path, serving):
    stages = [{"percent": 5, "duration": "1h"}, {"percent": 50, "duration": "1h"}, {"percent": 100, "duration": "1s"}]
    plan = plan_for(tmp_path, serving, stages)
    async with running_workers(client, plan.source, plan.target):
        handle, _ = await run_until(client, plan, lambda s: s.traffic_percent == 5)
        assert await handle.execute_update(MigrationWorkflow.promote, OperatorInput(by="lead")) == "100pct"
        await approve_gates(handle, lambda s: s.outcome is not None)
        final = await handle.result()
    entered = [e.detail.split(":")[0] for e in final.audit if e.action == "stage_entered"]
    assert entered == ["5pct", "100pct"] and final.outcome == "completed"


async def test_route53_weights_follow_the_stages_and_return_on_rollback(client, tmp_path, s3_endpoint):
    route53 = boto3.client("route53", endpoint_url=s3_endpoint, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
    zone = route53.create_hosted_zone(Name="example.com.", CallerReference=suffix())["HostedZone"]["Id"]
    spec = Route53RouterSpec(kind="route53", hosted_zone_id=zone, record_name="api.example.com",
                             source_value="api.aws.example.net", target_value="api.nebius.example.net",
                             endpoint=s3_endpoint)  # fmt: skip
    plan = plan_for(
        tmp_path, None, [{"percent": 20, "duration": "1s"}, {"percent": 60, "duration": "1h"}, {"percent": 100}]
    )
    plan = plan.model_copy(update={"workloads": plan.workloads.model_copy(update={"router": spec})})
    seen: list[tuple[int, int]] = []
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)

        async def watch() -> None:
            while True:
                current = await asyncio.to_thread(Route53Router(spec).current)
                if not seen or seen[-1] != (current.source, current.target):
                    seen.append((current.source, current.target))
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        await approve_gates(handle, lambda s: s.traffic_percent == 60)
        await asyncio.sleep(0.5)
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="dns test", by="oncall"))
        final = await handle.result()
        await asyncio.sleep(0.5)
        watcher.cancel()
    assert final.outcome == "rolled_back"
    assert seen[0] == (100, 0) and (80, 20) in seen and (40, 60) in seen and seen[-1] == (100, 0)
    records = route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    assert {r["SetIdentifier"]: r["Weight"] for r in records if "SetIdentifier" in r} == {
        "skyshift-source": 100, "skyshift-target": 0}  # fmt: skip
