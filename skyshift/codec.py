"""Payload encryption: an AES-GCM payload codec, its key sources, and the codec server the Temporal UI calls.

Workflow inputs, results, heartbeat details, search-free metadata and failures are encrypted before they
leave the process, so the Temporal server (and whoever reads its database or history exports) sees only
ciphertext. The key never enters history: it comes from the process environment, or is a data key that
AWS KMS generated and only KMS can unwrap (envelope encryption: each payload carries the *wrapped* data
key, which is useless without `kms:Decrypt` on the key id).

Keys, in the order they are looked for:

- `SKYSHIFT_CODEC_KEY`: base64 of 32 random bytes (`openssl rand -base64 32`); the key id written beside
  each payload is a digest of the key, never the key. `SKYSHIFT_CODEC_OLD_KEYS` (comma-separated, same
  format) decrypt what older keys wrote, so a key can be rotated without losing history.
- `SKYSHIFT_CODEC_KMS_KEY_ID`: a KMS key id, ARN or alias; boto3's own settings (`AWS_REGION`,
  `AWS_ENDPOINT_URL_KMS`, credentials) reach KMS.

Encryption is on when a worker or the CLI is started with `--encrypt` (or `SKYSHIFT_ENCRYPT=1`): every
process that touches a migration must agree, so it is an explicit switch rather than implied by a key
lying around in the environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

#: The encoding Temporal's samples and UI use for encrypted payloads.
ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
WRAPPED_KEY = "encryption-wrapped-key"
NONCE_BYTES = 12


class CodecConfigError(ValueError):
    """Encryption was asked for but no usable key is configured (exit 2: the message says what to set)."""


class EncryptedHistoryError(CodecConfigError):
    """A payload this process cannot decrypt: it holds no key, or another one (exit 2, saying which key)."""

    def __init__(self, wanted: str) -> None:
        self.key_id = wanted or "(unnamed)"
        super().__init__(
            f"this migration's history is encrypted with key {self.key_id}; set SKYSHIFT_CODEC_KEY (or the KMS "
            "id, SKYSHIFT_CODEC_KMS_KEY_ID; an older key in SKYSHIFT_CODEC_OLD_KEYS) to read it, and --encrypt "
            "to write to it"
        )


def encrypted_key_id(payload: Payload) -> str | None:
    """The key id of an encrypted payload, or None when it is not encrypted."""
    if payload.metadata.get("encoding") != ENCODING:
        return None
    return payload.metadata.get(KEY_ID, b"").decode() or "(unnamed)"


class RefusingCodec(PayloadCodec):
    """The codec of a process without encryption: writes plaintext as before, and meets an encrypted
    payload with `EncryptedHistoryError` (which key, what to set) instead of the converter's
    `KeyError: 'Unknown payload encoding binary/encrypted'`."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        for payload in payloads:
            wanted = encrypted_key_id(payload)
            if wanted is not None:
                raise EncryptedHistoryError(wanted)
        return list(payloads)


def encryption_requested() -> bool:
    return os.environ.get("SKYSHIFT_ENCRYPT", "").lower() in ("1", "true", "yes", "on")


