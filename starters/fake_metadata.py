"""Fake cloud metadata servers for the dev stack: each speaks its provider's real paths, headers,
tokens, status codes and long-poll, on loopback, so preemption watchers are tested against HTTP.

moto's IMDS mock always answers "no notice", so it cannot announce a preemption; these can.

| provider  | what it serves                                                                         |
|-----------|----------------------------------------------------------------------------------------|
| aws       | IMDSv2: PUT /latest/api/token (TTL header required, X-Forwarded-For refused), GETs need |
|           | the token (401 without), spot/instance-action and events/recommendations/rebalance     |
|           | (404 when none)                                                                        |
| gcp       | /computeMetadata/v1/instance/preempted (Metadata-Flavor: Google or 403), ETag,          |
|           | ?wait_for_change=true&last_etag=&timeout_sec= long-poll                                 |
| azure     | /metadata/scheduledevents?api-version= (Metadata: true or 400), DocumentIncarnation,    |
|           | Preempt events with NotBefore, POST StartRequests to acknowledge                        |
| k8s-label | GET /api/v1/nodes/{name} (Bearer token or 401), a pending-preemption label; 404 once    |
|           | the node is deleted                                                                    |

Every server has an admin API under `/-/` (never faulted):
- `POST /-/notice {"in_s": 0, "kind": ..., "lead_s": ...}` or `{"at": ISO}`: a notice becomes visible
  then; answers `{"effective_at": ISO}`. `DELETE /-/notice`: clears them.
- `PUT /-/faults {"delay_s": 0.5}` slows every answer; `{"fail_next": 25, "fail_with": "timeout"}`
  makes the next 25 provider requests hang past any client timeout (or answer 500/503, or reset).
- `DELETE /-/node` (k8s-label): the node object is deleted (later reads are 404).
- `GET /-/log`: every provider request answered: time, method, path, status, whether it carried a notice.

`python -m starters.fake_metadata --provider aws --port 8169` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROVIDERS = ("aws", "gcp", "azure", "k8s-label")


class ScheduleNotice(BaseModel):
    """Admin: when a notice becomes visible, and what it announces."""

    model_config = ConfigDict(extra="forbid")

    at: datetime | None = Field(None, description="Wall-clock time it becomes visible (UTC)")
    in_s: float = Field(0.0, ge=0, le=86400, description="Seconds from now, when `at` is not given")
    kind: str | None = Field(
        None,
        description="aws: terminate|stop|hibernate|rebalance; azure: Preempt|Terminate|Reboot|Redeploy|Freeze; "
        "others ignore it",
    )
    lead_s: float | None = Field(
        None, ge=0, le=86400, description="Time from visibility to the action (AWS 120, Azure 30 by default)"
    )


class Faults(BaseModel):
    """Admin: make provider answers slow or failing."""

    model_config = ConfigDict(extra="forbid")

    delay_s: float = Field(0.0, ge=0, le=600, description="Added before every provider answer")
    fail_next: int = Field(0, ge=0, le=1_000_000, description="How many of the next provider requests fail")
    fail_with: Literal["timeout", "500", "503", "reset"] = "timeout"
    hang_s: float = Field(10.0, ge=0, le=600, description="How long a 'timeout' holds the request before closing")


@dataclass
class Scheduled:
    effective_at: float
    kind: str | None
    lead_s: float | None
    ident: str = field(default_factory=lambda: secrets.token_hex(8))
    acknowledged: bool = False


@dataclass
class Served:
    at: float
    method: str
    path: str
    status: int
    notice: bool


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeMetadataServer(ThreadingHTTPServer):
    """One provider's metadata service. Subclasses answer provider paths through `answer`."""

    daemon_threads = True  # a hanging 'timeout' fault must never hold shutdown
    provider: ClassVar[str] = ""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.cond = threading.Condition()
        self.notices: list[Scheduled] = []
        self.faults = Faults()
        self.log: list[Served] = []
        #: (time, path) of every provider request as it arrives, before any answer (a long-poll's is late).
        self.arrived: list[tuple[float, str]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    # -- state -----------------------------------------------------------------------------------
    def schedule(self, request: ScheduleNotice) -> Scheduled:
        at = request.at.timestamp() if request.at is not None else time.time() + request.in_s
        scheduled = Scheduled(effective_at=at, kind=request.kind, lead_s=request.lead_s)
        with self.cond:
            self.notices.append(scheduled)
            self.cond.notify_all()
        self._start_waker(at)
        return scheduled

    def schedule_in(self, seconds: float, kind: str | None = None) -> float:
        """In-process form of `POST /-/notice`: a notice visible `seconds` from now; its epoch time."""
        return self.schedule(ScheduleNotice(in_s=seconds, kind=kind)).effective_at

    def _start_waker(self, at: float) -> None:
        """Long-polls wait on the condition; wake them when a scheduled notice becomes visible."""

        def wake() -> None:
            time.sleep(max(0.0, at - time.time()))
            with self.cond:
                self.cond.notify_all()

        threading.Thread(target=wake, daemon=True).start()

    def visible(self, now: float | None = None) -> list[Scheduled]:
        now = time.time() if now is None else now
        return [n for n in self.notices if n.effective_at <= now]

    def clear(self) -> None:
        with self.cond:
            self.notices.clear()
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[FakeMetadataServer], bool], timeout: float = 60.0) -> bool:
        """Block until `predicate(server)` holds, e.g. on its `log` or `arrived` (an event, not a sleep)."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def take_fault(self) -> str | None:
        with self.cond:
            if self.faults.fail_next > 0:
                self.faults = self.faults.model_copy(update={"fail_next": self.faults.fail_next - 1})
                return self.faults.fail_with
        return None

    # -- provider --------------------------------------------------------------------------------
    def answer(self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes
               ) -> tuple[int, dict[str, str], bytes, bool]:  # fmt: skip
        """(status, headers, body, carried a notice) for one provider request."""
        raise NotImplementedError

    def admin(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        return 404, {"error": f"no admin path {path}"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed
    # ACK (~40 ms), which would be the fake's latency, not the watcher's.
    disable_nagle_algorithm = True
    server: FakeMetadataServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if parts.path.startswith("/-/"):
            status, payload = self._admin(method, parts.path, body)
            self._send(status, {"Content-Type": "application/json"}, json.dumps(payload).encode())
            return
        with self.server.cond:
            self.server.arrived.append((time.time(), parts.path))
            self.server.cond.notify_all()
        fault = self.server.take_fault()
        if fault == "timeout":
            time.sleep(self.server.faults.hang_s)
            self.close_connection = True
            self._record(method, parts.path, 0, False)
            return
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
            self.close_connection = True
            self._record(method, parts.path, 0, False)
            return
        if self.server.faults.delay_s:
            time.sleep(self.server.faults.delay_s)
        if fault in ("500", "503"):
            self._record(method, parts.path, int(fault), False)
            self._send(int(fault), {"Content-Type": "text/plain"}, b"injected fault\n")
            return
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        status, headers, payload, notice = self.server.answer(method, parts.path, query, self.headers, body)
        self._record(method, parts.path, status, notice)
        self._send(status, headers, payload)

    def _record(self, method: str, path: str, status: int, notice: bool) -> None:
        with self.server.cond:
            self.server.log.append(Served(time.time(), method, path, status, notice))
            self.server.cond.notify_all()

    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        server = self.server
        try:
            if path == "/-/notice" and method == "POST":
                scheduled = server.schedule(ScheduleNotice.model_validate_json(body or b"{}"))
                return 200, {"effective_at": iso(scheduled.effective_at), "effective_epoch": scheduled.effective_at}
            if path == "/-/notice" and method == "DELETE":
                server.clear()
                return 200, {"cleared": True}
            if path == "/-/faults" and method == "PUT":
                faults = Faults.model_validate_json(body or b"{}")
                with server.cond:
                    server.faults = faults
                return 200, faults.model_dump()
            if path == "/-/log" and method == "GET":
                with server.cond:
                    return 200, [vars(s) for s in server.log]
        except ValidationError as error:
            return 400, {"error": str(error)}
        return server.admin(method, path, body)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


_TEXT = {"Content-Type": "text/plain"}
_JSON = {"Content-Type": "application/json"}
_AWS_404 = (
    b'<?xml version="1.0" encoding="iso-8859-1"?>\n<html><head><title>404 - Not Found</title></head>'
    b"<body><h1>404 - Not Found</h1></body></html>\n"
)


class AwsImds(FakeMetadataServer):
    """IMDSv2 with HttpTokens=required: every metadata GET needs a live session token."""

    provider = "aws"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.tokens: dict[str, float] = {}

    def answer(self, method, path, query, headers, body):
        if path == "/latest/api/token":
            if method != "PUT":
                return 405, _TEXT, b"", False
            if headers.get("X-Forwarded-For"):
                return 403, _TEXT, b"", False
            try:
                ttl = int(headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
            except ValueError:
                return 400, _TEXT, b"", False
            if not 1 <= ttl <= 21600:
                return 400, _TEXT, b"", False
            token = secrets.token_urlsafe(42)
            with self.cond:
                self.tokens[token] = time.time() + ttl
            return 200, {**_TEXT, "X-aws-ec2-metadata-token-ttl-seconds": str(ttl)}, token.encode(), False
        if method != "GET":
            return 405, _TEXT, b"", False
        token = headers.get("X-aws-ec2-metadata-token")
        if not token or self.tokens.get(token, 0) < time.time():
            return 401, _TEXT, b"", False
        visible = self.visible()
        if path == "/latest/meta-data/spot/instance-action":
            actions = [n for n in visible if (n.kind or "terminate") != "rebalance"]
            if not actions:
                return 404, {"Content-Type": "text/html"}, _AWS_404, False
            notice = actions[0]
            at = notice.effective_at + (120 if notice.lead_s is None else notice.lead_s)
            return 200, _TEXT, json.dumps({"action": notice.kind or "terminate", "time": iso(at)}).encode(), True
        if path == "/latest/meta-data/events/recommendations/rebalance":
            rebalances = [n for n in visible if n.kind == "rebalance"]
            if not rebalances:
                return 404, {"Content-Type": "text/html"}, _AWS_404, False
            return 200, _TEXT, json.dumps({"noticeTime": iso(rebalances[0].effective_at)}).encode(), True
        if path == "/latest/meta-data/placement/availability-zone":
            return 200, _TEXT, b"us-east-1a", False
        return 404, {"Content-Type": "text/html"}, _AWS_404, False


class GceMetadata(FakeMetadataServer):
    """The GCE metadata server's `instance/preempted`, with ETags and the wait_for_change long-poll."""

    provider = "gcp"
    PATH = "/computeMetadata/v1/instance/preempted"

    def _value(self) -> str:
        return "TRUE" if self.visible() else "FALSE"

    @staticmethod
    def _etag(value: str) -> str:
        return hashlib.sha256(value.encode()).hexdigest()[:16]

    def answer(self, method, path, query, headers, body):
        if headers.get("X-Forwarded-For"):
            return 403, _TEXT, b"", False
        if headers.get("Metadata-Flavor") != "Google":
            return 403, _TEXT, b"Missing Metadata-Flavor:Google header.\n", False
        if method != "GET":
            return 405, _TEXT, b"", False
        if path != self.PATH:
            return 404, _TEXT, b"Not Found\n", False
        if query.get("wait_for_change", "").lower() == "true":
            self._wait(query)
        value = self._value()
        headers = {"Content-Type": "application/text", "Metadata-Flavor": "Google", "ETag": self._etag(value)}
        return 200, headers, value.encode(), value == "TRUE"

    def _wait(self, query: dict[str, str]) -> None:
        """Hold until the value's ETag differs from last_etag (or, without one, until it changes), or timeout_sec."""
        try:
            timeout = float(query.get("timeout_sec", "") or 3600)
        except ValueError:
            timeout = 3600
        until = time.time() + timeout
        with self.cond:
            last = query.get("last_etag") or self._etag(self._value())
            while self._etag(self._value()) == last and (remaining := until - time.time()) > 0:
                self.cond.wait(timeout=min(remaining, 1.0))


