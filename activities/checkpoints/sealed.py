"""Sealed checkpoints: envelope encryption with keys the operator controls, deduplicated like the delta engine.

The design restic and borg use for encrypted deduplicating repositories. The source worker cuts each file
with the delta engine's FastCDC (`chunk_stream`), names every chunk by a keyed BLAKE3 of its plaintext
(under a key derived from the data key, so the storage provider never sees a plaintext hash and cannot
test a guess), seals it with AES-256-GCM under another derived key, and uploads only chunks whose names
the target's repository lacks: an incremental sync of a checkpoint with one changed tensor sends only the
chunks of that tensor. Decryption happens only where `open_sealed` runs (the target worker, or
`skyshift checkpoint decrypt`).

Repository layout under the checkpoint workload's target path:

    <path>/sealed/config.json          format, KMS key *id*, the data key wrapped by KMS, algorithms
    <path>/sealed/chunks/<id>          nonce (12 bytes) || AES-256-GCM(chunk) || tag; AAD = "chunk:" + id
    <path>/sealed/index/<file>.sealed  AES-256-GCM(JSON: size, ordered chunk ids and lengths); AAD = "index:" + file

Keys: one 256-bit data key per repository (from KMS GenerateDataKey, or wrapped by a local key file),
stored only wrapped; HKDF-SHA256 derives the AEAD key and the chunk-id key from it. Nothing unauthenticated
is ever released: AES-GCM checks a chunk's tag (over its ciphertext and its id) before it returns any
plaintext, so a flipped byte is refused and never decrypted; the chunk's id is then recomputed from the
plaintext, and files are written to their destination only after every chunk of every file has passed. Not
built: key rotation (seal into a new path), garbage collection of chunks no index references.
"""

from __future__ import annotations

import base64
import secrets
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import blake3
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.checkpoints.kms import DataKey, KeyRef, KmsError, generate_data_key, unwrap
from activities.errors import fail_fast_on_permanent_errors
from activities.stores import ObjectInfo, Store, StoreSpec, join_key, open_store
from activities.transfer.chunking import chunk_stream, params_for_size
from activities.transfer.layout import user_objects

FORMAT = "skyshift-sealed/1"
SEALED_DIR = "sealed"
NONCE_BYTES = 12
#: Chunk uploads in flight at once (each a small PUT; the store's latency, not bandwidth, bounds them).
UPLOADS_IN_FLIGHT = 16


class SealedError(RuntimeError):
    """The sealed repository is missing, inconsistent, or was sealed under another key."""


class TamperedError(SealedError):
    """A sealed chunk or index failed authentication: it was refused and never decrypted."""


class RepositoryConfig(BaseModel):
    format: str = FORMAT
    kms_key: str = Field(description="The key id that wraps the data key (never key material)")
    wrapped_key: str = Field(description="base64 of the data key as wrapped by KMS or the key file")
    aead: str = "AES-256-GCM"
    chunk_id: str = "BLAKE3-keyed"
    kdf: str = "HKDF-SHA256"


class FileIndex(BaseModel):
    """One sealed file: its plaintext size and chunks in order (stored sealed)."""

    key: str
    size: int
    chunks: list[tuple[str, int]] = Field(description="(chunk id, plaintext length) in file order")


class SealInput(BaseModel):
    name: str = Field(description="Checkpoint workload name (reports)")
    source: StoreSpec
    source_path: str = Field(description="Checkpoint file or directory in the source store")
    target: StoreSpec
    target_path: str = Field(description="The workload's target path: the repository is <target_path>/sealed/")
    key: KeyRef


class SealProgress(BaseModel):
    """Heartbeat details: a retried attempt continues the counts of the one before (its chunks are then present)."""

    files: int = 0
    chunks_total: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    plaintext_bytes: int = 0


class SealResult(BaseModel):
    name: str
    repository: str = Field(description="URL of <target_path>/sealed")
    key_id: str
    files: int
    plaintext_bytes: int
    chunks_total: int
    chunks_sent: int
    chunks_reused: int
    bytes_sent: int = Field(description="Every byte written to the target (sealed chunks, indexes, config): egress")