def _decode_key(value: str, variable: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        raise CodecConfigError(f"{variable} is not base64: generate one with `openssl rand -base64 32`") from None
    if len(key) != 32:
        raise CodecConfigError(f"{variable} must decode to 32 bytes (AES-256), not {len(key)}")
    return key


def key_id(key: bytes) -> str:
    """A name for a key that reveals nothing about it: the first 16 hex digits of its SHA-256."""
    return "sha256:" + hashlib.sha256(key).hexdigest()[:16]


class AesGcmCodec(PayloadCodec):
    """AES-256-GCM over each serialized payload; the key id (and, with KMS, the wrapped key) ride along.

    A payload that is not encrypted passes through `decode` unchanged, so a worker switched to encryption
    can still read histories written before the switch.
    """

    def __init__(self, key: bytes, *, old_keys: Sequence[bytes] = (), wrapped_key: bytes | None = None,
                 unwrap: Any = None) -> None:  # fmt: skip
        self._key, self._id, self._wrapped = AESGCM(key), key_id(key), wrapped_key
        self._keys = {key_id(k): AESGCM(k) for k in (key, *old_keys)}
        self._unwrap = unwrap  # wrapped data key -> plaintext key (KMS Decrypt)
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        return self._id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(p) for p in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        metadata = {"encoding": ENCODING, KEY_ID: self._id.encode()}
        if self._wrapped is not None:
            metadata[WRAPPED_KEY] = self._wrapped
        # The key id is authenticated data: a payload cannot be re-labelled to another key unnoticed.
        sealed = self._key.encrypt(nonce, payload.SerializeToString(), self._id.encode())
        return Payload(metadata=metadata, data=nonce + sealed)

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        wanted = payload.metadata.get(KEY_ID, b"").decode()
        cipher = self._cipher_for(wanted, payload.metadata.get(WRAPPED_KEY))
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        return Payload.FromString(cipher.decrypt(nonce, sealed, wanted.encode()))

    def _cipher_for(self, wanted: str, wrapped: bytes | None) -> AESGCM:
        with self._lock:
            if wanted in self._keys:
                return self._keys[wanted]
            if wrapped is not None and self._unwrap is not None:
                key = self._unwrap(wrapped)
                if key_id(key) == wanted:
                    self._keys[wanted] = AESGCM(key)
                    return self._keys[wanted]
        raise EncryptedHistoryError(wanted)


def _kms_client():
    import boto3

    return boto3.client("kms", region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                        or "us-east-1")  # fmt: skip


def codec_from_env() -> AesGcmCodec:
    """The codec the environment configures; CodecConfigError names what is missing or wrong."""
    old = [
        _decode_key(value, "SKYSHIFT_CODEC_OLD_KEYS")
        for value in os.environ.get("SKYSHIFT_CODEC_OLD_KEYS", "").split(",")
        if value.strip()
    ]
    if os.environ.get("SKYSHIFT_CODEC_KEY"):
        return AesGcmCodec(_decode_key(os.environ["SKYSHIFT_CODEC_KEY"], "SKYSHIFT_CODEC_KEY"), old_keys=old)
    kms_key = os.environ.get("SKYSHIFT_CODEC_KMS_KEY_ID")
    if kms_key:
        kms = _kms_client()
        try:
            data_key = kms.generate_data_key(KeyId=kms_key, KeySpec="AES_256")
        except Exception as error:  # botocore's errors are many; the message says which and why
            raise CodecConfigError(f"SKYSHIFT_CODEC_KMS_KEY_ID={kms_key}: KMS refused a data key: {error}") from None

        def unwrap(wrapped: bytes) -> bytes:
            return kms.decrypt(CiphertextBlob=wrapped)["Plaintext"]

        return AesGcmCodec(data_key["Plaintext"], old_keys=old, wrapped_key=data_key["CiphertextBlob"], unwrap=unwrap)
    raise CodecConfigError(
        "payload encryption is on (--encrypt or SKYSHIFT_ENCRYPT=1) but no key is configured: set "
        "SKYSHIFT_CODEC_KEY (base64 of 32 bytes: `openssl rand -base64 32`) or SKYSHIFT_CODEC_KMS_KEY_ID"
    )


# -- codec server ---------------------------------------------------------------------------------
# The protocol the Temporal UI and `temporal --codec-endpoint` speak: POST {base}/encode and
# {base}/decode with a JSON `Payloads` message (protobuf JSON mapping), answered in kind.


def _convert(codec: AesGcmCodec, body: bytes, decode: bool) -> bytes:
    import asyncio

    message = json_format.Parse(body, Payloads())
    convert = codec.decode if decode else codec.encode
    converted = asyncio.run(convert(list(message.payloads)))
    return json_format.MessageToJson(Payloads(payloads=converted)).encode()


def codec_server(codec: AesGcmCodec, host: str, port: int, allow_origins: Sequence[str]) -> ThreadingHTTPServer:
    """An HTTP codec server (call `serve_forever`). CORS answers only the listed UI origins."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "skyshift-codec"

        def _cors(self) -> None:
            origin = self.headers.get("Origin")
            if origin and (origin in allow_origins or "*" in allow_origins):
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
                self.send_header("Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization")
                self.send_header("Access-Control-Allow-Credentials", "true")

        def do_OPTIONS(self) -> None:
            self.send_response(204)
            self._cors()
            self.end_headers()

        def do_POST(self) -> None:
            action = self.path.rstrip("/").rsplit("/", 1)[-1]
            if action not in ("encode", "decode"):
                self._reply(404, {"error": f"unknown path {self.path}: POST .../encode or .../decode"})
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                answer = _convert(codec, body, decode=action == "decode")
            except (json_format.ParseError, ValueError) as error:
                self._reply(400, {"error": str(error)})
                return
            self.send_response(200)
            self._cors()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self._cors()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the UI polls often
            pass

    return ThreadingHTTPServer((host, port), Handler)
