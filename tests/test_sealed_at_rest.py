"""Ciphertext at rest: with `encryption.at_rest: sealed` no plaintext of the checkpoint is ever in the target store.

A whole migration on loopback stores: at every poll, in every phase, the target store (its data and
its metadata area) is listed and every object scanned for windows of the checkpoint's plaintext.
The compatibility check still runs (decrypting into the target worker's scratch) and passes, and
the decommission's archive verification checks the sealed copy the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from activities.checkpoints.kms import create_key_file
from activities.stores import open_store
from starters.operate import start_migration
from tests.conftest import running_workers
from tests.helpers import approve_gates, make_plan, seed, suffix

pytestmark = pytest.mark.stack

CHECKPOINT = "checkpoints/model/model.pt"


def windows(plaintext: bytes, count: int = 16, width: int = 48) -> list[bytes]:
    """Pieces of the checkpoint's body (its tensors), away from the zip header every torch file shares."""
    step = len(plaintext) // (count + 2)
    return [plaintext[step * i : step * i + width] for i in range(2, count + 2)]


def plaintext_objects(url: str, pieces: list[bytes]) -> list[str]:
    """Every object in the store and its metadata area that holds any piece of the plaintext."""
    store = open_store(url)
    found = []
    for area in (store, store.metadata):
        for info in area.list(""):
            data = area.read_bytes(info.key)
            if any(piece in data for piece in pieces):
                found.append(info.key)
    return found


async def test_a_checkpoint_kept_sealed_at_rest_is_never_plaintext_in_the_target_store(client, tmp_path):
    source, target = f"file://{tmp_path}/src", f"file://{tmp_path}/dst"
    plaintext = seed(source, objects=1, size=20_000)[CHECKPOINT]
    pieces = windows(plaintext)
    assert len(plaintext) > 2_000 and all(len(p) == 48 for p in pieces)
    key = create_key_file(tmp_path / "keys" / "ckpt.key")
    plan = make_plan(
        suffix(), source, target,
        workloads={"checkpoints": [{"name": "model", "path": "checkpoints/model",
                                    "encryption": {"kms_key": key.kms_key, "at_rest": "sealed"}}]},
        cutover={"stages": [{"percent": 100}]},
        decommission={"failback_window": "0s"},
    )  # fmt: skip
    scanned: dict[str, int] = {}

    def scan(state) -> bool:
        found = plaintext_objects(target, pieces)
        assert found == [], f"plaintext of the checkpoint in the target store during {state.phase}: {found}"
        scanned[state.phase] = scanned.get(state.phase, 0) + 1
        return state.outcome is not None

    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await approve_gates(handle, scan, timeout=240)
        final = await handle.result()
        if folder := os.environ.get("SKYSHIFT_RECORD_HISTORIES"):  # how tests/histories/sealed_at_rest* was made
            (Path(folder) / f"sealed_at_rest@{handle.id}.json").write_text((await handle.fetch_history()).to_json())
    assert final.outcome == "completed", final.outcome_reason
    assert plaintext_objects(target, pieces) == []
    assert {"poc", "decommission", "done"} <= set(scanned), scanned
    (report,) = final.poc.checkpoints
    assert report.verdict.outcome == "pass", report.verdict.summary
    assert report.tensors_compared > 0 and not report.mismatched
    (sealed,) = final.poc.sealed
    assert sealed.files == 1 and sealed.chunks_sent == sealed.chunks_total
    target_keys = [info.key for info in open_store(target).list("checkpoints")]
    assert CHECKPOINT not in target_keys and any(k.startswith("checkpoints/model/sealed/chunks/") for k in target_keys)
    assert final.decommission.verified_objects == final.decommission.archived_objects > 0
    assert not (tmp_path / "dst" / CHECKPOINT).exists()


def test_an_endpoint_serves_a_checkpoint_kept_sealed_decrypting_only_into_its_scratch(tmp_path, monkeypatch):
    import io
    import tempfile

    import torch

    from activities.checkpoints.sealed import SealInput, seal
    from activities.stores import StoreSpec
    from workers.endpoint import INPUTS, load_model, tiny_model

    buffer = io.BytesIO()
    torch.save(tiny_model(seed=3).state_dict(), buffer)
    source, target = (tmp_path / "src").as_uri(), (tmp_path / "dst").as_uri()
    key = "checkpoints/tiny-mlp/model.pt"
    open_store(source).put_bytes(key, buffer.getvalue())
    seal(SealInput(name="tiny-mlp", source=StoreSpec(url=source), source_path="checkpoints/tiny-mlp",
                   target=StoreSpec(url=target), target_path="checkpoints/tiny-mlp",
                   key=create_key_file(tmp_path / "ckpt.key")))  # fmt: skip
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    served = load_model(target, key)

    sample = torch.randn(4, INPUTS, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(served(sample), load_model(source, key)(sample)), "the target serves the same weights"
    assert not open_store(target).exists(key) and plaintext_objects(target, windows(buffer.getvalue())) == []
    assert list(scratch.iterdir()) == [], "the decrypted copy is deleted once loaded"