class OpenSealedInput(BaseModel):
    name: str = ""
    store: StoreSpec = Field(description="Where the repository is (the target's storage)")
    sealed_path: str = Field(description="The workload's target path holding sealed/")
    destination: StoreSpec | None = Field(None, description="Where plaintext goes; default the same store")
    destination_path: str
    key: KeyRef | None = Field(None, description="Default: the key id the repository records")


class OpenSealedResult(BaseModel):
    name: str
    destination: str
    files: int
    bytes_written: int
    chunks_verified: int
    written: list[str] = Field(default_factory=list, description="Destination keys written (for compensation)")


class RemoveSealedInput(BaseModel):
    """Undo of a seal/open: the repository under <path>/sealed/ and the plaintext keys open_sealed wrote."""

    store: StoreSpec
    sealed_path: str
    destination: StoreSpec | None = None
    written: list[str] = Field(default_factory=list)


class _Keys:
    """The keys derived from one data key; never serialized, never logged."""

    def __init__(self, data_key: DataKey) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        def derive(purpose: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"skyshift sealed v1 " + purpose).derive(
                data_key.plaintext
            )

        self._aead = AESGCM(derive(b"aead"))
        self._id_key = derive(b"chunk-id")

    def __repr__(self) -> str:
        return "_Keys(<hidden>)"

    def chunk_id(self, plaintext: bytes | memoryview) -> str:
        return blake3.blake3(plaintext, key=self._id_key).hexdigest()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes, what: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(sealed) < NONCE_BYTES + 16:
            raise TamperedError(f"{what}: {len(sealed)} bytes is too short to be sealed; refused")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise TamperedError(
                f"{what}: failed authentication (tampered or damaged); refused, not decrypted"
            ) from None


def _paths(path: str) -> tuple[str, str, str]:
    root = join_key(path, SEALED_DIR)
    return join_key(root, "config.json"), join_key(root, "chunks"), join_key(root, "index")


def _load_config(store: Store, path: str) -> RepositoryConfig | None:
    config_key, _, _ = _paths(path)
    if not store.exists(config_key):
        return None
    return RepositoryConfig.model_validate_json(store.read_bytes(config_key))


def open_keys(store: Store, path: str, key: KeyRef | None) -> tuple[_Keys, RepositoryConfig]:
    """Unwrap the repository's data key with the key it records (or `key`, which must be the same id)."""
    config = _load_config(store, path)
    if config is None:
        raise SealedError(f"{store.url}/{join_key(path, SEALED_DIR)}: no sealed repository here")
    if config.format != FORMAT:
        raise SealedError(f"{store.url}/{path}: repository format {config.format!r}, this skyshift reads {FORMAT}")
    if key is not None and key.kms_key != config.kms_key:
        raise SealedError(f"{store.url}/{path}: sealed under key {config.kms_key}, not {key.kms_key}")
    ref = key or KeyRef(kms_key=config.kms_key)
    return _Keys(unwrap(ref, base64.b64decode(config.wrapped_key))), config


def _source_files(store: Store, path: str) -> list[tuple[str, ObjectInfo]]:
    """(key relative to the checkpoint path, object) for a file or every object under a directory."""
    path = path.strip("/")
    single = store.info(path) if path else None
    if single is not None:
        return [(path.rpartition("/")[2], single)]
    prefix = f"{path}/" if path else ""
    files = [(o.key[len(prefix) :], o) for o in user_objects(store, path)]
    if not files:
        raise SealedError(f"{store.url}/{path}: nothing to seal (no objects)")
    return files


