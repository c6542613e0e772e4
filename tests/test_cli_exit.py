"""The CLI ends with its documented exit code every time, as a script trusting `$?` needs.

Before issue 23, a `skyshift` process that had done its work could still abort while the interpreter
finalized (`Fatal Python error: PyGILState_Release ... finalizing`, exit 134): the Temporal client's
Rust threads outlived Python. These run real processes against the session's dev server, many times
and some at once, and accept nothing but the documented code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from activities.stores import open_store

pytestmark = pytest.mark.stack


def skyshift(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "starters.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip


def _runs(commands: list[tuple[str, ...]], at_once: int) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        return list(pool.map(lambda args: skyshift(*args), commands))


def _no_crash(run: subprocess.CompletedProcess, expected: int) -> None:
    assert "Fatal Python error" not in run.stderr, run.stderr[-2000:]
    assert run.returncode == expected, (run.args, run.returncode, run.stderr[-2000:])


def test_list_pause_and_promote_exit_with_their_code_every_time(client):
    runs = [skyshift("list", "--json") for _ in range(12)]
    runs += _runs([("list", "--json")] * 6, at_once=3)
    for run in runs:
        _no_crash(run, 0)
        assert isinstance(json.loads(run.stdout), dict)
    unknown = f"no-such-{uuid.uuid4().hex[:6]}"
    for run in _runs([("pause", unknown), ("promote", unknown)] * 3, at_once=2):
        _no_crash(run, 1)
        assert unknown in run.stderr


def test_small_syncs_exit_0_every_time(client, tmp_path):
    source = f"file://{tmp_path}/src"
    for i in range(5):
        open_store(source).put_bytes(f"obj-{i}.bin", os.urandom(1024 + i))
    sequential = [("sync", source, f"file://{tmp_path}/dst-{i}", "--json") for i in range(6)]
    concurrent = [("sync", source, f"file://{tmp_path}/dst-c{i}", "--json") for i in range(4)]
    runs = [skyshift(*args) for args in sequential] + _runs(concurrent, at_once=4)
    for run in runs:
        _no_crash(run, 0)
        assert json.loads(run.stdout)["verified"] is True


def test_watch_of_an_unknown_id_exits_2_naming_it(client):
    """Before: `skyshift watch no-such-id` waited forever, printing nothing."""
    unknown = f"no-such-{uuid.uuid4().hex[:6]}"
    for args in (("watch", unknown), ("watch", unknown, "--json")):
        run = skyshift(*args, timeout=60)
        _no_crash(run, 2)
        assert unknown in run.stderr


async def test_status_and_approve_with_no_worker_say_so_in_bounded_time(client):
    """A migration no worker serves: README's "no worker answered" after SKYSHIFT_RPC_TIMEOUT, exit 1."""
    orphan = f"orphan-{uuid.uuid4().hex[:6]}"
    handle = await client.start_workflow("MigrationWorkflow", {}, id=orphan, task_queue=f"nobody-{orphan}")
    try:
        quick = {"SKYSHIFT_RPC_TIMEOUT": "2"}
        for args in [("status", orphan), ("status", orphan, "--json"), ("approve", orphan, "--stage", "poc")] * 2:
            run = skyshift(*args, env=quick, timeout=90)
            _no_crash(run, 1)
            assert "no worker answered" in run.stderr
    finally:
        await handle.terminate("test over")
