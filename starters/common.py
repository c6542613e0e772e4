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
