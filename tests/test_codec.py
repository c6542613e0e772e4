"""Payload encryption: the AES-GCM codec, its key sources (environment, KMS on moto), the codec server.

The end-to-end test runs a migration with the codec on and reads its history the way an operator or
an attacker with database access would (`temporal workflow show --output json`): no plan field may
appear in cleartext, and the codec server must turn it back into the plan for whoever holds the key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import threading
import urllib.request

import pytest
import yaml
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from skyshift.codec import AesGcmCodec, CodecConfigError, codec_from_env, codec_server, key_id
from skyshift.runtime import connect
from starters.cli import main
from tests.conftest import running_workers, temporal_cli
from tests.helpers import plan_data, seed, suffix, wait_for

KEY = os.urandom(32)


@pytest.fixture
def codec_key(monkeypatch) -> bytes:
    for name in ("SKYSHIFT_CODEC_KMS_KEY_ID", "SKYSHIFT_CODEC_OLD_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SKYSHIFT_CODEC_KEY", base64.b64encode(KEY).decode())
    return KEY


async def test_round_trip_hides_the_payload_and_names_its_key(codec_key):
    codec = codec_from_env()
    [plain] = pydantic_data_converter.payload_converter.to_payloads([{"bucket": "s3://secret-bucket"}])
    [sealed] = await codec.encode([plain])
    assert b"secret-bucket" not in sealed.SerializeToString()
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    assert sealed.metadata["encryption-key-id"].decode() == key_id(codec_key) != base64.b64encode(codec_key).decode()
    assert await codec.decode([sealed]) == [plain]
    assert await codec.decode([plain]) == [plain], "payloads written before encryption was on still read"


async def test_tampering_and_foreign_keys_are_refused(codec_key):
    codec = codec_from_env()
    [sealed] = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
    flipped = Payload(metadata=sealed.metadata, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    from cryptography.exceptions import InvalidTag

    with pytest.raises(InvalidTag):  # authentication failed: nothing decrypted is returned
        await codec.decode([flipped])
    stranger = AesGcmCodec(os.urandom(32))
    with pytest.raises(ValueError, match="SKYSHIFT_CODEC_KEY"):
        await stranger.decode([sealed])


async def test_a_rotated_key_still_reads_old_payloads(monkeypatch, codec_key):
    [old] = await codec_from_env().encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"old"')])
    monkeypatch.setenv("SKYSHIFT_CODEC_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("SKYSHIFT_CODEC_OLD_KEYS", base64.b64encode(codec_key).decode())
    [decoded] = await codec_from_env().decode([old])
    assert decoded.data == b'"old"'


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "no key is configured"),
        ({"SKYSHIFT_CODEC_KEY": "not base64!"}, "SKYSHIFT_CODEC_KEY is not base64"),
        ({"SKYSHIFT_CODEC_KEY": base64.b64encode(b"short").decode()}, "32 bytes"),
    ],
)
def test_bad_key_configuration_is_named(monkeypatch, variables, message):
    for name in ("SKYSHIFT_CODEC_KEY", "SKYSHIFT_CODEC_KMS_KEY_ID", "SKYSHIFT_CODEC_OLD_KEYS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(CodecConfigError, match=message):
        codec_from_env()


def test_the_cli_refuses_to_encrypt_without_a_key(monkeypatch, capsys):
    for name in ("SKYSHIFT_CODEC_KEY", "SKYSHIFT_CODEC_KMS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SKYSHIFT_ENCRYPT", "")  # restored (unset) after the test, though --encrypt sets it
    assert main(["--encrypt", "list", "--json"]) == 2
    assert "SKYSHIFT_CODEC_KEY" in json.loads(capsys.readouterr().out)["error"]


async def test_kms_data_key_is_wrapped_in_each_payload(monkeypatch, s3_endpoint):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", s3_endpoint)  # moto serves KMS on the same port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("SKYSHIFT_CODEC_KEY", raising=False)
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=s3_endpoint)
    key = kms.create_key(Description="skyshift codec test")["KeyMetadata"]["KeyId"]
    monkeypatch.setenv("SKYSHIFT_CODEC_KMS_KEY_ID", key)
    writer = codec_from_env()
    [sealed] = await writer.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"weights"')])
    assert sealed.metadata["encryption-wrapped-key"], "the data key travels wrapped, only KMS can open it"
    reader = codec_from_env()  # another process: its own data key, but it can unwrap the writer's
    assert reader.key_id != writer.key_id
    [decoded] = await reader.decode([sealed])
    assert decoded.data == b'"weights"'


def show_history(workflow_id: str, address: str, *extra: str) -> str:
    """The history as `temporal workflow show --output json` prints it, payloads' base64 opened up.

    The JSON carries payload bytes (and metadata values) in base64, so cleartext would not show
    in the raw text even without encryption: every base64 value is decoded and appended.
    """
    shown = subprocess.run(
        [temporal_cli(), "workflow", "show", "--workflow-id", workflow_id, "--address", address, "--output", "json",
         *extra],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    opened = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("data", "metadata") and isinstance(value, str):
                    opened.append(base64.b64decode(value).decode("utf-8", "replace"))
                elif key == "metadata" and isinstance(value, dict):
                    opened.extend(base64.b64decode(v).decode("utf-8", "replace") for v in value.values())
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(shown))
    assert opened, "the history has payloads"
    return shown + "\n".join(opened)


async def test_an_encrypted_migration_shows_no_plan_field_and_the_codec_server_decodes_it(
    tmp_path, client, codec_key, monkeypatch
):
    address = client.service_client.config.target_host
    encrypted = await connect(address, encrypt=True)
    source, target = tmp_path / "source-bucket", tmp_path / "target-bucket"
    seed(f"file://{source}")
    tag = suffix()
    data = plan_data(tag, f"file://{source}", f"file://{target}")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    secrets = [str(source), str(target), "us-east-1", "eu-north1", "A100-80GB", "H100-80GB", "datasets/corpus"]
    workflow_id = f"enc-{suffix()}"
    monkeypatch.setenv("SKYSHIFT_ENCRYPT", "1")  # the CLI below encrypts as the workers do
    async with running_workers(encrypted, data["source"], data["target"]):
        assert await asyncio.to_thread(main, ["start", str(plan_file), "--id", workflow_id]) == 0
        handle = encrypted.get_workflow_handle(workflow_id)
        # In poc the assessment (storage inventory, projections) is recorded and the syncs are started.
        await wait_for(handle, lambda s: s.phase == "poc", what="poc")
        history = await asyncio.to_thread(show_history, workflow_id, address)
        await handle.terminate("test over")
    assert "binary/encrypted" in history
    leaked = [s for s in secrets if s in history]
    assert not leaked, f"in cleartext in the history: {leaked}"

    server = codec_server(codec_from_env(), "127.0.0.1", 0, ["http://127.0.0.1:8233"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        decoded = await asyncio.to_thread(show_history, workflow_id, address, "--codec-endpoint", endpoint)
        preflight = urllib.request.Request(f"{endpoint}/decode", method="OPTIONS",
                                           headers={"Origin": "http://127.0.0.1:8233"})  # fmt: skip
        allowed = await asyncio.to_thread(lambda: urllib.request.urlopen(preflight, timeout=5).headers)
        allowed = allowed["Access-Control-Allow-Origin"]
    finally:
        server.shutdown()
    assert str(source) in decoded and "us-east-1" in decoded, "the codec server gives operators the plan back"
    assert allowed == "http://127.0.0.1:8233"