class _Uploads:
    """Bounded parallel PUTs of sealed chunks."""

    def __init__(self, store: Store) -> None:
        self.store, self.pool = store, ThreadPoolExecutor(max_workers=8)
        self.pending: list[Future] = []

    def put(self, key: str, data: bytes) -> None:
        self.pending.append(self.pool.submit(self.store.put_bytes, key, data))
        if len(self.pending) >= UPLOADS_IN_FLIGHT:
            self.drain()

    def drain(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _chunks(store: Store, info: ObjectInfo) -> Iterator[bytes]:
    with store.open_read(info.key) as stream:
        for _, data in chunk_stream(stream, params_for_size(info.size), size_hint=info.size):
            assert data is not None
            yield data


def seal(request: SealInput, progress: SealProgress | None = None, heartbeat=None) -> SealResult:
    """Seal the source checkpoint into the target's repository, sending only chunks it lacks."""
    source, target = open_store(request.source), open_store(request.target)
    config_key, chunk_dir, index_dir = _paths(request.target_path)
    # A retried attempt finds the chunks its predecessor sent already present: carry its sent counts on.
    done = (
        SealProgress(chunks_sent=progress.chunks_sent, bytes_sent=progress.bytes_sent) if progress else SealProgress()
    )
    if _load_config(target, request.target_path) is None:
        data_key = generate_data_key(request.key)
        config = RepositoryConfig(kms_key=request.key.kms_key, wrapped_key=base64.b64encode(data_key.wrapped).decode())
        data = config.model_dump_json().encode()
        target.put_bytes(config_key, data)
        done.bytes_sent += len(data)
        keys = _Keys(data_key)
        del data_key
    else:
        keys, _ = open_keys(target, request.target_path, request.key)
    present = {info.key.rpartition("/")[2] for info in target.list(chunk_dir)}
    sealed_files = {info.key[len(index_dir) + 1 :].removesuffix(".sealed") for info in target.list(index_dir)}
    files = _source_files(source, request.source_path)
    uploads = _Uploads(target)
    try:
        for relative, info in files:
            index = FileIndex(key=relative, size=info.size, chunks=[])
            for plaintext in _chunks(source, info):
                chunk_id = keys.chunk_id(plaintext)
                index.chunks.append((chunk_id, len(plaintext)))
                done.chunks_total += 1
                done.plaintext_bytes += len(plaintext)
                if chunk_id not in present:
                    sealed = keys.seal(plaintext, b"chunk:" + chunk_id.encode())
                    uploads.put(join_key(chunk_dir, chunk_id), sealed)
                    present.add(chunk_id)
                    done.chunks_sent += 1
                    done.bytes_sent += len(sealed)
                if heartbeat is not None:
                    heartbeat(done)
            uploads.drain()  # every chunk of the file is stored before its index names them
            sealed_index = keys.seal(index.model_dump_json().encode(), b"index:" + relative.encode())
            target.put_bytes(join_key(index_dir, f"{relative}.sealed"), sealed_index)
            done.bytes_sent += len(sealed_index)
            done.files += 1
        for stale in sorted(sealed_files - {relative for relative, _ in files}):
            target.remove(join_key(index_dir, f"{stale}.sealed"))  # the source no longer has this file
    finally:
        uploads.close()
    repository = f"{target.url.rstrip('/')}/{join_key(request.target_path, SEALED_DIR)}"
    return SealResult(name=request.name, repository=repository,
                      key_id=request.key.kms_key, files=done.files, plaintext_bytes=done.plaintext_bytes,
                      chunks_total=done.chunks_total, chunks_sent=done.chunks_sent,
                      chunks_reused=done.chunks_total - done.chunks_sent, bytes_sent=done.bytes_sent)  # fmt: skip


def _sealed_indexes(store: Store, path: str, keys: _Keys) -> list[FileIndex]:
    _, _, index_dir = _paths(path)
    indexes = []
    for info in store.list(index_dir):
        relative = info.key[len(index_dir) + 1 :].removesuffix(".sealed")
        what = f"{store.url}/{info.key} (index of {relative})"
        index = FileIndex.model_validate_json(
            keys.open(store.read_bytes(info.key), b"index:" + relative.encode(), what)
        )
        if index.key != relative:
            raise TamperedError(f"{what}: describes {index.key!r}; refused")
        indexes.append(index)
    if not indexes:
        raise SealedError(f"{store.url}/{index_dir}: the repository holds no sealed files")
    return indexes


def open_repository(request: OpenSealedInput, heartbeat=None) -> OpenSealedResult:
    """Verify and decrypt every sealed file to local disk, then write them to the destination: nothing is
    written unless every chunk of every file has authenticated and matched its id."""
    store = open_store(request.store)
    destination = open_store(request.destination) if request.destination else store
    keys, _ = open_keys(store, request.sealed_path, request.key)
    _, chunk_dir, _ = _paths(request.sealed_path)
    indexes = _sealed_indexes(store, request.sealed_path, keys)
    verified = 0
    with tempfile.TemporaryDirectory(prefix="skyshift-open-") as scratch:
        for number, index in enumerate(indexes):
            with open(Path(scratch) / str(number), "wb") as plain:
                for chunk_id, length in index.chunks:
                    where = join_key(chunk_dir, chunk_id)
                    what = f"{store.url}/{where} (chunk of {index.key})"
                    if not store.exists(where):
                        raise SealedError(f"{what}: missing from the repository")
                    plaintext = keys.open(store.read_bytes(where), b"chunk:" + chunk_id.encode(), what)
                    if len(plaintext) != length or keys.chunk_id(plaintext) != chunk_id:
                        raise TamperedError(f"{what}: content does not match its id; refused")
                    plain.write(plaintext)
                    verified += 1
                    if heartbeat is not None:
                        heartbeat(verified)
                if plain.tell() != index.size:
                    raise TamperedError(
                        f"{index.key}: {plain.tell()} bytes from its chunks, the index says {index.size}"
                    )
        written = []
        for number, index in enumerate(indexes):
            key = join_key(request.destination_path, index.key)
            destination.put_file(key, Path(scratch) / str(number))
            written.append(key)
    return OpenSealedResult(name=request.name, destination=f"{destination.url.rstrip('/')}/{request.destination_path}",
                            files=len(indexes), bytes_written=sum(i.size for i in indexes),
                            chunks_verified=verified, written=written)  # fmt: skip


def _activity_error(error: Exception) -> ApplicationError:
    return ApplicationError(str(error), type=type(error).__name__, non_retryable=True)


def _heartbeat_every(step: int):
    count = {"n": 0}

    def beat(details) -> None:
        count["n"] += 1
        if count["n"] % step == 0 and activity.in_activity():
            activity.heartbeat(details.model_dump() if isinstance(details, BaseModel) else {"verified": details})
            if activity.is_cancelled():
                raise CancelledError("cancelled")

    return beat


@activity.defn
@fail_fast_on_permanent_errors
def seal_checkpoint(request: SealInput) -> SealResult:
    """Source worker: seal a checkpoint into the target's repository; only absent chunks cross."""
    details = activity.info().heartbeat_details
    progress = SealProgress.model_validate(details[0]) if details else None
    try:
        return seal(request, progress, _heartbeat_every(64))
    except TamperedError as error:
        raise _activity_error(error) from None
    except (SealedError, KmsError) as error:
        if isinstance(error, KmsError) and not error.permanent:
            raise
        raise _activity_error(error) from None


@activity.defn
@fail_fast_on_permanent_errors
def open_sealed(request: OpenSealedInput) -> OpenSealedResult:
    """Target worker: verify, then decrypt a sealed checkpoint into the destination store."""
    try:
        return open_repository(request, _heartbeat_every(64))
    except (SealedError, KmsError) as error:
        if isinstance(error, KmsError) and not error.permanent:
            raise
        raise _activity_error(error) from None


@activity.defn
@fail_fast_on_permanent_errors
def remove_sealed(request: RemoveSealedInput) -> int:
    """Compensation: delete the sealed repository and the plaintext files opened from it (idempotent)."""
    store = open_store(request.store)
    destination = open_store(request.destination) if request.destination else store
    removed = sum(destination.remove(key) for key in request.written)
    root = join_key(request.sealed_path, SEALED_DIR)
    for info in list(store.list(root)):
        removed += store.remove(info.key)
        if activity.in_activity() and removed % 256 == 0:
            activity.heartbeat({"removed": removed})
    return removed