class AzureScheduledEvents(FakeMetadataServer):
    """Azure IMDS Scheduled Events: Preempt (and other) events, NotBefore, acknowledgement by EventId."""

    provider = "azure"
    PATH = "/metadata/scheduledevents"
    VERSIONS = ("2017-11-01", "2019-01-01", "2019-08-01", "2020-07-01")

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.incarnation = 1
        self.acknowledged: list[str] = []

    def schedule(self, request: ScheduleNotice) -> Scheduled:
        scheduled = super().schedule(request)
        with self.cond:
            self.incarnation += 1
        return scheduled

    def answer(self, method, path, query, headers, body):
        if headers.get("X-Forwarded-For"):
            return 400, _JSON, b'{"error": "Bad request. X-Forwarded-For header is not allowed"}', False
        if headers.get("Metadata", "").lower() != "true":
            return 400, _JSON, b'{"error": "Bad request. Required metadata header not specified"}', False
        if path != self.PATH:
            return 404, _JSON, b'{"error": "Not found"}', False
        if query.get("api-version") not in self.VERSIONS:
            return 400, _JSON, b'{"error": "Bad request. api-version is missing or not supported"}', False
        if method == "POST":
            return self._acknowledge(body)
        events = [self._event(n) for n in self.visible()]
        document = {"DocumentIncarnation": self.incarnation, "Events": events}
        return 200, _JSON, json.dumps(document).encode(), bool(events)

    def _event(self, notice: Scheduled) -> dict[str, Any]:
        kind = notice.kind or "Preempt"
        not_before = datetime.fromtimestamp(notice.effective_at, UTC) + timedelta(
            seconds=30 if notice.lead_s is None else notice.lead_s
        )
        return {
            "EventId": notice.ident,
            "EventType": kind,
            "ResourceType": "VirtualMachine",
            "Resources": ["skyshift-fake-vm"],
            "EventStatus": "Started" if notice.acknowledged else "Scheduled",
            "NotBefore": "" if notice.acknowledged else format_datetime(not_before, usegmt=True),
            "Description": f"Virtual machine is being {'evicted' if kind == 'Preempt' else 'maintained'}.",
            "EventSource": "Platform",
            "DurationInSeconds": -1 if kind in ("Preempt", "Terminate") else 10,
        }

    def _acknowledge(self, body: bytes):
        try:
            ids = [r["EventId"] for r in json.loads(body)["StartRequests"]]
        except (ValueError, KeyError, TypeError):
            return 400, _JSON, b'{"error": "Bad request. StartRequests with EventId expected"}', False
        with self.cond:
            known = {n.ident: n for n in self.notices}
            if any(i not in known for i in ids):
                return 400, _JSON, b'{"error": "Bad request. Unknown EventId"}', False
            for i in ids:
                known[i].acknowledged = True
                self.acknowledged.append(i)
            self.incarnation += 1
        return 200, _JSON, b"", False


