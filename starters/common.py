"""What every `skyshift` command shares: exit codes, the invalid-input error and JSON-or-text output.

Command modules (`starters/cmd_*.py`) import from here, never from `starters.cli`, so the parser can
import them without a cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

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


def exit_process(code: int) -> NoReturn:
    """End the CLI process with `code` once its work is done, without interpreter finalization.

    The Temporal client's Rust core keeps Tokio threads that take the GIL from outside Python; one that
    wakes while the interpreter finalizes aborts the process ("Fatal Python error: PyGILState_Release
    ... finalizing", exit 134) after the command already succeeded (temporalio/sdk-python#300, open;
    the SDK has no way to stop that runtime). So everything Python owns is shut down here, in order —
    exit handlers (the fingerprint pool's processes), logging, stdout and stderr — and the process ends
    with `os._exit`, before any such thread can touch a finalizing interpreter.
    """
    code = code if isinstance(code, int) else EXIT_FAILED
    try:
        atexit._run_exitfuncs()  # what a normal exit would run; os._exit skips it (CPython, no public twin)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BrokenPipeError, ValueError):  # a reader that went away, or a closed stream
                stream.flush()
    finally:
        os._exit(code)
