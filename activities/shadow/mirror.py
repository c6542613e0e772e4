"""Live-traffic mirroring: the router's admin API for it, as models and a small client.

The router (`workers/router.py`) copies a share of live requests to both deployments *after* the
client has its answer, marks them with `X-Skyshift-Shadow: mirror`, and keeps the three answers
(the live one is the source's first) in a bounded buffer; the shadow runner reads them here.
Mirror settings are not persisted: a restarted router does not mirror until told to again.
"""

from __future__ import annotations

import urllib.parse
import urllib.request

from pydantic import BaseModel, Field

from skyshift.spec.shadow import ARMS


class MirrorSettings(BaseModel):
    percent: float = Field(0, ge=0, le=100, description="Share of eligible live requests mirrored")
    path: str = Field("/v1/predict", pattern=r"^/", description="Only POSTs to this path are mirrored")
    reset: bool = Field(False, description="Forget collected exchanges and zero the counters first")


class MirrorCounters(BaseModel):
    eligible: int = Field(0, description="Live POSTs to the path answered by the source")
    mirrored: int = Field(0, description="Copied to both deployments")
    dropped: int = Field(0, description="Not copied: the mirror pool was full (the client never waits for it)")
    completed: int = Field(0, description="Mirror copies whose two answers are in")
    source_failed: int = 0
    target_failed: int = 0
    collected: int = Field(0, description="Exchanges currently held for the shadow runner")


class MirrorStatus(BaseModel):
    settings: MirrorSettings
    counters: MirrorCounters


class ArmReply(BaseModel):
    """One arm's answer to one request: status None when no HTTP answer came (refused, timed out)."""

    status: int | None = None
    latency_ms: float = 0.0
    body: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Exchange(BaseModel):
    """One request and the three arms' answers; kept in memory only, never in workflow history."""

    id: str
    origin: str = Field(description="sample (from the requests file) or mirror (live traffic)")
    arms: dict[str, ArmReply] = Field(description=f"by arm: {', '.join(ARMS)}")


class ExchangePage(BaseModel):
    exchanges: list[Exchange]
    next_after: int = Field(description="Pass as `after` to read the following page")


class MirrorClient:
    """Client of the router's `/-/mirror` admin API."""

    def __init__(self, admin_url: str, timeout: float = 5.0) -> None:
        self.base = admin_url.rstrip("/")
        self.timeout = timeout

    def _call(self, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(
            f"{self.base}{path}", data=body, method="PUT" if body is not None else "GET",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read()

    def configure(self, settings: MirrorSettings) -> MirrorStatus:
        return MirrorStatus.model_validate_json(self._call("/-/mirror", settings.model_dump_json().encode()))

    def status(self) -> MirrorStatus:
        return MirrorStatus.model_validate_json(self._call("/-/mirror"))

    def exchanges(self, after: int = 0, limit: int = 200) -> ExchangePage:
        query = urllib.parse.urlencode({"after": after, "limit": limit})
        return ExchangePage.model_validate_json(self._call(f"/-/mirror/exchanges?{query}"))

    def all_exchanges(self, limit: int) -> list[Exchange]:
        found: list[Exchange] = []
        after = 0
        while len(found) < limit:
            page = self.exchanges(after, min(200, limit - len(found)))
            if not page.exchanges:
                break
            found += page.exchanges
            after = page.next_after
        return found
