"""Keys the operator controls: data keys generated and unwrapped by AWS KMS, or by a local key file for the
embedded stack. Plans and workflow history carry only a key *id* (`KeyRef`); data keys exist in worker
memory only, and at rest only wrapped.

AWS KMS is reached through `activities.aws.aws_client("kms", ...)`. The endpoint is the key's `endpoint` if
the plan sets one, else `AWS_ENDPOINT_URL_KMS` (boto3's own variable; the embedded stack points it at
moto, which serves KMS on the same port as S3), else AWS. A local key file holds 32 random bytes as hex
(`skyshift checkpoint keygen FILE`); data keys are wrapped under it with AES key wrap (RFC 3394).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: What a key id may look like: anything else (64 hex digits, base64 of 32 bytes) may be key material.
_KEY_ID = re.compile(r"^(file:///.+|arn:aws[a-z-]*:kms:.+|alias/[A-Za-z0-9/_-]+|(mrk-)?[0-9a-f]{8}-?[0-9a-f]{4}-?"
                     r"[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}|mrk-[0-9a-f]{32})$")  # fmt: skip
DATA_KEY_BYTES = 32
#: KMS error codes no retry can fix: the operator must fix the key id, its policy or its state.
_PERMANENT = {"NotFoundException", "AccessDeniedException", "DisabledException", "InvalidCiphertextException",
              "KMSInvalidStateException", "IncorrectKeyException", "InvalidKeyUsageException"}  # fmt: skip


class KmsError(RuntimeError):
    """KMS refused or failed; `permanent` when retrying cannot help (unknown key, no permission)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class KeyRef(BaseModel):
    """Which key wraps a checkpoint's data keys: an AWS KMS key id, ARN or alias, or `file:///path` of a
    local key file. An id, never key material."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kms_key: str = Field(description="KMS key id/ARN/alias (alias/name), or file:///abs/path of a local key file")
    endpoint: str | None = Field(None, description="KMS endpoint override (emulators); default AWS_ENDPOINT_URL_KMS")
    credentials: str | None = Field(None, description="AWS profile name the worker resolves; never a secret")

    @field_validator("kms_key")
    @classmethod
    def _an_id(cls, value: str) -> str:
        value = value.strip()
        if not _KEY_ID.match(value):
            raise ValueError(
                f"kms_key {value[:12]}...: not a KMS key id, ARN, alias/NAME or file:///path; plans carry key ids, "
                "never key material"
            )
        return value

    @property
    def local(self) -> bool:
        return self.kms_key.startswith("file://")


@dataclass(repr=False)
class DataKey:
    """A data key in memory: `plaintext` never leaves the worker; `wrapped` is what is stored."""

    key_id: str
    wrapped: bytes
    plaintext: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, wrapped={len(self.wrapped)} bytes)"


def _client(ref: KeyRef):
    from activities.aws import aws_client

    return aws_client("kms", ref.endpoint or os.environ.get("AWS_ENDPOINT_URL_KMS"), ref.credentials)


def _kms_failure(ref: KeyRef, action: str, error: Exception) -> KmsError:
    from botocore.exceptions import ClientError

    code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
    permanent = code in _PERMANENT
    return KmsError(f"KMS key {ref.kms_key}: cannot {action}: {code or type(error).__name__}", permanent=permanent)


def _master(ref: KeyRef) -> bytes:
    path = Path(unquote(urlparse(ref.kms_key).path))
    try:
        text = path.read_text().strip()
    except OSError as error:
        raise KmsError(f"key file {path}: cannot read it ({error.strerror}); create one with "
                       "`skyshift checkpoint keygen FILE`", permanent=True) from None  # fmt: skip
    try:
        master = bytes.fromhex(text)
    except ValueError:
        master = b""
    if len(master) != DATA_KEY_BYTES:
        raise KmsError(f"key file {path}: must hold {DATA_KEY_BYTES} bytes as hex", permanent=True)
    return master


def generate_data_key(ref: KeyRef) -> DataKey:
    """A fresh 256-bit data key and its wrapped form."""
    if ref.local:
        from cryptography.hazmat.primitives.keywrap import aes_key_wrap

        plaintext = secrets.token_bytes(DATA_KEY_BYTES)
        return DataKey(key_id=ref.kms_key, wrapped=aes_key_wrap(_master(ref), plaintext), plaintext=plaintext)
    try:
        response = _client(ref).generate_data_key(KeyId=ref.kms_key, KeySpec="AES_256")
    except Exception as error:
        raise _kms_failure(ref, "generate a data key", error) from None
    return DataKey(key_id=ref.kms_key, wrapped=response["CiphertextBlob"], plaintext=response["Plaintext"])


def unwrap(ref: KeyRef, wrapped: bytes) -> DataKey:
    """The data key `wrapped` protects; only a holder of the key (KMS Decrypt permission, the key file) gets it."""
    if ref.local:
        from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

        try:
            plaintext = aes_key_unwrap(_master(ref), wrapped)
        except InvalidUnwrap:
            raise KmsError(f"key file {ref.kms_key}: it did not wrap this data key", permanent=True) from None
        return DataKey(key_id=ref.kms_key, wrapped=wrapped, plaintext=plaintext)
    try:
        response = _client(ref).decrypt(CiphertextBlob=wrapped, KeyId=ref.kms_key)
    except Exception as error:
        raise _kms_failure(ref, "unwrap the data key", error) from None
    return DataKey(key_id=ref.kms_key, wrapped=wrapped, plaintext=response["Plaintext"])


def create_key_file(path: Path) -> KeyRef:
    """A new local key file (32 random bytes, hex, mode 0600); refuses to overwrite one."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_bytes(DATA_KEY_BYTES).hex() + "\n")
    return KeyRef(kms_key=path.as_uri())
