"""Records of in-flight multipart uploads, in the target's metadata area, so any later run resumes them.

A rebuild writes its record (object key, the manifest root it is building, upload id, part size)
before the first part. A worker killed mid-object leaves the record and the uploaded parts; the
next attempt — another worker, or a new `skyshift sync` after a SIGKILL of the last one — finds
the record, asks the provider which parts it holds and continues after them. A record for another
version of the object (a different root) is aborted, so no upload is left behind, and a finished
sync aborts any record older than itself that nobody resumed.
"""

from __future__ import annotations

import time

import blake3
from pydantic import BaseModel, Field

from activities.stores import PartInfo, PartWriter, Store

RECORDS = "uploads/records"


class UploadRecord(BaseModel):
    key: str
    root: str = Field(description="Merkle root of the version being written")
    upload_id: str
    part_size: int
    started_at: float = Field(description="Unix time the upload began; stale records are aborted")
    layout: str = Field("", description="Digest of the part plan when parts are not all `part_size` (copied runs)")


def record_key(key: str) -> str:
    return f"{RECORDS}/{blake3.blake3(key.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}.json"


def open_upload(target: Store, key: str, root: str, part_size: int, sizes: list[int] | None = None,
                layout: str = "") -> tuple[PartWriter, list[PartInfo]]:  # fmt: skip
    """A writer for `key` and the parts already uploaded for this exact version and part plan (resumed),
    in order. `sizes`: each planned part's size (default: all `part_size`)."""
    area, name = target.metadata, record_key(key)
    if area.exists(name):
        record = UploadRecord.model_validate_json(area.read_bytes(name))
        writer = target.open_multipart(key, record.upload_id)
        held = writer.uploaded_parts()
        if (held is not None and record.key == key and record.root == root and record.part_size == part_size
                and record.layout == layout):  # fmt: skip
            return writer, _contiguous(held, sizes, part_size)
        if held is not None:
            writer.abort()  # another version of the object: its parts are useless now
        area.remove(name)
    writer = target.open_multipart(key)
    record = UploadRecord(key=key, root=root, upload_id=writer.upload_id, part_size=part_size, started_at=time.time(),
                          layout=layout)  # fmt: skip
    area.put_bytes(name, record.model_dump_json().encode())
    return writer, []


def close_upload(target: Store, key: str) -> None:
    """The upload completed or was aborted: forget its record."""
    target.metadata.remove(record_key(key))


def abort_upload(target: Store, key: str, writer: PartWriter) -> None:
    writer.abort()
    close_upload(target, key)


def abort_stale(target: Store, older_than: float) -> int:
    """Abort uploads whose records predate `older_than` (nobody resumed them); return how many."""
    area, aborted = target.metadata, 0
    for info in list(area.list(RECORDS)):
        record = UploadRecord.model_validate_json(area.read_bytes(info.key))
        if record.started_at < older_than:
            target.open_multipart(record.key, record.upload_id).abort()
            area.remove(info.key)
            aborted += 1
    return aborted


def _contiguous(parts: list[PartInfo], sizes: list[int] | None, part_size: int) -> list[PartInfo]:
    """Parts 1..n, each of its planned size: what can be kept; anything after a gap is uploaded again."""
    kept = []
    for expected, part in enumerate(sorted(parts, key=lambda p: p.number), start=1):
        planned = sizes[expected - 1] if sizes is not None and expected <= len(sizes) else part_size
        if part.number != expected or part.size != planned:
            break
        kept.append(part)
    return kept
