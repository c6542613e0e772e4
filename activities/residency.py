"""Data residency from the store's own API: where a bucket really is, compared with where it may be.

A plan's region is a string someone typed; the bucket's location is what the provider answers (S3
GetBucketLocation, the GCS bucket's `location`). Both `skyshift sync --allowed-regions` and a plan's
`allowed_data_regions` are judged against the answer, before a byte is written.
"""

from __future__ import annotations

from pydantic import BaseModel

from activities.stores import StoreSpec, open_store


class ResidencyCheck(BaseModel):
    url: str
    region: str | None
    ok: bool
    detail: str


def check_residency(spec: StoreSpec, allowed: list[str] | None = None, expected: str | None = None) -> ResidencyCheck:
    """The store's region must equal `expected` (the plan's) and be one of `allowed`; an unknown region fails both."""
    region = open_store(spec).region()
    problems = []
    if expected is not None and region != expected.lower():
        problems.append(f"the plan says {expected}, its API says {region or 'no region (not a cloud bucket)'}")
    wanted = [r.lower() for r in allowed or []]
    if wanted and region not in wanted:
        problems.append(f"it is in {region or 'no region (not a cloud bucket)'}, not in {', '.join(wanted)}")
    if problems:
        return ResidencyCheck(url=spec.url, region=region, ok=False, detail=f"{spec.url}: " + "; ".join(problems))
    where = region or "no region"
    return ResidencyCheck(url=spec.url, region=region, ok=True, detail=f"{spec.url}: in {where} (from its API)")
