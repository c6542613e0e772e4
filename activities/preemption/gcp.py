"""GCP preemption (spot and preemptible VMs) through the metadata server's `instance/preempted`.

Every request carries `Metadata-Flavor: Google` (the server refuses it otherwise with 403). The value
is `TRUE` or `FALSE`; the server sends an `ETag` with it, and `?wait_for_change=true&last_etag=E`
holds the request until the value's ETag differs from E (or `timeout_sec` passes, answering the
unchanged value). So the watcher learns of a preemption as it happens instead of at the next poll.
GCP gives 30 seconds between the notice and the stop; the notice's deadline is that documented
budget, marked as such in its detail. The address variable is google-auth's `GCE_METADATA_HOST`.
"""

from __future__ import annotations

from datetime import timedelta

from activities.preemption.base import Notice, UnreadableAnswer, Watcher, utcnow

PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
FLAVOR_HEADER = {"Metadata-Flavor": "Google"}
#: What GCP documents between the preemption notice and the instance's stop.
NOTICE_BUDGET = timedelta(seconds=30)


class GcpWatcher(Watcher):
    provider = "gcp"
    address_variable = "GCE_METADATA_HOST"
    default_address = "http://metadata.google.internal"
    #: The long-poll's timeout_sec: how long one look may wait for a change.
    default_poll_interval_s = 60.0

    def __init__(self, config) -> None:
        super().__init__(config)
        self.etag: str | None = None

    @property
    def waits_itself(self) -> bool:
        return True

    def look(self) -> list[Notice]:
        params: dict[str, str] = {}
        timeout = self.config.request_timeout_s
        if self.etag is not None:  # the first look reads the value now; later ones wait for a change
            wait = max(1, round(self.poll_interval_s))
            params = {"wait_for_change": "true", "last_etag": self.etag, "timeout_sec": str(wait)}
            timeout += wait
        url = self.address + PREEMPTED_PATH
        response = self.session.get(url, headers=FLAVOR_HEADER, params=params, timeout=timeout)
        if response.status_code != 200:
            raise UnreadableAnswer(f"{PREEMPTED_PATH}: HTTP {response.status_code}")
        if response.headers.get("Metadata-Flavor") != "Google":
            raise UnreadableAnswer(f"{PREEMPTED_PATH}: answer lacks Metadata-Flavor: Google")
        value = response.text.strip()
        if value not in ("TRUE", "FALSE"):
            raise UnreadableAnswer(f"{PREEMPTED_PATH}: unexpected answer {value[:60]!r}")
        self.etag = response.headers.get("ETag") or self.etag
        if value == "FALSE":
            return []
        seen = utcnow()
        detail = {"preempted": value, "etag": self.etag, "deadline_from": "GCP's documented 30 s notice"}
        return [Notice(provider="gcp", kind="preempt", deadline=seen + NOTICE_BUDGET, seen_at=seen,
                       key="gcp:preempted", detail=detail)]  # fmt: skip
