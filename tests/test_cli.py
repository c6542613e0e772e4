"""The operator CLI against a running migration: JSON output, exit codes, gates and rollback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from starters.cli import main
from tests.conftest import running_workers
from tests.helpers import plan_data, seed, suffix, wait_for
from workflows.migration import MigrationWorkflow

pytestmark = pytest.mark.stack


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_operator_commands_drive_a_migration(tmp_path, client, capsys):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    data = plan_data(suffix(), source, target)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    workflow_id = f"cli-{suffix()}"
    async with running_workers(client, data["source"], data["target"]):
        assert await cli("start", str(plan_file), "--id", workflow_id, "--json") == 0
        started = json.loads(capsys.readouterr().out)
        assert started["id"] == workflow_id and started["ui"].endswith(f"/workflows/{workflow_id}")
        await wait_for(client.get_workflow_handle(workflow_id), lambda s: s.pending_gate is not None, what="poc gate")

        assert await cli("status", workflow_id, "--json") == 0
        status = json.loads(capsys.readouterr().out)
        assert status["pending_gate"]["stage"] == "poc" and status["phase"] == "poc"

        assert await cli("approve", workflow_id, "--stage", "cutover", "--by", "eve") == 2
        assert "pending gate is 'poc'" in capsys.readouterr().err

        assert await cli("pause", workflow_id, "--by", "ops") == 0
        assert await cli("approve", workflow_id, "--stage", "poc", "--by", "carol", "--note", "numbers look right") == 0
        capsys.readouterr()
        state = await wait_for(client.get_workflow_handle(workflow_id), lambda s: s.phase == "parallel_run")
        await asyncio.sleep(1)
        held = await client.get_workflow_handle(workflow_id).query(MigrationWorkflow.status)
        assert held.phase == "parallel_run" and held.parallel_run is None, "paused: the next phase must not run"

        assert await cli("rollback", workflow_id, "--reason", "cost model changed", "--by", "dave") == 0
        assert await cli("watch", workflow_id) == 1
        watched = capsys.readouterr().out
        assert "dave: rollback_requested cost model changed" in watched and "rolled_back" in watched

        assert await cli("list", "--json") == 0
        rows = json.loads(capsys.readouterr().out)["migrations"]
        assert any(r["id"] == workflow_id and r["phase"] == "rolled_back" for r in rows)
    actors = {(e.actor, e.action) for e in state.audit}
    assert ("carol", "approved") in actors and ("ops", "paused") in actors


async def test_status_of_an_unknown_migration_fails_with_a_hint(client, capsys):
    assert await cli("status", "no-such-migration") == 1
    assert "skyshift list" in capsys.readouterr().err


def test_worker_drains_and_exits_0_on_sigterm(client):
    env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host}
    worker = subprocess.Popen([sys.executable, "-m", "workers.main", "--env", f"w-{suffix()}"], env=env,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = worker.stderr.readline()
        lines.append(line)
        if "serving" in line:
            break
    assert any("serving skyshift.w-" in line for line in lines), lines
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=40) == 0
    assert "draining" in worker.stderr.read()
