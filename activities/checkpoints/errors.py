"""Why a checkpoint cannot be read: every error names the file, so an operator knows what to fix."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint skyshift refuses to read; `path` is the file (or directory) at fault."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class UnsafeCheckpointError(CheckpointError):
    """The file would run code (or import something that could) if it were loaded with pickle."""


class MalformedCheckpointError(CheckpointError):
    """The file is damaged or lies about itself: a header past the end, overlapping tensors, a bad record."""


class UnsupportedCheckpointError(CheckpointError):
    """A well-formed file in a variant skyshift does not read (sparse tensors, compressed DCP items...)."""
