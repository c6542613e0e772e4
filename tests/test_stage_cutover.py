"""The cutover with stage-level verdicts on the real stack: the source measured at full load before
traffic moves is what the target at 100% is judged against, and every verdict names its baseline."""

from __future__ import annotations

import pytest

from starters.load import LoadGenerator
from starters.operate import start_migration
from tests.conftest import running_workers
from tests.helpers import approve_gates, record_history
from tests.test_cutover import plan_for

pytestmark = pytest.mark.stack


async def test_at_100_percent_equal_endpoints_are_judged_against_the_source_at_full_load(client, tmp_path, serving):
    plan = plan_for(tmp_path, serving, [{"percent": 50, "duration": "3s"}, {"percent": 100, "duration": "3s"}])
    load = LoadGenerator(serving.url("router"), rate=150, max_seconds=120).start()
    try:
        async with running_workers(client, plan.source, plan.target):
            handle = await start_migration(client, plan)
            await approve_gates(handle, lambda s: s.outcome is not None, timeout=90)
            final = await handle.result()
            await record_history(handle, "stage_verdicts")
    finally:
        load.stop()
    assert final.outcome == "completed", final.outcome_reason
    recorded = next(e for e in final.audit if e.action == "baseline_recorded")
    assert "req/s" in recorded.detail
    at_full = [v for v in final.verdicts if v.subject == "cutover:100pct"]
    assert at_full, "the 100% stage was judged"
    latency = [c for v in at_full for c in v.checks if c.metric == "chat.latency"]
    assert latency and all("before traffic moved" in c.detail for c in latency), [c.detail for c in latency]
    half = [c for v in final.verdicts if v.subject == "cutover:50pct" for c in v.checks if c.metric == "chat.latency"]
    assert half and all("concurrent source window at the same load" in c.detail for c in half)
    stage = [c for v in at_full for c in v.checks if c.metric == "chat.stage_latency_p95"]
    assert stage and "Shiryaev-Roberts" in stage[-1].detail
