"""A Temporal server restarted mid-sync does not end `skyshift sync`: the CLI waits through it.

Before issue 23 a SIGKILL and restart of the dev server 13 s into a sync ended the CLI with exit 1
(`Temporal: tcp connect error`) while the sync stayed Running. Here a dev server of the test's own
(a port and a SQLite file) is killed while the sync moves bytes and started again on the same port
and file; the same CLI process must finish the sync with exit 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from activities.stores import open_store
from bench.faultproxy import FaultProxy
from tests.devserver import DevServer

pytestmark = pytest.mark.stack
MiB = 1 << 20


def _wait_for(condition, what: str, process: subprocess.Popen) -> None:
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the CLI ended before {what}: exit {process.returncode}")
        time.sleep(0.05)


def test_sync_waits_through_a_server_restart_and_finishes(s3_endpoint, s3_bucket, tmp_path):
    source, target = f"s3://{s3_bucket}/ds", f"file://{tmp_path}/dst"
    bodies = {f"shard-{i}.bin": os.urandom(3 * MiB) for i in range(6)}
    for key, body in bodies.items():
        open_store(source).put_bytes(key, body)
    proxy = FaultProxy(s3_endpoint, bytes_per_s=3 * MiB)  # slow enough that the restart lands mid-sync
    server = DevServer(tmp_path / "temporal.db")
    server.start()
    env = {**os.environ, "TEMPORAL_ADDRESS": server.address, "AWS_ENDPOINT_URL_S3": proxy.url,
           "SKYSHIFT_HOME": str(tmp_path / "home"), "SKYSHIFT_SERVER_WAIT": "120"}  # fmt: skip
    cli = subprocess.Popen([sys.executable, "-m", "starters.cli", "sync", source, target, "--json"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        staged = tmp_path / ".skyshift" / "dst" / "staging"
        _wait_for(lambda: staged.is_dir() and any(staged.rglob("*")), "the first range was staged", cli)
        server.kill()
        # Down until the CLI has noticed (past the client's own short retries), then back on the same port and file.
        _wait_for(lambda: any("retrying" in line for line in lines), "it said it would wait for the server", cli)
        server.start()
        cli.wait(timeout=300)
        reader.join(timeout=30)
        err = "".join(lines)
    finally:
        if cli.poll() is None:
            cli.kill()
        server.stop()
        proxy.close()
    assert "Fatal Python error" not in err
    assert cli.returncode == 0, err[-3000:]
    assert {k: open_store(target).read_bytes(k) for k in bodies} == bodies
