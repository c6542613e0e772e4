"""Symbolic links never lead a checkpoint's reader out of the checkpoint's root (local stores).

A directory on disk may hold links; following one that points elsewhere would report (and digest, and
move) someone else's files as the checkpoint's: `model.safetensors -> /other/model.safetensors`, or a
`shards/` link to a directory outside. Links that stay inside the root are harmless and allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from activities.checkpoints.errors import UnsafeCheckpointError


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def refuse_links_out(base: Path, label: str, only: Iterable[str] | None = None) -> None:
    """UnsafeCheckpointError naming the first link under `base` (or among `only`, names relative to it) that
    resolves outside `base`. Directories are walked without following links."""
    root = os.path.realpath(base)
    if only is not None:
        candidates = [os.path.join(base, name) for name in only]
    else:
        candidates = []
        for directory, dirs, files in os.walk(base, followlinks=False):
            candidates += [os.path.join(directory, name) for name in (*dirs, *files)]
    for path in candidates:
        if os.path.islink(path) and not _inside(os.path.realpath(path), root):
            name = os.path.relpath(path, base)
            raise UnsafeCheckpointError(
                label,
                f"{name} is a symbolic link to {os.readlink(path)}, outside the checkpoint's root {base}: links out "
                "of a checkpoint are never followed. Copy what it points to into the checkpoint, or inspect it "
                "where it is",
            )
