"""Waiting through a Temporal server that went away: bounded, stated retries for long CLI waits.

The client's own retries cover a few seconds; a server restart (a deploy, a crashed dev server) takes
longer, and a CLI waiting on a sync or a migration must not end while the work goes on without it.
`patiently` retries a call whose failure means "the server is unreachable" with backoff for up to
`SKYSHIFT_SERVER_WAIT` seconds (default 300), saying so on stderr once per outage; any other error
passes at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.service import RPCError, RPCStatusCode

from skyshift.runtime import temporal_address

T = TypeVar("T")

#: How long a CLI waits for an unreachable server by default, in seconds.
DEFAULT_SERVER_WAIT_S = 300.0
#: Backoff between attempts: doubling from the first to the last, in seconds.
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 5.0


def server_wait_s() -> float:
    return float(os.environ.get("SKYSHIFT_SERVER_WAIT") or DEFAULT_SERVER_WAIT_S)


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the server could not be reached (as opposed to an answer that refused us)."""
    if isinstance(error, ConnectionError):
        return True
    if not isinstance(error, RPCError):
        return False
    if error.status == RPCStatusCode.UNAVAILABLE:
        return True
    text = (error.message or "").lower()
    return any(sign in text for sign in ("tcp connect error", "transport error", "connection refused", "broken pipe"))


class Outage:
    """One period of an unreachable server while `what` goes on: stated once, bounded, backed off."""

    def __init__(self, what: str, wait_s: float | None = None) -> None:
        self.what, self.wait_s = what, server_wait_s() if wait_s is None else wait_s
        self.since: float | None = None
        self.delay = FIRST_DELAY_S

    async def retry_after(self, error: BaseException) -> None:
        """Back off before the next attempt; raise `error` at once unless the server is unreachable, and a
        ConnectionError once the outage has lasted `wait_s`."""
        if not unreachable(error):
            raise error
        now = time.monotonic()
        if self.since is None:
            self.since = now
            print(f"skyshift: Temporal at {temporal_address()} is unreachable while {self.what} "
                  f"({getattr(error, 'message', error)}); retrying for up to {self.wait_s:.0f} s "
                  "(SKYSHIFT_SERVER_WAIT)", file=sys.stderr, flush=True)  # fmt: skip
        elif now - self.since > self.wait_s:
            raise ConnectionError(f"Temporal at {temporal_address()} stayed unreachable for {self.wait_s:.0f} s "
                                  f"while {self.what}; the work goes on without this process: run the same "
                                  "command again to follow it") from error  # fmt: skip
        await asyncio.sleep(self.delay)
        self.delay = min(MAX_DELAY_S, self.delay * 2)

    def over(self) -> None:
        """The server answered: say so if it had not, and start afresh."""
        if self.since is not None:
            print(f"skyshift: Temporal at {temporal_address()} answers again", file=sys.stderr, flush=True)
        self.since, self.delay = None, FIRST_DELAY_S


async def patiently(call: Callable[[], Awaitable[T]], what: str, wait_s: float | None = None) -> T:
    """`await call()`, retried while the server is unreachable, for at most `wait_s` seconds of outage."""
    outage = Outage(what, wait_s)
    while True:
        try:
            result = await call()
        except Exception as error:
            await outage.retry_after(error)
            continue
        outage.over()
        return result
