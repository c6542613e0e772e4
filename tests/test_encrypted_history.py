"""The wrong codec key, or none: a clear refusal (exit 2) naming the key, and never plaintext in an
encrypted workflow's history.

Before issue 23: `status`/`report`/`watch --json` with the wrong key ended in a traceback (`ValueError:
payload was encrypted with key sha256:…`, or with no key `KeyError: 'Unknown payload encoding
binary/encrypted'`); `skyshift sync` adopting a running encrypted sync without the key hung ~90 s and
wrote its start request in plaintext into that history. Here an encrypted sync is left Running on a
dev server of the test's own, other commands meet it without the key or with another one, and the
server's SQLite file is searched for the paths the operator meant to keep encrypted.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid

import pytest

from activities.stores import open_store
from bench.faultproxy import FaultProxy
from skyshift.codec import key_id
from tests.devserver import DevServer

pytestmark = pytest.mark.stack
MiB = 1 << 20


def _cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "starters.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def _stored(db) -> bytes:
    """Everything the server wrote: the SQLite file and its write-ahead log."""
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())


def test_adopting_or_reading_an_encrypted_sync_without_its_key_is_refused_and_writes_nothing(
    s3_endpoint, s3_bucket, tmp_path
):
    secret = f"secret-prefix-{uuid.uuid4().hex[:8]}"
    source, target = f"s3://{s3_bucket}/{secret}", f"file://{tmp_path}/dst-{secret}"
    for i in range(4):
        open_store(source).put_bytes(f"shard-{i}.bin", os.urandom(3 * MiB))
    proxy = FaultProxy(s3_endpoint, bytes_per_s=1 * MiB)  # the encrypted sync is still running when we come
    server = DevServer(tmp_path / "temporal.db")
    server.start()
    key = os.urandom(32)
    base = {**os.environ, "TEMPORAL_ADDRESS": server.address, "AWS_ENDPOINT_URL_S3": proxy.url,
            "SKYSHIFT_HOME": str(tmp_path / "home"), "SKYSHIFT_RPC_TIMEOUT": "5"}  # fmt: skip
    base.pop("SKYSHIFT_CODEC_KEY", None)
    base.pop("SKYSHIFT_ENCRYPT", None)
    encrypted = {**base, "SKYSHIFT_CODEC_KEY": base64.b64encode(key).decode()}
    first = subprocess.Popen([sys.executable, "-m", "starters.cli", "--encrypt", "sync", source, target, "--json"],
                             env=encrypted, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        staged = tmp_path / ".skyshift" / f"dst-{secret}" / "staging"
        while not (staged.is_dir() and any(staged.rglob("*"))):
            assert first.poll() is None, "the encrypted sync ended before it was adopted"
            time.sleep(0.05)
        first.kill()  # its sync stays Running, encrypted, until someone adopts it
        first.wait()
        wrong = {**base, "SKYSHIFT_CODEC_KEY": base64.b64encode(os.urandom(32)).decode(), "SKYSHIFT_ENCRYPT": "1"}
        for env in (base, wrong):
            adopted = _cli("sync", source, target, "--json", env=env)
            assert adopted.returncode == 2, adopted.stderr[-2000:]
            assert f"encrypted with key {key_id(key)}" in adopted.stderr
            assert "SKYSHIFT_CODEC_KEY" in adopted.stderr and "Traceback" not in adopted.stderr
        stored = _stored(server.db)
        assert secret.encode() not in stored, "a command without the key wrote the operator's paths in plaintext"
    finally:
        if first.poll() is None:
            first.kill()
        server.stop()
        proxy.close()


async def test_reading_an_encrypted_migration_without_its_key_says_which_key_to_set(client, monkeypatch):
    """status, status --json, report, watch --json, approve: exit 2 naming the key, no traceback."""
    from skyshift.runtime import connect

    key = os.urandom(32)
    monkeypatch.setenv("SKYSHIFT_CODEC_KEY", base64.b64encode(key).decode())
    sealed = await connect(client.service_client.config.target_host, encrypt=True)
    migration = f"sealed-{uuid.uuid4().hex[:6]}"
    handle = await sealed.start_workflow("MigrationWorkflow", {"plan": "secret"}, id=migration,
                                         task_queue=f"nobody-{migration}")  # fmt: skip
    base = {k: v for k, v in os.environ.items() if k not in ("SKYSHIFT_CODEC_KEY", "SKYSHIFT_ENCRYPT")}
    base["SKYSHIFT_RPC_TIMEOUT"] = "5"
    wrong = {**base, "SKYSHIFT_CODEC_KEY": base64.b64encode(os.urandom(32)).decode(), "SKYSHIFT_ENCRYPT": "1"}
    commands = [("status", migration), ("status", migration, "--json"), ("report", migration, "--json"),
                ("watch", migration, "--json"), ("approve", migration, "--stage", "poc")]  # fmt: skip
    try:
        for env in (base, wrong):
            for args in commands:
                run = _cli(*args, env=env, timeout=60)
                assert run.returncode == 2, (args, run.returncode, run.stderr[-2000:])
                assert f"encrypted with key {key_id(key)}" in run.stderr, (args, run.stderr[-2000:])
                assert "Traceback" not in run.stderr
    finally:
        await handle.terminate("test over")
