"""The job side of skyshift's job contract: read the SKYSHIFT_* variables, append metric lines.

A job skyshift runs (plan `workloads.jobs`) gets these variables from the worker:

| variable | what |
|---|---|
| `SKYSHIFT_METRICS` | a JSON-lines file to append to: `{"step": int, "loss": float, ...}` plus any numeric fields |
| `SKYSHIFT_OUTPUT` | a directory; every file written there (checkpoints) is collected and compared |
| `SKYSHIFT_DATA_<NAME>` | local path of each dataset the job `uses`, in this environment (`-` becomes `_`) |
| `SKYSHIFT_SEED` | the seed all arms share |
| `SKYSHIFT_ENVIRONMENT` | the environment the job runs in |
| `SKYSHIFT_ARM` | `source`, `source-repeat` or `target` (or `bench`) |
| `SKYSHIFT_DIST_BACKEND` | `nccl` where the worker has GPUs, else `gloo` (for `torch.distributed`) |

Only the standard library is used here, so any Python job can import this module; a job need not
import skyshift at all and may write the lines itself. Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import IO

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
