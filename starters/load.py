"""A bounded load generator: steady requests through the router, counting every failure.

Besides outcomes and the backend the router names, it counts which deployment actually answered
(`served_by` in the body) and every answer carrying skyshift's shadow marker: a mirrored copy's
answer must never reach a client.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from urllib.parse import urlsplit


class LoadGenerator:
    """`threads` clients sharing a request rate; stops by itself after `max_seconds` (or `max_requests`)."""

    def __init__(
        self,
        url: str,
        rate: float,
        threads: int = 8,
        max_seconds: float = 600,
        bodies: list[bytes] | None = None,
        max_requests: int | None = None,
    ) -> None:
        self.url = urlsplit(url)
        self.interval = threads / rate
        self.threads_count = threads
        self.max_seconds = max_seconds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()  # sent, served_by_<env>, shadow_marked
        self.threads: list[threading.Thread] = []
        self.bodies = bodies or [json.dumps({"inputs": [[0.1 * i for i in range(16)]]}).encode()]
        self.sequence = 0
        self.max_requests = max_requests

    def _client(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
        next_at = time.monotonic()
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            with self.lock:
                if self.max_requests is not None and self.sequence >= self.max_requests:
                    break
                body = self.bodies[self.sequence % len(self.bodies)]
                self.sequence += 1
                self.answers["sent"] += 1
            answer: list[str] = []
            try:
                connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                outcome = "ok" if response.status < 400 else f"http_{response.status}"
                backend = response.getheader("X-Skyshift-Backend", "?")
                answer = self._answered_by(response, payload)
            except (OSError, http.client.HTTPException) as error:
                outcome, backend = f"error_{type(error).__name__}", "?"
                connection.close()
                connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
            with self.lock:
                self.counts[outcome] += 1
                self.counts[f"backend_{backend}"] += 1
                self.answers.update(answer)
            next_at += self.interval
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        connection.close()

    @staticmethod
    def _answered_by(response: http.client.HTTPResponse, payload: bytes) -> list[str]:
        found = ["shadow_marked"] if response.getheader("X-Skyshift-Shadow") else []
        try:
            served_by = json.loads(payload).get("served_by")
        except (ValueError, AttributeError):
            served_by = None
        return [*found, f"served_by_{served_by}"] if served_by else found

    def start(self) -> LoadGenerator:
        for index in range(self.threads_count):
            thread = threading.Thread(target=self._client, name=f"load-{index}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def wait(self) -> dict[str, int]:
        """Block until every client has finished by itself (max_requests or max_seconds reached)."""
        for thread in self.threads:
            thread.join()
        with self.lock:
            return dict(self.counts)

    def stop(self) -> dict[str, int]:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=15)
        with self.lock:
            return dict(self.counts)

    def answered(self) -> dict[str, int]:
        """Requests sent, answers per deployment that produced them, answers marked as shadow traffic."""
        with self.lock:
            return dict(self.answers)

    @property
    def failures(self) -> int:
        with self.lock:
            return sum(n for k, n in self.counts.items() if not k.startswith(("ok", "backend_")))
