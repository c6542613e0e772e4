"""Small real checkpoints for the checkpoint tests: torch files, safetensors (single, sharded, malformed),
a DCP checkpoint saved by two gloo ranks, a CUDA-saved file and one whose pickle would create a file."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_state_dict


class OpensFile:
    """Pickles as `io.open(marker, "w")`: loading it with plain pickle creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def model_state(seed: int = 0, width: int = 16) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {
        "embed.weight": torch.randn(32, width),
        "layers.0.weight": torch.randn(width, width),
        "layers.0.bias": torch.randn(width),
        "head.weight": torch.randn(4, width).to(torch.bfloat16),
        "steps": torch.tensor([7], dtype=torch.int64),
    }


def save(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A real torch file with real tensors whose pickle also calls io.open(marker, 'w')."""
    return save(path, {**model_state(), "hook": OpensFile(marker)})


def rewrite_pickle(path: Path, old: bytes, new: bytes) -> Path:
    """Replace bytes inside a torch file's data.pkl and rewrite the zip (records stored, as torch writes them)."""
    with zipfile.ZipFile(path) as source:
        records = [(info.filename, source.read(info)) for info in source.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for name, data in records:
            if name.endswith("/data.pkl"):
                assert old in data, "the pickle does not hold the bytes to replace"
                data = data.replace(old, new)
            target.writestr(name, data)
    path.write_bytes(out.getvalue())
    return path


def cuda_saved(path: Path, state: dict) -> Path:
    """A torch file whose storages record device cuda:0, as `torch.save` writes them on a GPU machine."""
    save(path, state)

    def unicode(text: str) -> bytes:  # pickle protocol 2 BINUNICODE
        return b"X" + struct.pack("<I", len(text)) + text.encode()

    return rewrite_pickle(path, unicode("cpu"), unicode("cuda:0"))


def safetensors_file(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def sharded_safetensors(directory: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> Path:
    """model-0000i-of-0000n.safetensors files and model.safetensors.index.json, as transformers writes them."""
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        safetensors_file(directory / shard, part)
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return directory


def raw_safetensors(path: Path, header: dict, data: bytes, declared_length: int | None = None) -> Path:
    """A safetensors file written by hand, so it can lie about itself."""
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    length = len(encoded) if declared_length is None else declared_length
    path.write_bytes(struct.pack("<Q", length) + encoded + data)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dcp_rank(rank: int, world: int, directory: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        frozen = torch.nn.Linear(4, 4)  # never gets a gradient: no optimizer state
        optimizer = torch.optim.Adam(list(model.parameters()) + list(frozen.parameters()))
        model(torch.randn(3, 8)).sum().backward()
        optimizer.step()
        model_sd, optim_sd = get_state_dict(torch.nn.ModuleDict({"net": model, "frozen": frozen}), optimizer)
        torch.manual_seed(100 + rank)
        state = {
            "model": model_sd,
            "optim": optim_sd,
            f"dataloader.rank_{rank}": {"epoch": 3, "position": 1000 * (rank + 1)},
            f"rng.rank_{rank}": torch.get_rng_state(),
            "step": 42,
        }
        dcp.save(state, checkpoint_id=directory)
    finally:
        dist.destroy_process_group()


def dcp_two_ranks(directory: Path) -> Path:
    """A DCP checkpoint saved by 2 CPU ranks over gloo, with per-rank dataloader and RNG state."""
    # fork: the ranks inherit torch.distributed (imported above) and what the first optimizer imports lazily,
    # instead of each importing them again (10 s on a busy machine)
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    mp.start_processes(_dcp_rank, args=(2, str(directory), free_port()), nprocs=2, join=True, start_method="fork")
    return directory
