"""Azure Scheduled Events: `Preempt` (spot eviction) and the platform's other planned events.

GET `/metadata/scheduledevents?api-version=2020-07-01` with the header `Metadata: true` (refused with
400 otherwise) answers `{"DocumentIncarnation": n, "Events": [...]}`; each event has `EventId`,
`EventType` (Preempt, Terminate, Reboot, Redeploy, Freeze), `EventStatus` (Scheduled, Started),
`NotBefore` (RFC 1123, the earliest time it starts; at least 30 s ahead for Preempt) and `Resources`.
POSTing `{"StartRequests": [{"EventId": ...}]}` to the same URL acknowledges an event so it may start
early (once the checkpoint is safe). There is no standard address variable; the default is the
link-local metadata address.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from activities.preemption.base import Notice, NoticeKind, UnreadableAnswer, Watcher, utcnow

EVENTS_PATH = "/metadata/scheduledevents"
API_VERSION = "2020-07-01"
METADATA_HEADER = {"Metadata": "true"}
#: How each event type reads to skyshift; unknown types are maintenance (reported, acted on by policy).
KINDS: dict[str, NoticeKind] = {
    "Preempt": "preempt",
    "Terminate": "preempt",
    "Reboot": "maintenance",
    "Redeploy": "maintenance",
    "Freeze": "maintenance",
}
_URGENCY = {"preempt": 0, "maintenance": 1, "rebalance": 2}


class AzureWatcher(Watcher):
    provider = "azure"
    address_variable = None
    default_address = "http://169.254.169.254"
    default_poll_interval_s = 1.0

    def look(self) -> list[Notice]:
        response = self.session.get(
            self.address + EVENTS_PATH,
            params={"api-version": API_VERSION},
            headers=METADATA_HEADER,
            timeout=self.config.request_timeout_s,
        )
        if response.status_code != 200:
            raise UnreadableAnswer(f"{EVENTS_PATH}: HTTP {response.status_code}")
        try:
            document = response.json()
            events = document["Events"]
            incarnation = document.get("DocumentIncarnation")
        except (ValueError, KeyError, TypeError) as error:
            raise UnreadableAnswer(f"{EVENTS_PATH}: not a Scheduled Events document ({error})") from None
        seen = utcnow()
        notices = []
        for event in events:
            if not isinstance(event, dict) or not event.get("EventId"):
                raise UnreadableAnswer(f"{EVENTS_PATH}: an event without EventId: {str(event)[:120]!r}")
            not_before = event.get("NotBefore") or None
            try:
                deadline = parsedate_to_datetime(not_before) if not_before else None
            except (TypeError, ValueError):
                raise UnreadableAnswer(f"{EVENTS_PATH}: NotBefore {not_before!r} is not an RFC 1123 date") from None
            kind = KINDS.get(str(event.get("EventType")), "maintenance")
            detail = {**event, "DocumentIncarnation": incarnation}
            notices.append(Notice(provider="azure", kind=kind, deadline=deadline, seen_at=seen,
                                  key=f"azure:{event['EventId']}", detail=detail))  # fmt: skip
        return sorted(notices, key=lambda n: _URGENCY[n.kind])

    def acknowledge(self, notice: Notice) -> bool:
        event_id = notice.key.removeprefix("azure:")
        response = self.session.post(
            self.address + EVENTS_PATH,
            params={"api-version": API_VERSION},
            headers=METADATA_HEADER,
            json={"StartRequests": [{"EventId": event_id}]},
            timeout=self.config.request_timeout_s,
        )
        if response.status_code != 200:
            raise UnreadableAnswer(f"acknowledging {event_id}: HTTP {response.status_code}")
        return True
