"""Continuous sync: the target's datasets kept current from the POC to the final sync (plan `sync:`).

A 6-hour interval is driven with the dev server's per-workflow time skipping (fast-forward), the
passes themselves run in real time on loopback stores; a low `suggestContinueAsNew` threshold makes
the cutover continue as new, so the loop is seen resuming from its state in the next run. A
rollback mid-pass is made observable by a paced link (bench/faultproxy.py) in front of moto's S3:
the pass is still copying when it is asked.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment

from activities.stores import open_store
from bench.faultproxy import FaultProxy
from starters.operate import start_migration
from starters.render import summary
from tests.conftest import running_workers, temporal_cli
from tests.helpers import approve_gates, plan_data, suffix, wait_for
from workflows.migration import MigrationWorkflow
from workflows.plan import parse_plan
from workflows.state import SEARCH_ATTRIBUTES, OperatorInput, RollbackInput

pytestmark = pytest.mark.stack

CORPUS = "datasets/corpus"


def seed_corpus(url: str, objects: int = 2, size: int = 20_000) -> None:
    store = open_store(url)
    for i in range(objects):
        store.put_bytes(f"{CORPUS}/part-{i:03d}.bin", os.urandom(size))


async def record(handle, scenario: str) -> None:
    """How tests/histories/continuous_sync* were made (SKYSHIFT_RECORD_HISTORIES=tests/histories)."""
    if folder := os.environ.get("SKYSHIFT_RECORD_HISTORIES"):
        history = await handle.fetch_history()
        (Path(folder) / f"{scenario}@{handle.id}.json").write_text(history.to_json())


def at_cutover_gate(state) -> bool:
    assert state.outcome is None, state.outcome_reason
    return state.phase == "cutover" and state.pending_gate is not None


async def test_a_dataset_changing_during_the_cutover_stays_current_and_the_final_sync_sends_only_the_last_change(
    tmp_path,
):
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"],
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        ts_config=TimeSkippingConfig(enabled=False),  # real time until the test fast-forwards the workflow
    )
    source_url, target_url = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed_corpus(source_url)
    source, target = open_store(source_url), open_store(target_url)
    plan = parse_plan(plan_data(
        suffix(), source_url, target_url,
        workloads={"datasets": [{"name": "corpus", "path": CORPUS}], "checkpoints": []},
        cutover={"stages": [{"percent": 100, "approval": True}]},
        decommission={"failback_window": "0s"},
        sync={"every": "6h"},
    ))  # fmt: skip
    try:
        async with running_workers(env.client, plan.source, plan.target):
            handle = await start_migration(env.client, plan)
            state = await approve_gates(handle, at_cutover_gate)
            assert state.sync.started_at is not None and state.sync.passes_run == 0

            changes = [(f"{CORPUS}/part-new.bin", os.urandom(30_000)), (f"{CORPUS}/part-000.bin", os.urandom(25_000))]
            for number, (key, data) in enumerate(changes, start=1):
                source.put_bytes(key, data)
                if number == 1:  # paused when the pass falls due: it waits for the resume
                    await handle.signal(MigrationWorkflow.pause, OperatorInput(by="tester", note="hold"))
                await env.fast_forward(handle, timedelta(hours=6))
                if number == 1:
                    await handle.signal(MigrationWorkflow.resume, OperatorInput(by="tester"))
                state = await wait_for(handle, lambda s, n=number: len(s.sync.passes) >= n, timeout=90,
                                       what=f"continuous pass {number}")  # fmt: skip
                done = state.sync.passes[number - 1]
                assert done.outcome == "done" and done.changed == [key], done
                assert done.objects == 1, "the pass after a change carries only that change"
                assert len(data) <= done.bytes_sent < len(data) + 8_000, done
                assert target.read_bytes(key) == data, "the target is current after the pass"
                if number == 1:
                    resumed = next(e.at for e in state.audit if e.action == "resumed")
                    assert done.at >= resumed, "a paused migration moves no data: the due pass ran after the resume"

            last_key, last_data = f"{CORPUS}/part-last.bin", os.urandom(12_000)
            source.put_bytes(last_key, last_data)
            final = await approve_gates(handle, lambda s: s.outcome is not None)
            final = await handle.result()
            await record(handle, "continuous_sync")
    finally:
        await env.shutdown()
    assert final.outcome == "completed", final.outcome_reason
    assert final.sync.passes_run == 2 and final.sync.stopped_for == "final sync"
    (sent,) = final.decommission.final_sync
    assert sent.changed == [last_key] and sent.totals.objects_changed == 1, "the final sync sends only what is new"
    assert open_store(target_url).read_bytes(last_key) == last_data
    amplification = final.data_transfer_amplification()
    assert amplification is not None and amplification == final.egress_bytes / final.assessment.total_bytes
    shown = summary(final)
    assert "continuous sync: 2 passes, 2 objects" in shown and f"{amplification:.3f}x" in shown


async def test_a_rollback_during_a_pass_waits_for_it_and_undoes_it(client, s3_endpoint, s3_bucket, tmp_path):
    proxy = FaultProxy(s3_endpoint)
    source_url, target_url = f"s3://{s3_bucket}/src", f"file://{tmp_path}/dst"
    seed_corpus(source_url)
    data = plan_data(
        suffix(), source_url, target_url,
        workloads={"datasets": [{"name": "corpus", "path": CORPUS}], "checkpoints": []},
        cutover={"stages": [{"percent": 100, "approval": True}]},
        sync={"every": "1s"},
    )  # fmt: skip
    data["environments"][0]["storage"]["endpoint"] = proxy.url
    plan = parse_plan(data)
    big = f"{CORPUS}/part-big.bin"
    try:
        async with running_workers(client, plan.source, plan.target):
            handle = await start_migration(client, plan)
            await approve_gates(handle, at_cutover_gate)
            proxy.bytes_per_s = 1 << 20  # the next pass reads and copies 4 MiB at 1 MiB/s: seconds in flight
            open_store(source_url).put_bytes(big, os.urandom(4 << 20))
            begun = (await handle.query(MigrationWorkflow.status)).sync.passes_run  # later passes see the object
            state = await wait_for(handle, lambda s: s.sync.in_pass and s.sync.passes_run > begun, timeout=60,
                                   what="a pass carrying the big object in flight")  # fmt: skip
            in_flight = state.sync.passes_run
            await handle.execute_update(MigrationWorkflow.request_rollback, RollbackInput(reason="test", by="tester"))
            final = await handle.result()
            await record(handle, "continuous_sync_rollback")
            child = await client.get_workflow_handle(f"{handle.id}-continuous-{in_flight}-sync-corpus").describe()
    finally:
        proxy.close()
    assert final.outcome == "rolled_back", final.outcome_reason
    assert final.sync.stopped_for == "undo" and final.sync.passes[-1].outcome == "cancelled"
    # Its ranges stop at their next heartbeat or when done: either way the pass's child has *closed*.
    assert child.status in (WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.COMPLETED), child.status
    assert child.close_time is not None
    actions = [entry.action for entry in final.audit]
    assert actions.index("continuous_sync_stopped") < actions.index("compensated"), "stopped before the undo"
    stopped = next(e.at for e in final.audit if e.action == "continuous_sync_stopped")
    assert child.close_time <= stopped, "the pass's sync had finished stopping before the undo began"
    left = [info.key for info in open_store(target_url).list(CORPUS)]
    assert left == [], f"the undo removed what the passes wrote, the cancelled one's too: {left}"


async def test_the_loop_survives_continue_as_new_with_its_pass_count_and_due_time(tmp_path):
    # A low suggestion threshold makes the cutover continue as new after its first stage's timer.
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true",
                               "--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"],
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        ts_config=TimeSkippingConfig(enabled=False),
    )  # fmt: skip
    source_url, target_url = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed_corpus(source_url)
    source, target = open_store(source_url), open_store(target_url)
    plan = parse_plan(plan_data(
        suffix(), source_url, target_url,
        workloads={"datasets": [{"name": "corpus", "path": CORPUS}], "checkpoints": []},
        cutover={"stages": [{"percent": 50, "duration": "1h"}, {"percent": 100, "approval": True}]},
        decommission={"failback_window": "0s"},
        sync={"every": "6h"},
    ))  # fmt: skip
    try:
        async with running_workers(env.client, plan.source, plan.target):
            handle = await start_migration(env.client, plan)
            first = await approve_gates(handle, lambda s: s.phase == "cutover" and s.stage == "50pct")
            first_run = (await handle.describe()).run_id
            due = first.sync.next_due
            await env.fast_forward(handle, timedelta(hours=1))  # the stage's timer, then continue-as-new
            state = await wait_for(handle, at_cutover_gate, timeout=90, what="the 100% gate in the next run")
            assert (await handle.describe()).run_id != first_run, "the workflow continued as new"
            assert state.sync.next_due == due and state.sync.passes_run == 0 and state.sync.stopped_at is None
            key, data = f"{CORPUS}/part-new.bin", os.urandom(30_000)
            source.put_bytes(key, data)
            await env.fast_forward(handle, timedelta(hours=6))
            state = await wait_for(handle, lambda s: len(s.sync.passes) >= 1, timeout=90, what="a pass in the new run")
            assert state.sync.passes[0].changed == [key] and target.read_bytes(key) == data
            final = await approve_gates(handle, lambda s: s.outcome is not None)
    finally:
        await env.shutdown()
    assert final.outcome == "completed", final.outcome_reason
    assert final.sync.passes_run == 1 and final.sync.stopped_for == "final sync"
