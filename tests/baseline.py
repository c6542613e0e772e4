"""The previous release (skyshift 0.1), as this repository's history holds it.

Executions started by 0.1's workers are still promised to finish on today's code; the upgrade test
runs 0.1's worker processes from this tree, and `tests/record_legacy_sync.py` recorded a 0.1 sync
history with it. One commit, named once.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

#: The last commit of skyshift 0.1: the workflow code migrations in the field were started with.
BASELINE = "c62f687"
REPO = Path(__file__).resolve().parent.parent


class BaselineMissing(RuntimeError):
    """The commit is not in this clone (a shallow clone, or no git)."""


def extract_baseline(into: Path) -> Path:
    """Write 0.1's source tree into `into` (created) and return it; run it with PYTHONPATH pointing there."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        raise BaselineMissing(
            f"the previous release {BASELINE} is not in this clone's history ({error} {detail.decode().strip()}); "
            f"fetch it (git fetch --unshallow) to use it"
        ) from error
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into
