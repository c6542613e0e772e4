"""Which files under a checkpoint path hold what: one file, a sharded set with its index, a DCP directory,
or several independent files (an HF Trainer directory: model, optimizer, scheduler, RNG state).

Formats are recognised by their bytes first (`sniff`) and names second, so a `.bin` that is really
safetensors is read as safetensors. Tensor names are the same wherever the layout is read: a single file or
a sharded set keeps its own names; several independent files put each file's names under its stem
(`optimizer.pt` -> `optimizer.state.0.exp_avg`), which also lets `state.classify` see what each file is.
"""

from __future__ import annotations

from dataclasses import dataclass

from activities.checkpoints.errors import MalformedCheckpointError

#: Name suffixes of checkpoint data files and the format each usually holds (the bytes decide).
DATA_SUFFIXES: dict[str, str] = {
    ".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "torch",
    ".tar": "torch",
}  # fmt: skip
INDEX_SUFFIX = ".index.json"
DCP_METADATA = ".metadata"


@dataclass
class Layout:
    kind: str  # "dcp", "sharded", "single", "files"
    files: list[str]  # data files, keys relative to the checkpoint path
    index: str | None = None
    other: list[str] | None = None  # files that are not checkpoint data (configs, tokenizers)

    def prefix(self, key: str) -> str:
        """Namespace of `key`'s tensor names: empty for one file or a sharded set, its stem among several."""
        if self.kind != "files":
            return ""
        stems = [_stem(k) for k in self.files]
        stem = _stem(key)
        return f"{stem if stems.count(stem) == 1 else key}."


def _stem(key: str) -> str:
    for suffix in DATA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)].replace("/", ".")
    return key.replace("/", ".")


def resolve(keys: dict[str, int], label: str) -> Layout:
    """The layout of a checkpoint from its keys (relative to its path) and sizes."""
    if DCP_METADATA in keys:
        return Layout(kind="dcp", files=sorted(keys))
    indexes = sorted(k for k in keys if k.endswith(INDEX_SUFFIX) and "/" not in k)
    if len(indexes) > 1:
        raise MalformedCheckpointError(label, f"several shard indexes ({', '.join(indexes)}): inspect one at a time")
    data = sorted(k for k in keys if any(k.endswith(s) for s in DATA_SUFFIXES))
    if indexes:
        return Layout(kind="sharded", files=data, index=indexes[0], other=sorted(set(keys) - {*data, indexes[0]}))
    if not data:
        raise MalformedCheckpointError(
            label, f"no checkpoint files ({', '.join(DATA_SUFFIXES)}, a shard index or DCP .metadata) found"
        )
    return Layout(kind="single" if len(data) == 1 else "files", files=data, other=sorted(set(keys) - set(data)))


def sniff(head: bytes) -> str | None:
    """The format the first bytes of a file announce: torch (zip), safetensors (length + JSON), or None."""
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def check_shards(weight_map: dict[str, str], found: dict[str, set[str]], label: str) -> None:
    """Every tensor the index names is in the shard it names, and every shard tensor is in the index."""
    for name, shard in sorted(weight_map.items()):
        if shard not in found:
            raise MalformedCheckpointError(label, f"index maps {name!r} to shard {shard}, which is missing")
        if name not in found[shard]:
            raise MalformedCheckpointError(label, f"index maps {name!r} to shard {shard}, which does not hold it")
    for shard, names in sorted(found.items()):
        for name in sorted(names):
            if weight_map.get(name) != shard:
                where = "does not list" if name not in weight_map else f"maps to {weight_map[name]}"
                raise MalformedCheckpointError(label, f"shard {shard} holds {name!r}, which the index {where}")
