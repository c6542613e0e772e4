"""The hand-over of one key range from the source worker to the target worker, through the target's
metadata area: the source's listing of the range with each object's manifest, and the keys it
refused. One object per range (not one per key), compressed, so a million small objects cost a
few thousand small writes; workflow history carries only its key.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, Iterator

from pydantic import BaseModel

from activities.stores import Store
from activities.transfer.cache import decode, encode
from activities.transfer.manifest import ObjectManifest


class Skipped(BaseModel):
    """An object left out, by *its* name, and why (a key that cannot be written safely, corrupt bytes)."""

    key: str
    reason: str


class StagedRange(BaseModel):
    manifests: list[ObjectManifest]
    skipped: list[Skipped]


def write_range(area: Store, key: str, manifests: Iterable[ObjectManifest], skipped: Iterable[Skipped]) -> int:
    """Write the range; return the bytes written (they cross from the source's region to the target's)."""

    def line(m: ObjectManifest) -> str:
        body = base64.b64encode(encode(m)).decode()
        return json.dumps({"key": m.key, "size": m.size, "etag": m.etag, "root": m.root, "body": body})

    lines = [line(m) for m in manifests] + [json.dumps({"key": s.key, "skipped": s.reason}) for s in skipped]
    body = zlib.compress("\n".join(lines).encode(), 6)
    area.put_bytes(key, body)
    return len(body)


def read_range(area: Store, key: str) -> StagedRange:
    manifests, skipped = [], []
    for record in _records(area.read_bytes(key)):
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


def _records(blob: bytes) -> Iterator[dict]:
    text = zlib.decompress(blob).decode()
    for line in text.split("\n"):
        if line:
            yield json.loads(line)
