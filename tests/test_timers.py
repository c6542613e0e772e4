"""Day-long stage timers are durable workflow timers: a 6-day cutover plus a 7-day soak runs in seconds
under the dev server's time skipping, and the workflow's own clock shows the days passed."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.traffic import HttpRouter, Weights
from skyshift.spec.traffic import HttpRouterSpec
from starters.operate import start_migration
from tests.conftest import ServingPair, running_workers, temporal_cli
from tests.helpers import approve_gates, make_plan, seed, suffix
from workflows.state import SEARCH_ATTRIBUTES

pytestmark = pytest.mark.stack


async def test_real_24h_48h_72h_stages_complete_under_time_skipping(tmp_path):
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"],
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
    )
    serving = ServingPair()
    try:
        source, target = f"file://{tmp_path}/source", f"file://{tmp_path}/target"
        seed(source)
        plan = make_plan(
            suffix(), source, target,
            workloads={"datasets": [{"name": "corpus", "path": "datasets/corpus"}],
                       "router": serving.plan_workloads()["router"]},
            cutover={"stages": [{"percent": 5, "duration": "24h"}, {"percent": 25, "duration": "48h"},
                                {"percent": 50, "duration": "72h"}, {"percent": 100}]},
            soak_period="7d",
        )  # fmt: skip
        started = time.monotonic()
        async with running_workers(env.client, plan.source, plan.target):
            handle = await start_migration(env.client, plan)
            await approve_gates(handle, lambda s: s.outcome is not None, timeout=120)
            final = await handle.result()
        wall = time.monotonic() - started
        weights = HttpRouter(HttpRouterSpec(admin_url=serving.url("router"))).current()
    finally:
        serving.close()
        await env.shutdown()

    assert final.outcome == "completed", final.outcome_reason
    entered = {e.detail.split(":")[0]: e.at for e in final.audit if e.action == "stage_entered"}
    assert entered["25pct"] - entered["5pct"] >= timedelta(hours=24)
    assert entered["50pct"] - entered["25pct"] >= timedelta(hours=48)
    assert entered["100pct"] - entered["50pct"] >= timedelta(hours=72)
    workflow_days = (final.audit[-1].at - final.audit[0].at).total_seconds() / 86400
    assert workflow_days >= 13, f"workflow clock advanced only {workflow_days:.2f} days"
    assert wall < 120, f"time skipping should make 13 days take seconds, took {wall:.0f}s"
    assert weights == Weights(source=0, target=100)
