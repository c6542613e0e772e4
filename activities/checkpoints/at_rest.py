"""Ciphertext at rest: a sealed checkpoint is decrypted only into this worker's local scratch, never a bucket.

With plan `encryption.at_rest: sealed` the target store keeps only the sealed repository
(`<path>/sealed/`, see `sealed`): `open_sealed` is not run into the bucket. Whatever needs the
plaintext on the target (the compatibility check, the decommission's archive verification)
decrypts it here into a temporary directory that is deleted when the work is done. Every chunk
authenticates (AES-GCM) and matches its keyed id before anything is written, as `open_sealed`
does; keys stay on this worker.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.checkpoints.kms import KmsError
from activities.checkpoints.sealed import OpenSealedInput, SealedError, open_repository
from activities.errors import fail_fast_on_permanent_errors
from activities.stores import StoreSpec, open_store
from activities.transfer.archive import ArchiveEntry, ArchiveInput, VerifyArchiveResult
from activities.transfer.layout import archive_key
from activities.transfer.manifest import fingerprint

PLAIN = "plain"


def _beat(count: int) -> None:
    if activity.in_activity() and count % 64 == 0:
        activity.heartbeat({"verified": count})


def decrypt_to(store: StoreSpec, path: str, scratch: Path) -> tuple[Path, dict[str, Path]]:
    """Decrypt the repository at `path` under `scratch`; (the file or directory to load, relative key → file)."""
    result = open_repository(
        OpenSealedInput(name=path, store=store, sealed_path=path,
                        destination=StoreSpec(url=(scratch / PLAIN).as_uri()), destination_path=""),
        _beat,
    )  # fmt: skip
    files = {key: scratch / PLAIN / key for key in result.written}
    name = path.strip("/").rpartition("/")[2]
    if list(files) == [name]:
        return files[name], files  # a single-file checkpoint, sealed under its own name
    return scratch / PLAIN, files


@contextmanager
def decrypted(store: StoreSpec, path: str) -> Iterator[tuple[Path, dict[str, Path]]]:
    """A sealed checkpoint as local plaintext for the duration of a `with`; the scratch is deleted after."""
    with tempfile.TemporaryDirectory(prefix="skyshift-at-rest-") as scratch:
        yield decrypt_to(store, path, Path(scratch))


@activity.defn
@fail_fast_on_permanent_errors
def verify_sealed_archive(request: ArchiveInput) -> VerifyArchiveResult:
    """Target side, for a checkpoint kept sealed: decrypt in scratch, every archived object present, same root."""
    target = open_store(request.target)
    manifest = archive_key(request.migration_id, request.workload)
    if not target.metadata.exists(manifest):
        raise ApplicationError(f"{target.url}/{manifest}: archive manifest missing", non_retryable=True)
    entries = [ArchiveEntry.model_validate(e) for e in json.loads(target.metadata.read_bytes(manifest))["objects"]]
    prefix = request.path.strip("/")
    try:
        with decrypted(request.target, request.path) as (local, files):
            plain = open_store(local.as_uri() if local.is_dir() else local.parent.as_uri())
            mismatched = []
            for index, entry in enumerate(entries):
                relative = entry.key[len(prefix) + 1 :] if entry.key.startswith(prefix + "/") else entry.key
                relative = relative if relative in files else entry.key.rpartition("/")[2]
                key = relative if local.is_dir() else local.name
                info = plain.info(key) if relative in files else None
                if info is None or fingerprint(plain, info)[0].root != entry.root:
                    mismatched.append(entry.key)
                _beat(index)
    except (SealedError, KmsError) as error:
        if isinstance(error, KmsError) and not error.permanent:
            raise
        raise ApplicationError(str(error), type=type(error).__name__, non_retryable=True) from None
    if mismatched:
        raise ApplicationError(
            f"{target.url}: {len(mismatched)} archived objects are missing from or differ in the sealed copy "
            f"(first: {mismatched[0]}); the source is kept",
            non_retryable=True,
        )
    return VerifyArchiveResult(workload=request.workload, objects_verified=len(entries), mismatched=[])
