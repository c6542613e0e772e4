"""The operator CLI against a running migration: JSON output, exit codes, gates, rollback, watch and report.

Also the contract every command keeps: `--help` works and describes every argument, `--json` errors
are JSON, a closed pipe ends quietly, a duplicate id is invalid input, and a command whose workers
are down says so instead of waiting forever.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from starters.cli import build_parser, main
from tests.conftest import running_workers, temporal_cli
from tests.helpers import make_plan, plan_data, seed, suffix, wait_for
from workflows.migration import MigrationWorkflow

pytestmark = pytest.mark.stack


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every parser of the CLI with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


def test_every_command_has_working_help_that_describes_every_argument(capsys):
    walked = list(parsers(build_parser()))
    assert len(walked) > 15
    undocumented = []
    for path, parser in walked:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0, path
        assert capsys.readouterr().out.startswith("usage: skyshift")
        if not parser.description:
            undocumented.append(f"skyshift {' '.join(path)}: no description")
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help:
                undocumented.append(f"skyshift {' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("skyshift ")
    assert not undocumented, undocumented


def test_usage_errors_with_json_are_one_json_object(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["approve", "some-id", "--json"])  # --stage is required
    assert exit_.value.code == 2
    error = json.loads(capsys.readouterr().out)
    assert "--stage" in error["error"] and error["exit_code"] == 2


def test_search_attributes_are_one_vocabulary():
    """The workflow's attributes, the dev stack's registration and the deploy script name the same set."""
    from temporalio.api.enums.v1 import IndexedValueType

    from starters.devstack import SEARCH_ATTRIBUTES
    from workflows.state import SEARCH_ATTRIBUTES as WORKFLOW_ATTRIBUTES

    declared = {
        key.name: IndexedValueType.Name(key.indexed_value_type).removeprefix("INDEXED_VALUE_TYPE_").title()
        for key in WORKFLOW_ATTRIBUTES
    }
    assert declared == SEARCH_ATTRIBUTES
    script = (Path(__file__).parent.parent / "deploy" / "temporal" / "register-search-attributes.sh").read_text()
    for name, kind in declared.items():
        assert f"{name}={kind}" in script


def status_into_a_closed_pipe(workflow_id: str) -> subprocess.CompletedProcess:
    """`skyshift status ID | head -0`, made deterministic: the reader is gone before anything is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "starters.cli", "status", workflow_id], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=os.environ.copy())  # fmt: skip
    finally:
        os.close(write)


