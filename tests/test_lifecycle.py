"""The whole migration with the operator's job, checkpoints judged and moved sealed, and a shadow phase.

Each runs the real MigrationWorkflow on the dev server with real workers, stores and subprocesses:
an unsafe checkpoint stops it at assess without running anything; a job whose target computes one
operation differently (a switch only the target's worker process has) fails the parallel run; a
target whose outputs drift is caught by the shadow phase before any traffic moves; a checkpoint
moved sealed is plaintext only where the target's worker decrypted it, and a rollback removes it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from activities.checkpoints.kms import create_key_file
from activities.stores import open_store
from activities.traffic import HttpRouter, Weights
from skyshift.spec.traffic import HttpRouterSpec
from starters.operate import start_migration
from tests.checkpoint_files import evil_checkpoint, model_state, save
from tests.conftest import ServingPair, free_port, running_workers
from tests.helpers import approve_gates, make_plan, plan_data, seed, suffix, wait_for
from workflows.migration import MigrationWorkflow
from workflows.plan import parse_plan
from workflows.state import RollbackInput

pytestmark = pytest.mark.stack
JOB = Path(__file__).resolve().parent.parent / "examples" / "jobs" / "train" / "train.py"


async def test_a_checkpoint_that_would_run_code_stops_the_migration_at_assess(client, tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    marker = tmp_path / "the-pickle-ran"
    evil_checkpoint(tmp_path / "src" / "checkpoints" / "model" / "model.pt", marker)
    plan = make_plan(suffix(), source, target)
    async with running_workers(client, plan.source, plan.target):
        final = await (await start_migration(client, plan)).result()
    assert final.outcome == "stopped" and final.ended_in == "assess"
    assert "checkpoints/model" in final.outcome_reason and "model.pt" in final.outcome_reason
    assert not marker.exists(), "nothing of the checkpoint was executed"
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").rglob("*.pt")), "nothing moved"


def _job_plan(tag: str, source: str, target: str):
    return make_plan(tag, source, target, workloads={
        "datasets": [{"name": "corpus", "path": "datasets/corpus"}],
        "jobs": [{"name": "tiny-lm", "code": "jobs/tiny-lm", "uses": ["corpus"], "timeout": "5m",
                  "command": ["python", "train.py", "--steps", "12", "--dataset", "corpus"],
                  "env": {"OMP_NUM_THREADS": "1", "TRAIN_DEVICE": "cpu"}}],
    })  # fmt: skip


async def test_a_job_whose_target_computes_softmax_in_fp16_fails_the_parallel_run_and_rolls_back(client, tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    open_store(source).put_bytes("jobs/tiny-lm/train.py", JOB.read_bytes())
    plan = _job_plan(suffix(), source, target)
    # The target's worker is its own process with a switch only it has: the budget cloud's softmax bug.
    env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host, "TRAIN_SOFTMAX_FP16": "1",
           "SKYSHIFT_CACHE_DIR": str(tmp_path / "target-cache")}  # fmt: skip
    worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.main", "--env", plan.target, env=env,
                                                  stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        async with running_workers(client, plan.source):
            handle = await start_migration(client, plan)
            final = await approve_gates(handle, lambda s: s.outcome is not None, timeout=300)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), timeout=60)
    assert final.outcome == "rolled_back" and final.rollback_request.by == "skyshift:parallel_run"
    [comparison] = final.jobs
    assert comparison.verdict.outcome == "fail" and comparison.first_diverging_step is not None
    assert comparison.top_tensors, "the verdict names the tensors that moved"
    assert f"first diverging step {comparison.first_diverging_step}" in final.outcome_reason
    assert [a.status for a in comparison.arms] == ["succeeded"] * 3
    assert len({a.code_root for a in comparison.arms}) == 1, "every arm ran byte-identical code"
    assert not open_store(target).exists("datasets/corpus/part-000.bin"), "the copies were rolled back"


def _serving_with_target(perturb: float) -> ServingPair:
    """Source and target endpoints; the target's weights perturbed by `perturb` (drift), latency equal."""
    from workers import endpoint

    pair = ServingPair.__new__(ServingPair)
    pair.ports = {name: free_port() for name in ("source", "target", "router")}
    pair.state_file = None
    target_model = endpoint.drift(endpoint.tiny_model(), perturb) if perturb else endpoint.tiny_model()
    pair.servers = [
        endpoint.serve("source", "127.0.0.1", pair.ports["source"], endpoint.tiny_model(), 2.0),
        endpoint.serve("target", "127.0.0.1", pair.ports["target"], target_model, 2.0),
    ]
    for server in pair.servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    pair.start_router()
    return pair


