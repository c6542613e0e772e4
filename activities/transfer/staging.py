"""The hand-over of one key range from the source worker to the target worker, through the target's
metadata area: the source's listing of the range with each object's manifest, and the keys it
refused. One object per range (not one per key), compressed, so a million small objects cost a
few thousand small writes; workflow history carries only its key.

Records are packed binary (a million small objects must not each cost a JSON document and a
base64 body); ranges staged by older workers as JSON lines are still read.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from activities.stores import Store, StoreError
from activities.transfer.cache import decode, encode
from activities.transfer.chunking import ObjectManifest

_MAGIC = b"SKYSHIFT-RANGE-2\n"
_KEY = struct.Struct("<BI")  # kind (0 manifest, 1 skipped), key length
_OBJECT = struct.Struct("<QH32sI")  # size, etag length, root, body length
_REASON = struct.Struct("<I")


class Skipped(BaseModel):
    """An object left out, by *its* name, and why (a key that cannot be written safely, corrupt bytes)."""

    key: str
    reason: str


@dataclass
class StagedRange:
    manifests: list[ObjectManifest]
    skipped: list[Skipped]
    payload_key: str | None = None


_HEAD = struct.Struct("<H")  # length of the payload key ('' when the range has none)
_BODY = struct.Struct("<I")


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def write_range(area: Store, key: str, manifests: Iterable[ObjectManifest], skipped: Iterable[Skipped],
                payload_key: str | None = None) -> int:  # fmt: skip
    """Write the range; return the bytes written (they cross from the source's region to the target's).
    `payload_key`: where the bytes of some of its small objects were staged (`write_payload`)."""
    pointer = _text(payload_key or "")
    parts = [_MAGIC, _HEAD.pack(len(pointer)), pointer]
    for m in manifests:
        name, etag, body = _text(m.key), _text(m.etag or ""), encode(m)
        parts += [_KEY.pack(0, len(name)), name, _OBJECT.pack(m.size, len(etag), bytes.fromhex(m.root), len(body)),
                  etag, body]  # fmt: skip
    for s in skipped:
        name, reason = _text(s.key), _text(s.reason)
        parts += [_KEY.pack(1, len(name)), name, _REASON.pack(len(reason)), reason]
    body = zlib.compress(b"".join(parts), 1)
    area.put_bytes(key, body)
    return len(body)


def read_range(area: Store, key: str) -> StagedRange:
    data = zlib.decompress(area.read_bytes(key))
    if not data.startswith(_MAGIC):
        return _read_json_lines(data)
    manifests, skipped = [], []
    view, at = memoryview(data), len(_MAGIC)
    (length,) = _HEAD.unpack_from(view, at)
    payload_key = bytes(view[at + _HEAD.size : at + _HEAD.size + length]).decode("utf-8", "surrogatepass") or None
    at += _HEAD.size + length
    while at < len(data):
        kind, length = _KEY.unpack_from(view, at)
        at += _KEY.size
        name = bytes(view[at : at + length]).decode("utf-8", "surrogatepass")
        at += length
        if kind == 1:
            (length,) = _REASON.unpack_from(view, at)
            at += _REASON.size
            skipped.append(Skipped(key=name, reason=bytes(view[at : at + length]).decode("utf-8", "surrogatepass")))
            at += length
            continue
        size, etag_length, root, body_length = _OBJECT.unpack_from(view, at)
        at += _OBJECT.size
        etag = bytes(view[at : at + etag_length]).decode("utf-8", "surrogatepass") or None
        at += etag_length
        manifests.append(decode(name, size, etag, root, bytes(view[at : at + body_length])))  # type: ignore[arg-type]
        at += body_length
    return StagedRange(manifests=manifests, skipped=skipped, payload_key=payload_key)


def write_payload(area: Store, key: str, bodies: dict[str, bytes]) -> int:
    """Stage the bytes of small objects beside their range (uncompressed: they are counted as object
    bytes that crossed, exactly); return the bytes written."""
    parts = [_MAGIC]
    for name, body in bodies.items():
        encoded = _text(name)
        parts += [_KEY.pack(2, len(encoded)), encoded, _BODY.pack(len(body)), body]
    data = b"".join(parts)
    area.put_bytes(key, data)
    return sum(len(body) for body in bodies.values())


def read_payload(area: Store, key: str) -> dict[str, bytes]:
    """The staged bytes by key; empty when the payload is gone (the target then reads the source)."""
    try:
        data = area.read_bytes(key)
    except StoreError:
        return {}
    bodies, view, at = {}, memoryview(data), len(_MAGIC)
    while at < len(data):
        _, length = _KEY.unpack_from(view, at)
        at += _KEY.size
        name = bytes(view[at : at + length]).decode("utf-8", "surrogatepass")
        at += length
        (length,) = _BODY.unpack_from(view, at)
        at += _BODY.size
        bodies[name] = bytes(view[at : at + length])
        at += length
    return bodies


def _read_json_lines(text: bytes) -> StagedRange:
    """A range staged by a worker before the binary format (JSON lines, base64 bodies)."""
    manifests, skipped = [], []
    for record in _records(text):
        if "skipped" in record:
            skipped.append(Skipped(key=record["key"], reason=record["skipped"]))
        else:
            body = base64.b64decode(record["body"])
            manifests.append(decode(record["key"], record["size"], record["etag"], bytes.fromhex(record["root"]), body))
    return StagedRange(manifests=manifests, skipped=skipped)


def write_keys(area: Store, key: str, keys: list[str]) -> None:
    area.put_bytes(key, zlib.compress(json.dumps(keys).encode(), 6))


def read_keys(area: Store, key: str) -> list[str]:
    return json.loads(zlib.decompress(area.read_bytes(key))) if area.exists(key) else []


def write_deletes(area: Store, key: str, listed: dict[str, str | None]) -> None:
    """Target keys to delete with the etag each had when listed (deleted only while still that version)."""
    area.put_bytes(key, zlib.compress(json.dumps([[k, etag] for k, etag in listed.items()]).encode(), 6))


def read_deletes(area: Store, key: str) -> dict[str, str | None]:
    """What `write_deletes` wrote; a plain list of keys (written before etags were kept) has no etags."""
    items = read_keys(area, key)
    return {item: None for item in items if isinstance(item, str)} | {
        item[0]: item[1] for item in items if isinstance(item, list) and len(item) == 2
    }


def _records(text: bytes) -> Iterator[dict]:
    for line in text.decode().split("\n"):
        if line:
            yield json.loads(line)
