"""What every `skyshift` command shares: exit codes, the invalid-input error and JSON-or-text output.

Command modules (`starters/cmd_*.py`) import from here, never from `starters.cli`, so the parser can
import them without a cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from skyshift.runtime import connect, temporal_address

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class UsageError(Exception):
    """Invalid input: exit 2."""


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """`--json`: exactly one JSON object on stdout; otherwise the human-readable text."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=str))
    else:
        print(text)


def fail(args: argparse.Namespace, code: int, message: str, prefix: str = "skyshift: ") -> int:
    """Report an error and return its exit code: with `--json`, as the one JSON object on stdout.

    A script that asked for JSON parses stdout; an error it cannot parse would look like success
    with garbage. The message goes to stderr as well, where logs and people look for errors.
    """
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": code}))
    print(f"{prefix}{message}", file=sys.stderr)
    return code


async def ensure_readable_history(client: Client, workflow_id: str) -> None:
    """Refuse (EncryptedHistoryError, exit 2) to touch a workflow whose history this process cannot read.

    A process without the key would otherwise write plaintext (a sync's start request, an approval's
    note) into a history the operator encrypted, or hang while its worker fails every task. Its start
    event's input tells: decoding it raises when it is encrypted under a key we do not hold. No history
    (a new id) is fine.
    """
    handle = client.get_workflow_handle(workflow_id)
    try:
        async for event in handle.fetch_history_events():
            started = event.workflow_execution_started_event_attributes
            await client.data_converter.decode(list(started.input.payloads))
            return
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise


async def _client() -> Client:
    try:
        return await connect()
    except RuntimeError as error:
        raise ConnectionError(
            f"cannot reach Temporal at {temporal_address()}: {error}. Run `skyshift dev up` or set TEMPORAL_ADDRESS."
        ) from None


def with_client(command: Callable[[argparse.Namespace, Client], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def go() -> int:
            return await command(args, await _client())

        return asyncio.run(go())

    return run
