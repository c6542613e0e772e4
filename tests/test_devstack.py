"""`skyshift dev up|down|status`: the embedded stack as a user starts it, in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from skyshift.runtime import read_env_file
from starters.devstack import PREFERRED_PORTS

pytestmark = pytest.mark.stack


def skyshift(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TEMPORAL_ADDRESS", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST")}  # fmt: skip
    env["SKYSHIFT_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "starters.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_up_is_idempotent_publishes_addresses_and_down_stops_exactly_what_it_started(tmp_path):
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", PREFERRED_PORTS["s3"]))
        blocker.listen()
        blocked = True
    except OSError:
        blocked = False  # already taken by something else: the stack must still pick another port
    try:
        first = skyshift(tmp_path, "dev", "up", "--json")
        assert first.returncode == 0, first.stderr
        stack = json.loads(first.stdout)
        assert stack["running"] and stack["started"] and len(stack["services"]) == 3
        s3_port = next(s["port"] for s in stack["services"] if s["name"] == "s3")
        assert s3_port != PREFERRED_PORTS["s3"]
        if blocked:
            assert f"port {PREFERRED_PORTS['s3']} for s3 is in use" in first.stderr

        env = read_env_file(tmp_path / "env")
        assert {"TEMPORAL_ADDRESS", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST"} <= set(env)
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
        s3.create_bucket(Bucket="probe-bucket")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["probe-bucket"]
        gcs = storage.Client(project="p", credentials=AnonymousCredentials(),
                             client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]})  # fmt: skip
        gcs.create_bucket("probe-bucket")
        assert [b.name for b in gcs.list_buckets()] == ["probe-bucket"]

        from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

        from skyshift.runtime import connect

        client = await connect(env["TEMPORAL_ADDRESS"])
        attributes = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert {"SkyshiftPhase", "SkyshiftTrafficPercent", "SkyshiftVerdict"} <= set(attributes.custom_attributes)

        second = skyshift(tmp_path, "dev", "up", "--json")
        assert second.returncode == 0 and not json.loads(second.stdout)["started"]
        assert [s["pid"] for s in json.loads(second.stdout)["services"]] == [s["pid"] for s in stack["services"]]
    finally:
        down = skyshift(tmp_path, "dev", "down", "--json")
        blocker.close()
    assert down.returncode == 0 and sorted(json.loads(down.stdout)["stopped"]) == ["gcs", "s3", "temporal"]
    assert not any(alive(s["pid"]) for s in stack["services"])
    assert not (tmp_path / "env").exists()
    status = skyshift(tmp_path, "dev", "status", "--json")
    assert status.returncode == 1 and json.loads(status.stdout)["running"] is False