class KubeApiNode(FakeMetadataServer):
    """The slice of a Kubernetes API server a node-label watcher reads: one Node object."""

    provider = "k8s-label"
    LABEL = "qos.coreweave.cloud/pending-preemption"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, node: str = "gpu-node-1", token: str | None = None):
        super().__init__(host, port)
        self.node = node
        self.token = token or secrets.token_urlsafe(24)
        self.deleted = False

    def _status(self, code: int, reason: str, message: str) -> tuple[int, dict[str, str], bytes, bool]:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "code": code}  # fmt: skip
        return code, _JSON, json.dumps(body).encode(), False

    def answer(self, method, path, query, headers, body):
        if headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        if method != "GET":
            return self._status(405, "MethodNotAllowed", "only GET is served here")
        name = path.removeprefix("/api/v1/nodes/")
        if not path.startswith("/api/v1/nodes/") or name != self.node or self.deleted:
            return self._status(404, "NotFound", f'nodes "{name}" not found')
        visible = self.visible()
        labels = {"kubernetes.io/hostname": self.node, "node.kubernetes.io/instance-type": "gd-8xh100ib-i128"}
        if visible:
            labels[self.LABEL] = "true"
        node = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {"name": self.node, "labels": labels, "resourceVersion": str(1000 + len(visible))},
            "spec": {"unschedulable": True} if visible else {},
        }
        return 200, _JSON, json.dumps(node).encode(), bool(visible)

    def admin(self, method, path, body):
        if path == "/-/node" and method == "DELETE":
            self.deleted = True
            return 200, {"deleted": self.node}
        return super().admin(method, path, body)


SERVERS: dict[str, type[FakeMetadataServer]] = {
    "aws": AwsImds,
    "gcp": GceMetadata,
    "azure": AzureScheduledEvents,
    "k8s-label": KubeApiNode,
}


def start(provider: str, host: str = "127.0.0.1", port: int = 0) -> FakeMetadataServer:
    """Start one provider's fake on a background thread; `server.shutdown(); server.server_close()` stops it."""
    server = SERVERS[provider](host, port)
    # A short poll interval: shutdown() returns within 50 ms instead of serve_forever's default 0.5 s.
    threading.Thread(target=server.serve_forever, args=(0.05,), name=f"fake-metadata-{provider}", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=PROVIDERS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-file", help="k8s-label: write the bearer token the server accepts here (mode 600)")
    args = parser.parse_args(argv)
    server = SERVERS[args.provider](args.host, args.port)
    extra = ""
    if isinstance(server, KubeApiNode):
        if args.token_file:
            with open(os.open(args.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as sink:
                sink.write(server.token)
        extra = f" (node {server.node}; token in {args.token_file or 'nowhere: pass --token-file'})"
    print(f"{args.provider} metadata on {server.url}{extra}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
