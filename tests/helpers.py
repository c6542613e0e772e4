"""Plans, seeded stores and polling for the integration tests."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle

from activities.stores import open_store
from workflows.migration import MigrationWorkflow
from workflows.plan import MigrationPlan, parse_plan
from workflows.state import MigrationState


def suffix() -> str:
    return uuid.uuid4().hex[:8]


def environments(tag: str, source_url: str, target_url: str) -> list[dict[str, Any]]:
    return [
        {
            "name": f"src-{tag}", "provider": "aws", "region": "us-east-1", "storage": {"url": source_url},
            "compute": {"gpu_type": "A100-80GB", "gpu_count": 8, "price_per_gpu_hour": 4.1},
            "egress_per_gb_usd": 0.09, "allowed_data_regions": ["us-east-1", "eu-north1"],
        },
        {
            "name": f"dst-{tag}", "provider": "nebius", "region": "eu-north1", "storage": {"url": target_url},
            "compute": {"gpu_type": "H100-80GB", "gpu_count": 8, "price_per_gpu_hour": 2.95},
            "egress_per_gb_usd": 0.0,
        },
    ]  # fmt: skip


def plan_data(tag: str, source_url: str, target_url: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": f"t-{tag}",
        "source": f"src-{tag}",
        "target": f"dst-{tag}",
        "environments": environments(tag, source_url, target_url),
        "workloads": {
            "datasets": [{"name": "corpus", "path": "datasets/corpus"}],
            "checkpoints": [{"name": "model", "path": "checkpoints/model"}],
        },
        # 99.5%: windows of ~30 requests on a shared 2-core CI machine; real regressions score p < 1e-10 here.
        "thresholds": {"min_samples": 20, "inconclusive_limit": 3, "confidence": 0.995},
        "cutover": {"monitor_interval": "1s", "stages": [{"percent": 20, "duration": "2s"}, {"percent": 100}]},
        "bench": {
            "trials": 1,
            "matrix_size": 128,
            "device": "cpu",
            "seconds_per_test": 0.05,
            "sustained_seconds": 0.2,
            "allreduce_processes": 0,
        },
        "parallel_run": {"steps": 8, "batch_size": 16, "sample_bytes": 65536},
        "egress_budget_usd": 100,
        "soak_period": "1s",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def make_plan(tag: str, source_url: str, target_url: str, **overrides: Any) -> MigrationPlan:
    return parse_plan(plan_data(tag, source_url, target_url, **overrides))


def tiny_checkpoint(seed: int = 0) -> bytes:
    """A real torch state dict (a checkpoint skyshift can inspect), a few kB."""
    from starters.seed import checkpoint_bytes

    return checkpoint_bytes(16, seed)


def seed(url: str, objects: int = 4, size: int = 150_000) -> dict[str, bytes]:
    """Write a small dataset and a checkpoint; return key → bytes."""
    store = open_store(url)
    written = {f"datasets/corpus/part-{i:03d}.bin": os.urandom(size) for i in range(objects)}
    written["checkpoints/model/model.pt"] = tiny_checkpoint()
    for key, data in written.items():
        store.put_bytes(key, data)
    return written


async def wait_for(
    handle: WorkflowHandle, predicate: Callable[[MigrationState], bool], timeout: float = 60, what: str = ""
) -> MigrationState:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = await handle.query(MigrationWorkflow.status)
        if predicate(state):
            return state
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"timed out waiting for {what or predicate}: phase={state and state.phase} gate={state and state.pending_gate}"
    )


async def approve_gates(
    handle: WorkflowHandle, stop: Callable[[MigrationState], bool], timeout: float = 90
) -> MigrationState:
    """Approve every gate as it opens until `stop(state)`; return that state."""
    from workflows.state import ApproveInput

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = await handle.query(MigrationWorkflow.status)
        if stop(state):
            return state
        if state.pending_gate is not None:
            await handle.execute_update(
                MigrationWorkflow.approve, ApproveInput(stage=state.pending_gate.stage, by="tester")
            )
        await asyncio.sleep(0.2)
    seen = state and state.model_dump_json(include={"phase", "stage", "traffic_percent", "outcome_reason", "audit"})
    raise AssertionError(f"timed out approving gates: {seen}")


def recorded_histories(workflow: str = "MigrationWorkflow") -> dict[str, Path]:
    """tests/histories by scenario name, only those recording `workflow` (the first event names it)."""
    import json

    found = {}
    for path in sorted((Path(__file__).parent / "histories").glob("*.json")):
        first = json.loads(path.read_text())["events"][0]
        if first["workflowExecutionStartedEventAttributes"]["workflowType"]["name"] == workflow:
            found[path.stem.split("@")[0]] = path
    return found


async def record_history(handle, scenario: str) -> None:
    """SKYSHIFT_RECORD_HISTORY=tests/histories: keep this run's history for the replay tests (added, never redone)."""
    folder = os.environ.get("SKYSHIFT_RECORD_HISTORY")
    if folder:
        history = await handle.fetch_history()
        (Path(folder) / f"{scenario}@{handle.id}.json").write_text(history.to_json())
