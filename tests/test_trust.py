"""Nothing lost on any path: each failure found by trying the product, reproduced on the real stack.

Guarded destructive steps (missing source, overlapping paths, bounded deletes), hostile keys and
reserved names, a CLI killed mid-sync and run again, replies failing in every way, and a migration
that fails, is cancelled or is rolled back while it is moving data: each must end with its undo done,
an outcome recorded, and the target exactly as the operator would expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

from activities.stores import StoreSpec, open_store
from bench.faultproxy import FaultProxy
from starters.cli import main
from starters.operate import start_migration
from tests.conftest import running_workers
from tests.helpers import make_plan, plan_data, seed, suffix, wait_for
from workflows.migration import MigrationWorkflow
from workflows.plan import parse_plan
from workflows.saga import UNDO_ACTIVITIES, Compensation
from workflows.state import PHASES, SA_OUTCOME, SA_TRAFFIC, RollbackInput

pytestmark = pytest.mark.stack
MiB = 1 << 20


def user_keys(url: str) -> set[str]:
    return {o.key for o in open_store(url).list()}


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


# -- the structure that carries the undo ------------------------------------------------------------


def test_every_compensation_resolves_to_an_activity_a_worker_serves():
    from workers.registry import CONTROL_ACTIVITIES, ENVIRONMENT_ACTIVITIES

    def served_name(fn) -> str:  # the SDK's own name for an activity: what a worker registers and histories hold
        from temporalio import activity

        return activity._Definition.must_from_callable(fn).name

    served = {served_name(fn) for fn in ENVIRONMENT_ACTIVITIES + CONTROL_ACTIVITIES}
    assert {name: served_name(fn) for name, fn in UNDO_ACTIVITIES.items()} == {name: name for name in UNDO_ACTIVITIES}
    assert set(UNDO_ACTIVITIES) <= served
    from activities.training import train_seeded
    from activities.transfer.ledger import LedgerInput

    with pytest.raises(TypeError, match="UNDO_ACTIVITIES"):
        Compensation.of(train_seeded, LedgerInput(target=StoreSpec(url="file:///x"), ledger_key="m/w"),
                        task_queue="q", summary="not an undo")  # fmt: skip


def test_the_lifecycle_runs_the_phases_status_names_in_order(tmp_path):
    plan = make_plan(suffix(), f"file://{tmp_path}/a", f"file://{tmp_path}/b")
    names = [name for name, _ in MigrationWorkflow.lifecycle(_Host(plan))]
    assert names == [p for p in PHASES if p in names] and "shadow" not in names, "shadow runs only when configured"


class _Host(MigrationWorkflow):
    def __init__(self, plan) -> None:
        from workflows.phases.context import MigrationContext
        from workflows.state import MigrationState

        self.ctx = MigrationContext(plan, MigrationState(migration_id="m", plan_name=plan.name))


# -- guarded destructive steps ----------------------------------------------------------------------


async def test_a_missing_source_with_delete_is_an_error_and_the_target_is_untouched(tmp_path, client, capsys):
    target = tmp_path / "keep"
    target.mkdir()
    (target / "precious.bin").write_bytes(b"do not delete me")
    code = await cli("sync", f"file://{tmp_path}/typo-does-not-exist", f"file://{target}", "--delete", "--json")
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
    assert (target / "precious.bin").read_bytes() == b"do not delete me"


async def test_an_empty_object_store_prefix_is_not_an_empty_dataset(s3_bucket, tmp_path, client, capsys):
    open_store(f"s3://{s3_bucket}/real").put_bytes("a.bin", b"data")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "x").write_bytes(b"x")
    assert await cli("sync", f"s3://{s3_bucket}/reall", f"file://{tmp_path}/keep", "--delete") == 1
    assert "no objects there" in capsys.readouterr().err
    assert (tmp_path / "keep" / "x").exists()


@pytest.mark.parametrize("layout", ["source-inside-target", "target-inside-source", "same", "same-through-symlink"])
async def test_overlapping_source_and_target_are_refused_before_anything_starts(layout, tmp_path, capsys):
    outer = tmp_path / "A"
    (outer / "inner").mkdir(parents=True)
    (outer / "inner" / "data.bin").write_bytes(b"source data")
    os.symlink(outer, tmp_path / "link")
    source, target = {
        "source-inside-target": (outer / "inner", outer),
        "target-inside-source": (outer, outer / "sub"),
        "same": (outer, outer),
        "same-through-symlink": (outer, tmp_path / "link"),
    }[layout]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert await cli("sync", f"file://{source}", f"file://{target}", "--delete") == 2
    assert "overlap" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


async def test_delete_is_bounded_listed_by_dry_run_and_done_only_when_allowed(tmp_path, client, capsys):
    source, target = tmp_path / "src", tmp_path / "dst"
    for directory, count in ((source, 5), (target, 10)):
        directory.mkdir()
        for i in range(count):
            (directory / f"obj-{i}.bin").write_bytes(f"object {i}".encode())
    assert await cli("sync", f"file://{source}", f"file://{target}", "--delete", "--dry-run", "--json") == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["deletable"] == 5 and sorted(planned["deletable_examples"]) == [f"obj-{i}.bin" for i in range(5, 10)]
    assert len(list(target.iterdir())) == 10, "a dry run deletes nothing"

    assert await cli("sync", f"file://{source}", f"file://{target}", "--delete") == 2  # 50% > the 10% default
    assert "refusing to delete 5 objects" in capsys.readouterr().err
    assert len(list(target.iterdir())) == 10, "nothing deleted when the bound refuses"

    assert await cli("sync", f"file://{source}", f"file://{target}", "--delete", "--max-delete", "5", "--json") == 0
    assert json.loads(capsys.readouterr().out)["objects_deleted"] == 5
    assert sorted(p.name for p in target.iterdir()) == [f"obj-{i}.bin" for i in range(5)]


async def test_a_user_object_under_the_reserved_name_is_refused_by_name_and_the_rest_syncs(
    s3_bucket, gcs_bucket, client, capsys
):
    source = open_store(f"s3://{s3_bucket}/data")
    source.put_bytes(".skyshift/manifests/mine.json", b"a user's own file that happens to use the name")
    source.put_bytes("ok/a.bin", b"fine")
    # `.skyshift/` at a store's root is reserved (it is also where a bucket-root target keeps its metadata).
    assert await cli("sync", f"s3://{s3_bucket}/data", f"gs://{gcs_bucket}", "--json") == 1
    out, err = capsys.readouterr()
    assert ".skyshift/manifests/mine.json" in err and "reserved name" in err
    assert json.loads(out)["objects_skipped"] == 1
    assert open_store(f"gs://{gcs_bucket}").read_bytes("ok/a.bin") == b"fine"


# -- a CLI killed mid-sync, run again ---------------------------------------------------------------


async def test_sigkill_of_the_cli_then_the_same_command_resumes_with_little_resent(
    client, s3_endpoint, s3_bucket, tmp_path
):
    sizes = [48 * MiB, 48 * MiB]
    data = {f"ds/shard-{i}.bin": os.urandom(size) for i, size in enumerate(sizes)}
    for key, body in data.items():
        open_store(f"s3://{s3_bucket}/kill").put_bytes(key, body)
    proxy = FaultProxy(s3_endpoint)  # counts every byte the source serves
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url, "TEMPORAL_ADDRESS": client.service_client.config.target_host,
           "SKYSHIFT_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    command = [sys.executable, "-m", "starters.cli", "sync", f"s3://{s3_bucket}/kill", f"file://{tmp_path}/dst",
               "--json"]  # fmt: skip
    try:
        first = await asyncio.create_subprocess_exec(*command, env=env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.DEVNULL)  # fmt: skip
        await _until(lambda: _uploaded_parts(tmp_path / ".skyshift" / "dst") >= 3, what="parts uploaded")
        first.send_signal(signal.SIGKILL)
        await first.wait()
        second = await asyncio.create_subprocess_exec(*command, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE)  # fmt: skip
        _, err = await asyncio.wait_for(second.communicate(), timeout=300)
    finally:
        proxy.close()
    assert second.returncode == 0, err.decode()[-2000:]
    total = sum(sizes)
    assert {k: open_store(f"file://{tmp_path}/dst").read_bytes(k) for k in data} == data
    resent = proxy.counters.bytes_served - 2 * total  # once to fingerprint, once to copy
    assert resent < 0.10 * total, f"re-sent {resent / MiB:.1f} MiB of {total / MiB:.0f} MiB"
    running = [
        w async for w in client.list_workflows('WorkflowType="DatasetSyncWorkflow" AND ExecutionStatus="Running"')
    ]
    assert running == [], "the killed run's workflow was adopted and finished, not left Running"
    assert list(open_store(f"file://{tmp_path}/dst").metadata.list("uploads")) == [], "no abandoned upload"


def _uploaded_parts(area) -> int:
    return sum(1 for p in area.rglob("*") if p.is_file() and p.name.isdigit()) if area.exists() else 0


async def _until(condition, what: str, timeout: float = 240) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# -- replies failing in every way -------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["s3-to-file", "file-to-s3"])
async def test_five_percent_of_replies_failing_in_every_way_still_syncs_byte_identical(
    direction, client, s3_endpoint, s3_bucket, tmp_path
):
    data = {f"ds/{i:02d}.bin": os.urandom(size) for i, size in enumerate([3 * MiB, 20 * MiB, 1000, 0, 200_000])}
    local = f"file://{tmp_path}/local"
    bucket = f"s3://{s3_bucket}/faults"
    source, target = (bucket, local) if direction == "s3-to-file" else (local, bucket)
    for key, body in data.items():
        open_store(source).put_bytes(key, body)
    proxy = FaultProxy(s3_endpoint, rate=0.05)
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url, "TEMPORAL_ADDRESS": client.service_client.config.target_host,
           "SKYSHIFT_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    try:
        command = [sys.executable, "-m", "starters.cli", "sync", source, target, "--json"]
        done = await asyncio.create_subprocess_exec(*command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(done.communicate(), timeout=600)
    finally:
        proxy.close()
    assert done.returncode == 0, err.decode()[-2000:]
    assert sum(proxy.counters.faults.values()) > 0, proxy.counters
    assert {k: open_store(target).read_bytes(k) for k in data} == data


# -- a migration that fails, is cancelled or rolled back while it works -------------------------------

DATA = {
    "datasets": [{"name": "corpus", "path": "datasets/corpus"}],
    "checkpoints": [{"name": "model", "path": "checkpoints/model"}],
}


async def test_a_child_that_fails_compensates_records_failed_and_watch_returns(client, s3_bucket, gcs_bucket):
    src, dst = f"s3://{s3_bucket}/ml", f"gs://{gcs_bucket}/ml"
    seed(src)
    plan = make_plan(suffix(), src, dst, egress_budget_usd=0)  # the budget gate lets the test act between phases
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await wait_for(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "egress-budget")
        open_store(src).remove("checkpoints/model/model.pt")  # the model's sync will find no source
        await handle.execute_update(MigrationWorkflow.approve, {"stage": "egress-budget", "by": "tester"})
        watched = asyncio.create_task(cli("watch", handle.id))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        state = await handle.query(MigrationWorkflow.status)
        assert await asyncio.wait_for(watched, timeout=60) == 1, "watch returns when the workflow closes"
    assert state.outcome == "failed" and state.ended_in == "poc"
    assert "no objects there" in state.outcome_reason
    assert [e.detail for e in state.audit if e.action == "compensated"], "the copies made so far were undone"
    assert user_keys(dst) == set()
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.FAILED
    assert described.typed_search_attributes.get(SA_OUTCOME) == "failed"


async def test_an_activity_that_fails_compensates_and_records_failed(client, s3_bucket, gcs_bucket):
    src, dst = f"s3://{s3_bucket}/ml", f"gs://{gcs_bucket}/ml"
    seed(src)
    plan = make_plan(suffix(), src, dst)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await wait_for(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "poc")
        for key in [o.key for o in open_store(src).list("datasets")]:
            open_store(src).remove(key)  # the parallel run's training at the source has nothing to read
        await handle.execute_update(MigrationWorkflow.approve, {"stage": "poc", "by": "tester"})
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        state = await handle.query(MigrationWorkflow.status)
    assert state.outcome == "failed" and state.ended_in == "parallel_run"
    assert "no objects to train on" in state.outcome_reason
    assert user_keys(dst) == set(), "every copy the POC made was deleted"


def _slow_plan(tag: str, s3_bucket: str, dst: str, proxy: FaultProxy, **overrides):
    workloads = {"datasets": DATA["datasets"], "checkpoints": []}
    data = plan_data(tag, f"s3://{s3_bucket}/ml", dst, workloads=workloads, **overrides)
    data["environments"][0]["storage"]["endpoint"] = proxy.url
    return parse_plan(data)


def _seed_many(url: str, count: int) -> None:
    store = open_store(url)
    for i in range(count):
        store.put_bytes(f"datasets/corpus/obj-{i:04d}.bin", os.urandom(1000 + i))


@pytest.mark.parametrize("how", ["cancel", "rollback"])
async def test_stopping_a_migration_during_its_sync_interrupts_it_then_undoes_it(
    how, client, s3_endpoint, s3_bucket, gcs_bucket
):
    dst = f"gs://{gcs_bucket}/ml"
    _seed_many(f"s3://{s3_bucket}/ml", 400)
    before = b"the target had these bytes before the migration"
    open_store(dst).put_bytes("datasets/corpus/obj-0000.bin", before)  # the sync overwrites it first
    proxy = FaultProxy(s3_endpoint, latency_s=0.25)  # a slow cross-region source: the sync takes minutes
    plan = _slow_plan(suffix(), s3_bucket, dst, proxy)
    try:
        async with running_workers(client, plan.source, plan.target):
            handle = await start_migration(client, plan)
            await wait_for(handle, lambda s: s.phase == "poc", timeout=120, what="poc")
            child = client.get_workflow_handle(f"{handle.id}-poc-sync-corpus")
            await _until_async(lambda: _pending(child, "fingerprint_batch"), what="the sync fingerprinting")
            if how == "cancel":
                await handle.cancel()
            else:
                await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="wrong region", by="alice"))
            with pytest.raises(WorkflowFailureError) if how == "cancel" else contextlib.nullcontext():
                await handle.result()
            state = await handle.query(MigrationWorkflow.status)
            child_status = (await child.describe()).status
    finally:
        proxy.close()
    assert state.outcome == ("cancelled" if how == "cancel" else "rolled_back")
    assert child_status == WorkflowExecutionStatus.CANCELED, "the sync was interrupted, not waited for"
    assert "interrupting" in {e.action for e in state.audit} or how == "cancel"
    assert open_store(dst).read_bytes("datasets/corpus/obj-0000.bin") == before, "the overwritten object is restored"
    assert user_keys(dst) == {"datasets/corpus/obj-0000.bin"}, "no writer committed anything after the undo"
    assert (await handle.describe()).typed_search_attributes.get(SA_TRAFFIC) in (None, 0)


async def _pending(handle, activity: str) -> bool:
    try:
        description = await handle.describe()
    except Exception:
        return False
    return any(p.activity_type.name == activity for p in description.raw_description.pending_activities)


async def _until_async(condition, what: str, timeout: float = 180) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_rollback_request_the_workflow_would_ignore_is_rejected(client, tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    plan = make_plan(suffix(), source, target)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await wait_for(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "poc")
        accepted = await handle.execute_update(MigrationWorkflow.request_rollback, RollbackInput(reason="stop", by="a"))
        from temporalio.client import WorkflowUpdateFailedError

        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(MigrationWorkflow.request_rollback, RollbackInput(reason="again", by="b"))
        assert "already under way" in str(rejected.value.cause)
        state = await handle.result()
    assert accepted == "poc" and state.outcome == "rolled_back"
    assert [e.actor for e in state.audit if e.action == "rollback_requested"] == ["a"]


async def test_a_malformed_rollback_signal_from_any_client_is_audited_not_dropped(client, tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    plan = make_plan(suffix(), source, target)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await wait_for(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "poc")
        await handle.signal("rollback", {"by": "mallory"})  # no reason: what a hand-written client might send
        state = await wait_for(handle, lambda s: any(e.action == "rollback_rejected" for e in s.audit))
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="test over"))
        await handle.result()
    rejected = next(e for e in state.audit if e.action == "rollback_rejected")
    assert "Field required" in rejected.detail and state.rollback_request is None
