"""The job side of skyshift's job contract: read the SKYSHIFT_* variables, append metric lines.

A job skyshift runs (plan `workloads.jobs`) gets these variables from the worker:

| variable | what |
|---|---|
| `SKYSHIFT_METRICS` | a JSON-lines file to append to: `{"step": int, "loss": float, ...}` plus any numeric fields |
| `SKYSHIFT_OUTPUT` | a directory; every file written there (checkpoints) is collected and compared |
| `SKYSHIFT_DATA_<NAME>` | local path of each dataset the job `uses`, in this environment (`-` becomes `_`) |
| `SKYSHIFT_SEED` | the seed all arms share |
| `SKYSHIFT_ENVIRONMENT` | the environment the job runs in |
| `SKYSHIFT_ARM` | `source`, `source-repeat`, `target`, `handoff` (or `bench`) |
| `SKYSHIFT_DIST_BACKEND` | `nccl` where the worker has GPUs, else `gloo` (for `torch.distributed`) |
| `SKYSHIFT_CHECKPOINT_DIR` | resumable jobs: where to write resumable checkpoints (`save_checkpoint`) |
| `SKYSHIFT_CHECKPOINT_EVERY` | resumable jobs: checkpoint every this many steps (plan `resume.every`) |
| `SKYSHIFT_RESUME_FROM` | set when a run resumes: the checkpoint directory to load (`resume_from`) |

The resume contract: SIGTERM means "checkpoint now and exit 0" (within the plan's `resume.grace`;
SIGKILL after). A checkpoint is a directory that is complete once `skyshift-checkpoint.json`
(`{"step": N}`, N the last step it includes) is in it; `save_checkpoint` builds it aside and renames
it into place, so a crash never leaves a half-written one. A resumed job logs from step N + 1 on.

Only the standard library is used here, so any Python job can import this module; a job need not
import skyshift at all and may write the lines itself. Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

MARKER = "skyshift-checkpoint.json"
_STEP_DIR = re.compile(r"^step-(\d{9,})$")
_stop = {"requested": False}

_handles: dict[str, IO[str]] = {}


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def log(step: int, **metrics: float) -> None:
    """Append one metric line for `step`; a no-op outside skyshift and on ranks other than 0.

    `time` (seconds since the epoch) is added unless given: skyshift derives step times and
    throughput from it. `samples` / `tokens` mean the samples / tokens consumed *by this step*.
    Each line is flushed at once, so a crash never loses a step already logged.
    """
    path = os.environ.get("SKYSHIFT_METRICS")
    if not path or _rank() != 0:
        return
    record: dict[str, float] = {"step": int(step)}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = float(value)  # tensors and numpy scalars; a string fails here, naming itself
        record[name] = value
    record.setdefault("time", time.time())
    handle = _handles.get(path)
    if handle is None:
        handle = _handles[path] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept for the process
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def data_path(name: str) -> Path:
    """Local path of the dataset `name` (as the plan names it) in this environment."""
    variable = "SKYSHIFT_DATA_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
    value = os.environ.get(variable)
    if not value:
        raise KeyError(f"{variable} is not set: add '{name}' to the job's `uses` in the plan")
    return Path(value)


def output_dir() -> Path:
    """Where to write checkpoints skyshift should collect (the current directory outside skyshift)."""
    return Path(os.environ.get("SKYSHIFT_OUTPUT", "."))


def seed(default: int = 0) -> int:
    return int(os.environ.get("SKYSHIFT_SEED", default))


def arm() -> str:
    return os.environ.get("SKYSHIFT_ARM", "")


def environment() -> str:
    return os.environ.get("SKYSHIFT_ENVIRONMENT", "")


# -- the resume contract -----------------------------------------------------------------------


def checkpoint_dir() -> Path | None:
    """Where to write resumable checkpoints (None: skyshift does not treat this run as resumable)."""
    value = os.environ.get("SKYSHIFT_CHECKPOINT_DIR")
    return Path(value) if value else None


def checkpoint_every(default: int | None = None) -> int | None:
    """Steps between periodic checkpoints (plan `resume.every`)."""
    value = os.environ.get("SKYSHIFT_CHECKPOINT_EVERY")
    return int(value) if value else default


def resume_from() -> Path | None:
    """The checkpoint directory to load when this run resumes another (None: start from scratch)."""
    value = os.environ.get("SKYSHIFT_RESUME_FROM")
    return Path(value) if value else None


def handle_sigterm() -> Callable[[], bool]:
    """Install the SIGTERM handler of the contract; returns `stop_requested()` to test after each step.

    The handler only records the request: the job finishes the step it is in, checkpoints and
    exits 0 (a checkpoint written from inside a signal handler could interleave with a step).
    """

    def requested(signum, frame) -> None:
        _stop["requested"] = True

    signal.signal(signal.SIGTERM, requested)
    return stop_requested


def stop_requested() -> bool:
    return _stop["requested"]


def checkpoint_step(directory: Path) -> int | None:
    """The step a complete checkpoint directory holds; None when it is not complete (no marker)."""
    try:
        return int(json.loads((directory / MARKER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(root: Path | None = None) -> Path | None:
    """The newest complete `step-N` directory under `root` (default: SKYSHIFT_CHECKPOINT_DIR)."""
    root = root or checkpoint_dir()
    if root is None or not root.is_dir():
        return None
    complete = [(checkpoint_step(p), p) for p in root.iterdir() if _STEP_DIR.match(p.name)]
    complete = [(step, p) for step, p in complete if step is not None]
    return max(complete)[1] if complete else None


def save_checkpoint(step: int, write: Callable[[Path], None], keep: int = 2) -> Path | None:
    """Checkpoint `step` atomically: `write(directory)` fills a directory built aside, then the marker
    is written, everything fsynced and the directory renamed to `step-N`; older ones beyond `keep`
    are removed. A no-op (None) outside skyshift's resume contract and on ranks other than 0."""
    root = checkpoint_dir()
    if root is None or _rank() != 0:
        return None
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{int(step):09d}"
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        write(building)
        (building / MARKER).write_text(json.dumps({"step": int(step), "time": time.time()}))
        for path in building.rglob("*"):
            if path.is_file():
                with open(path, "rb") as stream:
                    os.fsync(stream.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(building, final)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    complete = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    for old in complete[: max(len(complete) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final
