"""The resume contract, worker side: a job's checkpoint directory into its environment's store and back.

A resumable job (plan `resume:`) writes complete checkpoints as `step-N/` directories under
SKYSHIFT_CHECKPOINT_DIR (`skyshift.jobs.save_checkpoint`; complete = the marker file is in it). When
it ends, the newest complete one is put in the environment's store under a prefix that stays the
same for the job, file names included, so the delta engine that moves it to another environment
rebuilds each file from the version it already holds and only changed chunks cross. A run that
resumes gets the prefix back as a local directory (SKYSHIFT_RESUME_FROM), each file verified.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio.exceptions import ApplicationError

from activities.jobs.files import download_verified
from activities.stores import Store, join_key, safe_key
from activities.transfer.layout import user_objects
from skyshift.jobs import MARKER, checkpoint_step, latest_checkpoint


class CheckpointRef(BaseModel):
    """A complete checkpoint in an environment's store: what history carries instead of its bytes."""

    prefix: str = Field(description="Key prefix in the environment's store (the job's `store`)")
    step: int = Field(description="The last step the checkpoint includes; a resumed run logs from step + 1")
    files: int
    bytes: int


def put_checkpoint(store: Store, local_root: Path, prefix: str) -> CheckpointRef | None:
    """The newest complete checkpoint under `local_root` into `store` at `prefix` (None: there is none).

    Objects under the prefix that the new checkpoint lacks are removed after it is written, and the
    marker goes last, so the prefix never holds a marker over files of another step.
    """
    newest = latest_checkpoint(local_root)
    if newest is None:
        return None
    step = checkpoint_step(newest)
    assert step is not None  # latest_checkpoint returns complete ones only
    files = sorted((p for p in newest.rglob("*") if p.is_file()), key=lambda p: (p.name == MARKER, str(p)))
    prefix = join_key(prefix)
    existing = {info.key for info in user_objects(store, prefix)}
    written, size = set(), 0
    marker_key = join_key(prefix, MARKER)
    if marker_key in existing:
        store.remove(marker_key)  # incomplete until the new marker lands
    for path in files:
        key = join_key(prefix, path.relative_to(newest).as_posix())
        store.put_file(key, path)
        written.add(key)
        size += path.stat().st_size
    if stale := sorted(existing - written):
        store.remove_many(stale)
    return CheckpointRef(prefix=prefix, step=step, files=len(files), bytes=size)


def fetch_checkpoint(store: Store, prefix: str, destination: Path) -> int:
    """The checkpoint at `prefix` as a local directory (each object checked against its listing and
    any manifest this worker holds); returns its step. Refuses a prefix without a complete checkpoint."""
    listed = list(user_objects(store, join_key(prefix)))
    if not any(info.key == join_key(prefix, MARKER) for info in listed):
        raise ApplicationError(
            f"{store.url}/{prefix}: no complete checkpoint there ({MARKER} missing): sync the job's checkpoint "
            "directory to this environment first, or resume from another one",
            type="CheckpointMissing",
            non_retryable=True,
        )
    shutil.rmtree(destination, ignore_errors=True)
    for info in listed:
        relative = safe_key(info.key[len(join_key(prefix)) :].lstrip("/"))
        download_verified(store, info, destination / relative)
    step = checkpoint_step(destination)
    if step is None:
        raise ApplicationError(f"{store.url}/{prefix}/{MARKER}: not a checkpoint marker (needs {{'step': N}})",
                               type="CheckpointMissing", non_retryable=True)  # fmt: skip
    return step
