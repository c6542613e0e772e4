"""Encrypted checkpoint sync: sealed on the source worker under a KMS key (moto's KMS) or a local key file,
deduplicated by keyed chunk ids, verified before anything is decrypted, keys never in workflow history."""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import blake3
import pytest
import torch
from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.aws import aws_client
from activities.checkpoints.inspect import inspect_path
from activities.checkpoints.kms import KeyRef
from activities.checkpoints.sealed import (
    OpenSealedInput,
    RemoveSealedInput,
    SealInput,
    SealResult,
    open_repository,
    open_sealed,
    remove_sealed,
    seal,
    seal_checkpoint,
)
from activities.stores import StoreSpec, open_store
from activities.transfer.chunking import chunk_stream, params_for_size
from tests import checkpoint_files as files

pytestmark = pytest.mark.stack


class SealThenOpen(BaseModel):
    seal: SealInput
    open: OpenSealedInput | None = None


@workflow.defn(sandboxed=False)
class SealWorkflow:
    """The two activities as a migration runs them: seal on the source's queue, open on the target's."""

    @workflow.run
    async def run(self, request: SealThenOpen) -> SealResult:
        sealed = await workflow.execute_activity(seal_checkpoint, request.seal,
                                                 start_to_close_timeout=timedelta(minutes=2))  # fmt: skip
        if request.open is not None:
            await workflow.execute_activity(open_sealed, request.open, start_to_close_timeout=timedelta(minutes=2))
        return sealed


def checkpoint_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def plain_chunks(data: bytes) -> dict[str, tuple[int, int]]:
    """The delta engine's chunks of `data`: plaintext BLAKE3 -> (offset, length), what the store must not see."""
    params = params_for_size(len(data))
    chunks = chunk_stream(io.BytesIO(data), params, size_hint=len(data), with_data=False)
    return {chunk.digest: (chunk.offset, chunk.length) for chunk, _ in chunks}


def record_spans(data: bytes, storage: str) -> list[tuple[int, int]]:
    """Byte ranges a change to one tensor touches in a torch zip: its record (header, CRC, bytes) and the
    central directory at the end."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = archive.getinfo(f"archive/data/{storage}")
        header = data[member.header_offset : member.header_offset + 30]
        start = (
            member.header_offset
            + 30
            + int.from_bytes(header[26:28], "little")
            + int.from_bytes(header[28:30], "little")
        )
        return [(member.header_offset, start + member.file_size), (archive.start_dir, len(data))]


def payload_bytes(node) -> bytes:
    """Every payload's data in a history (JSON form: base64), decoded: what history really holds."""
    if isinstance(node, dict):
        found = b"".join(payload_bytes(v) for v in node.values())
        if isinstance(node.get("data"), str) and "metadata" in node:
            found += base64.b64decode(node["data"])
        return found
    if isinstance(node, list):
        return b"".join(payload_bytes(v) for v in node)
    return b""


def stored_objects(url: str) -> dict[str, bytes]:
    store = open_store(url)
    return {info.key: store.read_bytes(info.key) for info in store.list("")}


