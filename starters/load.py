"""A bounded load generator: steady requests through the router, counting every failure."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from urllib.parse import urlsplit


class LoadGenerator:
    """`threads` clients sharing a request rate; stops by itself after `max_seconds`."""

    def __init__(self, url: str, rate: float, threads: int = 8, max_seconds: float = 600) -> None:
        self.url = urlsplit(url)
        self.interval = threads / rate
        self.threads_count = threads
        self.max_seconds = max_seconds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.threads: list[threading.Thread] = []
        self.body = json.dumps({"inputs": [[0.1 * i for i in range(16)]]}).encode()

    def _client(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
        next_at = time.monotonic()
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                connection.request("POST", "/v1/predict", body=self.body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                outcome = "ok" if response.status < 400 else f"http_{response.status}"
                backend = response.getheader("X-Skyshift-Backend", "?")
            except (OSError, http.client.HTTPException) as error:
                outcome, backend = f"error_{type(error).__name__}", "?"
                connection.close()
                connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
            with self.lock:
                self.counts[outcome] += 1
                self.counts[f"backend_{backend}"] += 1
            next_at += self.interval
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        connection.close()

    def start(self) -> LoadGenerator:
        for index in range(self.threads_count):
            thread = threading.Thread(target=self._client, name=f"load-{index}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> dict[str, int]:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=15)
        with self.lock:
            return dict(self.counts)

    @property
    def failures(self) -> int:
        with self.lock:
            return sum(n for k, n in self.counts.items() if not k.startswith(("ok", "backend_")))