@pytest.mark.parametrize(("perturb", "outcome"), [(0.0, "pass"), (0.02, "fail")])
async def test_the_shadow_phase_judges_outputs_before_any_traffic_moves(perturb, outcome, client, tmp_path):
    from skyshift.demo_model import request_sample

    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    open_store(source).put_bytes("shadow/requests.jsonl", request_sample(120, seed=3))
    serving = _serving_with_target(perturb)
    workloads = {"datasets": [{"name": "corpus", "path": "datasets/corpus"}], **serving.plan_workloads()}
    workloads["endpoints"][0]["shadow"] = {"requests": "shadow/requests.jsonl", "min_requests": 100,
                                           "comparator": {"kind": "json", "ignore": ["served_by"]}}  # fmt: skip
    plan = parse_plan(plan_data(suffix(), source, target, workloads=workloads))
    try:
        async with running_workers(client, plan.source, plan.target):
            handle = await start_migration(client, plan)
            state = await approve_gates(handle, lambda s: s.outcome is not None or s.phase == "cutover", timeout=240)
            if state.outcome is None:
                await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="test over", by="tester"))
            final = await handle.result()
        weights = HttpRouter(HttpRouterSpec(admin_url=serving.url("router"))).current()
    finally:
        serving.close()
    [shadow] = final.shadow
    assert shadow.verdict.outcome == outcome and shadow.compared >= 100
    assert weights == Weights(source=100, target=0)
    if outcome == "fail":
        assert final.outcome == "rolled_back" and final.rollback_request.by == "skyshift:shadow"
        assert "cutover" not in final.completed_phases and final.traffic_percent == 0, "no traffic ever moved"
        assert any(f.differs and f.field.startswith("outputs") for f in shadow.fields)
        assert "outputs[0]" in final.outcome_reason, "the differing fields are named"


async def test_a_sealed_checkpoint_is_plaintext_only_where_the_target_decrypted_it_and_rollback_removes_it(
    client, tmp_path, s3_bucket, gcs_bucket
):
    source, target = f"s3://{s3_bucket}/ml", f"gs://{gcs_bucket}/ml"
    seed(source)
    state = model_state(seed=5, width=64)
    local = save(tmp_path / "model.pt", state)
    open_store(source).put_bytes("checkpoints/secret/model.pt", local.read_bytes())
    key = create_key_file(tmp_path / "keys" / "demo.key")
    workloads = {"datasets": [{"name": "corpus", "path": "datasets/corpus"}],
                 "checkpoints": [{"name": "secret", "path": "checkpoints/secret",
                                  "encryption": {"kms_key": key.kms_key}}]}  # fmt: skip
    plan = make_plan(suffix(), source, target, workloads=workloads)
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        at_gate = await wait_for(handle, lambda s: s.pending_gate is not None and s.pending_gate.stage == "poc",
                                 timeout=180)  # fmt: skip
        stored = {o.key: open_store(target).read_bytes(o.key) for o in open_store(target).list("checkpoints/secret")}
        await handle.signal(MigrationWorkflow.rollback, RollbackInput(reason="test over", by="tester"))
        final = await handle.result()
    [sealed] = at_gate.poc.sealed
    [report] = at_gate.poc.checkpoints
    assert sealed.chunks_sent == sealed.chunks_total > 0 and report.verdict.outcome == "pass"
    tensor = state["layers.0.weight"].numpy().tobytes()
    repository = {k: v for k, v in stored.items() if "/sealed/" in k}
    assert repository and not any(tensor[:256] in body for body in repository.values()), "sealed: no plaintext"
    assert stored["checkpoints/secret/model.pt"] == local.read_bytes(), "decrypted by the target's worker"
    assert final.outcome == "rolled_back"
    assert list(open_store(target).list("checkpoints/secret")) == [], "rollback removes sealed and decrypted copies"