async def test_operator_commands_drive_a_migration(tmp_path, client, capsys):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    seed(source)
    data = plan_data(suffix(), source, target)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    workflow_id = f"cli-{suffix()}"
    frames_out = io.StringIO()
    async with running_workers(client, data["source"], data["target"]):
        assert await cli("start", str(plan_file), "--id", workflow_id, "--json") == 0
        started = json.loads(capsys.readouterr().out)
        assert started["id"] == workflow_id and started["ui"].endswith(f"/workflows/{workflow_id}")
        from starters.cmd_watch import watch

        watching = asyncio.ensure_future(watch(client, workflow_id, "json", out=frames_out))

        assert await cli("start", str(plan_file), "--id", workflow_id, "--json") == 2
        duplicate = json.loads(capsys.readouterr().out)
        assert "already exists" in duplicate["error"] and duplicate["exit_code"] == 2

        await wait_for(client.get_workflow_handle(workflow_id), lambda s: s.pending_gate is not None, what="poc gate")
        assert await cli("status", workflow_id, "--json") == 0
        status = json.loads(capsys.readouterr().out)
        assert status["pending_gate"]["stage"] == "poc" and status["phase"] == "poc"

        piping = asyncio.ensure_future(asyncio.to_thread(status_into_a_closed_pipe, workflow_id))

        assert await cli("approve", workflow_id, "--stage", "cutover", "--by", "eve") == 2
        assert "pending gate is 'poc'" in capsys.readouterr().err

        malformed = await asyncio.to_thread(
            subprocess.run,
            [temporal_cli(), "workflow", "update", "execute", "--workflow-id", workflow_id, "--name",
             "request_rollback", "--input", '{"by": "mallory"}', "--address",
             client.service_client.config.target_host],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert malformed.returncode != 0, "a rollback without a reason, from any client, is rejected"
        assert "RollbackInput" in malformed.stderr and "reason" in malformed.stderr, malformed.stderr
        held = await client.get_workflow_handle(workflow_id).query(MigrationWorkflow.status)
        assert held.rollback_request is None and held.outcome is None

        assert await cli("report", workflow_id, "--out", str(tmp_path / "running"), "--json") == 0
        running = json.loads(capsys.readouterr().out)
        assert running["outcome"] == "running" and running["headline"].startswith("In progress: poc")
        assert await asyncio.to_thread(lambda: all(os.path.exists(running[k]) for k in ("html", "json")))

        piped = await piping
        assert piped.returncode == 0 and piped.stderr == "", piped.stderr

        assert await cli("pause", workflow_id, "--by", "ops") == 0
        assert await cli("approve", workflow_id, "--stage", "poc", "--by", "carol", "--note", "numbers look right") == 0
        capsys.readouterr()
        state = await wait_for(client.get_workflow_handle(workflow_id), lambda s: s.phase == "parallel_run")
        await asyncio.sleep(1)
        held = await client.get_workflow_handle(workflow_id).query(MigrationWorkflow.status)
        assert held.phase == "parallel_run" and held.parallel_run is None, "paused: the next phase must not run"

        assert await cli("rollback", workflow_id, "--reason", "cost model changed", "--by", "dave", "--json") == 0
        assert json.loads(capsys.readouterr().out)["delivery"] == "accepted"
        assert await cli("watch", workflow_id) == 1
        watched = capsys.readouterr().out
        assert "dave: rollback_requested cost model changed" in watched and "rolled_back" in watched

        assert await cli("rollback", workflow_id, "--reason", "again", "--by", "dave") == 2
        assert "ignored" in capsys.readouterr().err, "a rollback the workflow would ignore is reported as such"

        assert await cli("list", "--json", "--query", 'SkyshiftOutcome="rolled_back"') == 0
        rows = json.loads(capsys.readouterr().out)["migrations"]
        assert any(r["id"] == workflow_id and r["outcome"] == "rolled_back" and r["traffic_percent"] == 0
                   for r in rows)  # fmt: skip

        assert await cli("report", workflow_id, "--out", str(tmp_path / "done")) == 0
        assert "Rolled back" in capsys.readouterr().out
        report = json.loads((tmp_path / "done" / "report.json").read_text())
        assert report["executive"]["why"].startswith("cost model changed") and report["state"]["traffic_percent"] == 0
    await asyncio.wait_for(watching, timeout=30)
    frames = [json.loads(line) for line in frames_out.getvalue().splitlines()]
    gate = next(f["pending_gate"] for f in frames if f["pending_gate"])
    assert gate["stage"] == "poc" and gate["approve_command"] == f"skyshift approve {workflow_id} --stage poc"
    assert frames[-1]["outcome"] == "rolled_back" and frames[-1]["workflow_status"] == "COMPLETED"
    assert len({json.dumps({k: v for k, v in f.items() if not k.endswith("_s")}) for f in frames}) == len(frames)
    actors = {(e.actor, e.action) for e in state.audit}
    assert ("carol", "approved") in actors and ("ops", "paused") in actors


async def test_status_of_an_unknown_migration_fails_with_a_hint(client, capsys):
    assert await cli("status", "no-such-migration") == 1
    assert "skyshift list" in capsys.readouterr().err
    assert await cli("status", "no-such-migration", "--json") == 1
    assert "skyshift list" in json.loads(capsys.readouterr().out)["error"]


async def test_without_a_worker_status_and_approve_time_out_with_a_reason(client, capsys, monkeypatch, tmp_path):
    from workflows.state import MigrationInput

    monkeypatch.setenv("SKYSHIFT_RPC_TIMEOUT", "1")
    plan = make_plan(suffix(), f"file://{tmp_path}/a", f"file://{tmp_path}/b")
    workflow_id = f"orphan-{suffix()}"
    handle = await client.start_workflow("MigrationWorkflow", MigrationInput(plan=plan), id=workflow_id,
                                         task_queue=f"nobody-{suffix()}")  # fmt: skip
    try:
        assert await cli("status", workflow_id, "--json") == 1
        assert "no worker answered within 1s" in json.loads(capsys.readouterr().out)["error"]
        assert await cli("approve", workflow_id, "--stage", "poc") == 1
        assert "no worker answered" in capsys.readouterr().err
    finally:
        await handle.terminate("test over")


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


def imports_torch(code: str) -> tuple[bool, str]:
    probe = f"import sys; {code}; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip() == "True", run.stderr


def test_the_parser_does_not_import_torch():
    """`skyshift --help` and every command's parsing: no torch, no workflow models, no matplotlib."""
    pulled, importtime = imports_torch("import starters.cli; starters.cli.build_parser()")
    assert not pulled, " <- ".join(torch_importer(importtime))


def test_commands_that_only_talk_to_temporal_do_not_import_torch():
    """Start-up matters for a CLI: the operator modules (status, approve, watch, report) stay clear of torch."""
    pulled, importtime = imports_torch("import starters.operate, starters.render, starters.cmd_watch, starters.report")
    assert not pulled, f"torch is imported at CLI start-up through: {' <- '.join(torch_importer(importtime))}"


def torch_importer(importtime: str) -> list[str]:
    """From `python -X importtime` output, the chain of modules that first pulled torch in."""
    rows = []
    for line in importtime.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1]
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    # importtime lists a module after its children: torch's importers are the next rows, less indented.
    index = next(i for i, (_, name) in enumerate(rows) if name == "torch")
    chain, depth = ["torch"], rows[index][0]
    for level, name in rows[index + 1 :]:
        if level < depth:
            chain.append(name)
            depth = level
    return chain


def test_ui_links_come_from_the_stack_that_runs(monkeypatch, tmp_path):
    """`dev up` writes TEMPORAL_UI to .skyshift/env; every link printed after that uses it."""
    from skyshift.runtime import load_stack_env, ui_link

    monkeypatch.setenv("SKYSHIFT_HOME", str(tmp_path))
    monkeypatch.setenv("TEMPORAL_UI", "")  # unset for the command, restored after the test
    (tmp_path / "env").write_text("TEMPORAL_UI=http://10.1.2.3:18233\nTEMPORAL_NAMESPACE=migrations\n")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "")
    load_stack_env()
    assert ui_link("llama-1") == "http://10.1.2.3:18233/namespaces/migrations/workflows/llama-1"
