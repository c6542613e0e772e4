"""`skyshift failback ID`: the way back after "done", while the migration's failback window is open.

`--reason TEXT` sends all traffic back to the source at once (then the newest target data, the
plan's `decommission.reverse_sync` paths, follows it) and ends the migration `failed_back`; the target
keeps its copies. `--drill` rehearses: it checks that the router answers, that the source endpoints
still serve and that the reverse sync is within its interval, and moves nothing. Before completion
the way back is `skyshift rollback`; after the window the source may be gone, and the command says
when the window closed.
"""

from __future__ import annotations

import argparse
import os

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError

from skyshift.runtime import rpc_timeout
from starters.common import EXIT_FAILED, EXIT_OK, UsageError, emit, with_client
from workflows.state import FailbackInput, MigrationState

#: A failback answers once traffic is back, a drill once its checks ran: more than a status query's wait.
ANSWER_FACTOR = 4


async def request_failback(client: Client, workflow_id: str, request: FailbackInput) -> str:
    """Send the `failback` update; a closed window or a migration not yet there is a UsageError naming why."""
    from starters.operate import _bounded, handle_for

    handle = handle_for(client, workflow_id)
    description = await handle.describe(rpc_timeout=rpc_timeout())
    if description.status != WorkflowExecutionStatus.RUNNING:
        why = description.status.name.lower()
        if description.status == WorkflowExecutionStatus.COMPLETED:
            state: MigrationState = await handle.result(rpc_timeout=rpc_timeout())
            closes = state.failback.closes_at
            if closes is not None:
                raise UsageError(f"{workflow_id}: the failback window closed at {closes:%Y-%m-%d %H:%M} UTC "
                                 f"({state.outcome}; closed by {state.failback.closed_by or 'timer'}): there is no "
                                 f"way back through skyshift any more")  # fmt: skip
            why = f"{state.outcome}: {state.outcome_reason}"
        raise UsageError(f"{workflow_id} has already finished ({why}); it had no failback window open")
    timeout = rpc_timeout() * ANSWER_FACTOR
    try:
        return await _bounded(
            f"failback {workflow_id}",
            handle.execute_update("failback", request, result_type=str, rpc_timeout=timeout),
        )
    except WorkflowUpdateFailedError as error:
        raise UsageError(
            f"failback of {workflow_id} refused: {getattr(error.cause, 'message', None) or error}"
        ) from None


@with_client
async def cmd_failback(args: argparse.Namespace, client: Client) -> int:
    if not args.drill and not (args.reason or "").strip():
        raise UsageError("--reason: say why traffic goes back to the source (or rehearse with --drill)")
    answer = await request_failback(client, args.id, FailbackInput(reason=args.reason or "", by=args.by,
                                                                   drill=args.drill))  # fmt: skip
    passed = not args.drill or answer.startswith("drill pass")
    emit(args, {"id": args.id, "drill": args.drill, "answer": answer, "passed": passed},
         f"{args.id}: {answer}" + ("" if args.drill else f"\n  follow it with: skyshift watch {args.id}"))  # fmt: skip
    return EXIT_OK if passed else EXIT_FAILED


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "failback",
        help="in the failback window after completion: send traffic back to the source, or --drill to rehearse",
        description=__doc__.split("\n\n")[1].replace("%", "%%"),
    )
    p.set_defaults(handler=cmd_failback)
    p.add_argument("id", help="the migration's workflow id (`skyshift list` shows them)")
    p.add_argument("--reason", help="why traffic goes back (audited); required unless --drill")
    p.add_argument("--drill", action="store_true", help="rehearse: check the way back works, move nothing")
    p.add_argument("--by", default=os.environ.get("USER", "operator"), help="who is acting, for the audit log")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
