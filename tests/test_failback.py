"""The way back after "done": a failback window that stays open, stays current, can be rehearsed, and closes.

Durable timers of 30 days are driven with the dev server's per-workflow time skipping (fast-forward),
reverse syncs and the monitored soak run in real time on loopback stores, endpoints and a router.
"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment

from activities.stores import open_store
from activities.traffic import HttpRouter, Weights
from skyshift.spec.traffic import HttpRouterSpec
from starters.cmd_failback import request_failback
from starters.cmd_watch import watch
from starters.common import UsageError
from starters.load import LoadGenerator
from starters.operate import start_migration
from tests.conftest import ServingPair, running_workers, temporal_cli
from tests.helpers import approve_gates, make_plan, seed, suffix, wait_for
from workflows.state import SEARCH_ATTRIBUTES, WINDOW_GATE, FailbackInput

pytestmark = pytest.mark.stack


def in_window(state) -> bool:
    return state.phase == "failback" and state.pending_gate is not None and state.pending_gate.stage == WINDOW_GATE


def plan_with_router(tmp_path, serving: ServingPair, name: str, **decommission):
    source, target = f"file://{tmp_path}/{name}-src", f"file://{tmp_path}/{name}-dst"
    seed(source, objects=2, size=20_000)
    return make_plan(
        suffix(), source, target,
        workloads={"datasets": [{"name": "corpus", "path": "datasets/corpus"}],
                   "router": serving.plan_workloads()["router"]},
        cutover={"stages": [{"percent": 100}]},
        decommission={"failback_window": "30d", **decommission},
    )  # fmt: skip


async def test_the_window_takes_a_failback_for_30_days_then_refuses_it_saying_when_it_closed(tmp_path):
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"],
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        ts_config=TimeSkippingConfig(enabled=False),  # real time until a test fast-forwards a workflow
    )
    serving = ServingPair()
    router = HttpRouter(HttpRouterSpec(admin_url=serving.url("router")))
    try:
        early, late = plan_with_router(tmp_path, serving, "early"), plan_with_router(tmp_path, serving, "late")
        async with running_workers(env.client, early.source, early.target, late.source, late.target):
            handle = await start_migration(env.client, early)
            await approve_gates(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "poc")
            with pytest.raises(UsageError, match=r"failback applies in the window after the final sync.*poc"):
                await request_failback(env.client, handle.id, FailbackInput(reason="too early", by="tester"))
            state = await approve_gates(handle, in_window)
            assert state.failback.closes_at - state.failback.opened_at == timedelta(days=30)
            assert router.current() == Weights(source=0, target=100)

            drill = await request_failback(env.client, handle.id, FailbackInput(drill=True, by="tester"))
            assert drill.startswith("drill pass"), drill
            assert router.current() == Weights(source=0, target=100), "a drill moves nothing"

            await env.fast_forward(handle, timedelta(days=29))
            answer = await request_failback(env.client, handle.id, FailbackInput(reason="target flaky", by="tester"))
            assert answer.startswith(f"traffic back on {early.source}"), answer
            assert router.current() == Weights(source=100, target=0)
            final = await handle.result()
            assert final.outcome == "failed_back" and "target flaky" in final.outcome_reason
            assert final.failback.traffic_back_s is not None
            assert [v.outcome for v in final.failback.drills] == ["pass"]
            assert open_store(early.target_env.storage.url).exists("datasets/corpus/part-000.bin"), "target kept"

            other = await start_migration(env.client, late)
            closing = await approve_gates(other, in_window)
            await env.fast_forward(other, timedelta(days=31))
            done = await other.result()
            assert done.outcome == "completed" and done.failback.closed_by == "timer"
            with pytest.raises(UsageError, match=f"closed at {closing.failback.closes_at:%Y-%m-%d %H:%M} UTC"):
                await request_failback(env.client, other.id, FailbackInput(reason="too late", by="tester"))
    finally:
        serving.close()
        await env.shutdown()


async def test_reverse_sync_keeps_the_source_current_and_failing_back_brings_the_newest(client, tmp_path, serving):
    plan = plan_with_router(tmp_path, serving, "rev", reverse_sync=["outputs"], reverse_every="1s")
    target, source = open_store(plan.target_env.storage.url), open_store(plan.source_env.storage.url)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await approve_gates(handle, in_window)
        shown = io.StringIO()
        watched = await watch(client, handle.id, "plain", out=shown)  # ends: completed, the window open
        assert watched.in_failback_window and "failback" in shown.getvalue()
        target.put_bytes("outputs/ckpt-1.bin", b"step 1" * 1000)
        state = await wait_for(handle, lambda s: any(p.objects for p in s.failback.passes), timeout=60,
                               what="a reverse pass that carried the target's output")  # fmt: skip
        assert source.read_bytes("outputs/ckpt-1.bin") == b"step 1" * 1000
        assert state.failback.reverse_bytes >= 6000
        target.put_bytes("outputs/ckpt-2.bin", b"step 2" * 1000)
        await request_failback(client, handle.id, FailbackInput(reason="drill for real", by="tester"))
        final = await handle.result()
    assert final.outcome == "failed_back"
    assert source.read_bytes("outputs/ckpt-2.bin") == b"step 2" * 1000, "the final pass brought the newest output"
    assert HttpRouter(HttpRouterSpec(admin_url=serving.url("router"))).current() == Weights(source=100, target=0)


async def test_a_regression_during_the_soak_rolls_back_like_a_stage(client, tmp_path, serving):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source, objects=1, size=40_000)
    plan = make_plan(
        suffix(), source, target,
        workloads={"datasets": [{"name": "corpus", "path": "datasets/corpus"}], **serving.plan_workloads()},
        thresholds={"min_samples": 30},
        # At 100% the source is idle: the 50% stage records the source's windows the soak is judged against.
        cutover={"monitor_interval": "1s", "stages": [{"percent": 50, "duration": "5s"}, {"percent": 100}]},
        soak_period="10m",
    )  # fmt: skip
    load = LoadGenerator(serving.url("router"), rate=150, max_seconds=180).start()
    try:
        async with running_workers(client, plan.source, plan.target):
            handle = await start_migration(client, plan)
            await approve_gates(handle, lambda s: s.stage == "soak" and s.phase == "decommission", timeout=120)
            serving.set_faults("target", latency_factor=1.6)
            final = await handle.result()
    finally:
        load.stop()
    assert final.outcome == "rolled_back", final.outcome_reason
    assert final.rollback_request.by == "skyshift:analysis" and final.rollback_request.reason.startswith("soak:")
    assert HttpRouter(HttpRouterSpec(admin_url=serving.url("router"))).current() == Weights(source=100, target=0)