async def test_encrypted_sync_with_kms_sends_only_changed_chunks_and_never_shows_plaintext_or_keys(
    client, s3_bucket, gcs_bucket, s3_endpoint, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", s3_endpoint)  # moto serves KMS beside S3, as the embedded stack does
    kms = aws_client("kms", s3_endpoint, None)
    alias = f"alias/skyshift-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])

    torch.manual_seed(1)
    state = {f"layers.{i}.weight": torch.randn(128, 512) for i in range(16)}  # 16 x 256 KiB
    source = open_store(f"s3://{s3_bucket}")
    first = checkpoint_bytes(state)
    source.put_bytes("ckpt/model.pt", first)
    target_url = f"gs://{gcs_bucket}"
    request = SealInput(
        name="model",
        source=StoreSpec(url=f"s3://{s3_bucket}"),
        source_path="ckpt",
        target=StoreSpec(url=target_url),
        target_path="checkpoints/model",
        key=KeyRef(kms_key=alias),
    )
    queue = f"sealed-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(4) as executor:
        async with Worker(client, task_queue=queue, workflows=[SealWorkflow], activities=[seal_checkpoint, open_sealed],
                          activity_executor=executor):  # fmt: skip
            first_id = f"seal-{uuid.uuid4().hex[:8]}"
            initial = await client.execute_workflow(SealWorkflow.run, SealThenOpen(seal=request), id=first_id,
                                                    task_queue=queue)  # fmt: skip
            stored = stored_objects(target_url)
            needle = state["layers.7.weight"].numpy().tobytes()[4096:4160]
            assert needle in first and not any(needle in data for data in stored.values())
            chunk_ids = {key.rsplit("/", 1)[1] for key in stored if "/sealed/chunks/" in key}
            plain = plain_chunks(first)
            assert len(chunk_ids) == initial.chunks_sent == len(plain) > 20
            assert not chunk_ids & plain.keys()  # the provider never sees plaintext hashes

            edited = dict(state)
            edited["layers.11.weight"] = state["layers.11.weight"] + 1.0
            second = checkpoint_bytes(edited)
            source.put_bytes("ckpt/model.pt", second)
            before = plain_chunks(first)
            changed = {d: span for d, span in plain_chunks(second).items() if d not in before}
            opened = OpenSealedInput(name="model", store=StoreSpec(url=target_url), sealed_path="checkpoints/model",
                                     destination_path="checkpoints/model/plain")  # fmt: skip
            handle = await client.start_workflow(SealWorkflow.run, SealThenOpen(seal=request, open=opened),
                                                 id=f"seal-{uuid.uuid4().hex[:8]}", task_queue=queue)  # fmt: skip
            incremental = await handle.result()
            histories = [await client.get_workflow_handle(w).fetch_history() for w in (first_id, handle.id)]

    spans = record_spans(second, "11")  # storages are numbered in save order: layers.11 is record 11
    assert incremental.chunks_sent == len(changed) > 0
    assert all(any(o < end and start < o + n for start, end in spans) for o, n in changed.values())
    assert incremental.chunks_reused == incremental.chunks_total - len(changed)
    assert incremental.bytes_sent < 0.25 * len(second)
    assert open_store(target_url).read_bytes("checkpoints/model/plain/model.pt") == second

    config = json.loads(open_store(target_url).read_bytes("checkpoints/model/sealed/config.json"))
    wrapped = base64.b64decode(config["wrapped_key"])
    data_key = kms.decrypt(CiphertextBlob=wrapped)["Plaintext"]
    assert config["kms_key"] == alias and len(data_key) == 32
    payloads = b"".join(payload_bytes(h.to_json_dict()) for h in histories)
    for secret in (
        data_key,
        data_key.hex().encode(),
        base64.b64encode(data_key),
        wrapped,
        config["wrapped_key"].encode(),
    ):
        assert secret not in payloads
    assert alias.encode() in payloads  # the key id is what history carries

    # A flipped byte in a stored chunk: refused by authentication, never decrypted, nothing written. Every
    # chunk is damaged (the repository also holds the first version's chunks, which opening the second never
    # reads), so the one the open reads first is damaged whichever it is.
    gcs = open_store(target_url)
    victims = sorted(k for k in stored_objects(target_url) if "/sealed/chunks/" in k)
    for victim in victims:
        damaged = bytearray(gcs.read_bytes(victim))
        damaged[40] ^= 0x01
        gcs.put_bytes(victim, bytes(damaged))
    again = opened.model_copy(update={"destination_path": "checkpoints/model/again"})
    with pytest.raises(ApplicationError, match="failed authentication") as refused:
        ActivityEnvironment().run(open_sealed, again)
    assert any(v.rsplit("/", 1)[1] in str(refused.value) for v in victims) and refused.value.non_retryable
    assert not gcs.exists("checkpoints/model/again/model.pt")


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from starters import cli as entry
    from starters.cmd_checkpoint import add_commands
    from starters.common import UsageError

    if "starters.cmd_checkpoint" in entry.COMMAND_MODULES:
        code = entry.main(argv)
    else:
        parser = argparse.ArgumentParser(prog="skyshift")
        add_commands(parser.add_subparsers())
        args = parser.parse_args(argv)
        try:
            code = args.handler(args)
        except UsageError as error:
            print(f"skyshift: {error}", file=sys.stderr)
            code = 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_local_key_file_seal_and_decrypt_from_the_cli(tmp_path, capsys):
    code, out, _ = cli(["checkpoint", "keygen", str(tmp_path / "keys" / "ckpt.key"), "--json"], capsys)
    key = KeyRef(kms_key=json.loads(out)["kms_key"])
    assert code == 0 and key.kms_key == (tmp_path / "keys" / "ckpt.key").as_uri()
    assert oct((tmp_path / "keys" / "ckpt.key").stat().st_mode & 0o777) == "0o600"
    code, _, err = cli(["checkpoint", "keygen", str(tmp_path / "keys" / "ckpt.key")], capsys)
    assert code == 2 and "never overwritten" in err

    model = files.save(tmp_path / "src" / "encoder" / "model.pt", files.model_state(width=64))
    (tmp_path / "src" / "encoder" / "config.json").write_text('{"width": 64}')
    source, target = StoreSpec(url=(tmp_path / "src").as_uri()), StoreSpec(url=(tmp_path / "dst").as_uri())
    result = seal(SealInput(name="encoder", source=source, source_path="encoder", target=target, target_path="encoder",
                            key=key))  # fmt: skip
    assert result.files == 2 and result.chunks_sent == result.chunks_total

    code, out, _ = cli(["checkpoint", "decrypt", (tmp_path / "dst" / "encoder").as_uri(), str(tmp_path / "plain"),
                        "--json"], capsys)  # fmt: skip
    assert code == 0 and json.loads(out)["files"] == 2
    assert (tmp_path / "plain" / "model.pt").read_bytes() == model.read_bytes()
    assert blake3.blake3((tmp_path / "plain" / "config.json").read_bytes()).hexdigest() == blake3.blake3(
        b'{"width": 64}').hexdigest()  # fmt: skip

    # Opened beside its repository, as a migration does: inspection reads the checkpoint, not sealed/;
    # the compensation removes both.
    opened = open_repository(OpenSealedInput(store=target, sealed_path="encoder", destination_path="encoder"))
    report = inspect_path(open_store(target), "encoder")
    assert {f.key for f in report.files} == {"model.pt", "config.json"} and report.format == "torch"
    before = [p for p in (tmp_path / "dst").rglob("*") if p.is_file()]
    undo = RemoveSealedInput(store=target, sealed_path="encoder", written=opened.written)
    assert ActivityEnvironment().run(remove_sealed, undo) == len(before) > len(opened.written) == 2
    assert not [p for p in (tmp_path / "dst").rglob("*") if p.is_file()]
    seal(SealInput(name="encoder", source=source, source_path="encoder", target=target, target_path="encoder", key=key))

    other = json.loads(cli(["checkpoint", "keygen", str(tmp_path / "other.key"), "--json"], capsys)[1])["kms_key"]
    code, _, err = cli(["checkpoint", "decrypt", str(tmp_path / "dst" / "encoder"), str(tmp_path / "x"),
                        "--kms-key", other], capsys)  # fmt: skip
    assert code == 2 and "sealed under key" in err

    index = next((tmp_path / "dst" / "encoder" / "sealed" / "index").glob("model.pt.sealed"))
    damaged = bytearray(index.read_bytes())
    damaged[-1] ^= 0x80
    index.write_bytes(bytes(damaged))
    code, _, err = cli(["checkpoint", "decrypt", str(tmp_path / "dst" / "encoder"), str(tmp_path / "plain2")], capsys)
    assert code == 1 and "failed authentication" in err and not (tmp_path / "plain2").exists()

    with pytest.raises(ValidationError, match="never key material"):
        KeyRef(kms_key="00" * 32)
