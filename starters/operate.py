"""Operator actions against a running Temporal: each takes a client, so tests pass their own.

The workflow is addressed by *name* (`"MigrationWorkflow"`, `"status"`, `"approve"`) with the message
models from `workflows.state`, never through the workflow class: importing `workflows.migration` pulls
in every activity module (and torch with them), which a command that only talks to Temporal must not
pay for at start-up. Every query and update is bounded by `rpc_timeout()`, so a migration whose workers
are down is reported, not waited on forever.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from skyshift.runtime import rpc_timeout
from starters.common import ensure_readable_history
from workflows.plan import CONTROL_TASK_QUEUE, MigrationPlan
from workflows.state import (
    SA_OUTCOME,
    SA_PHASE,
    SA_TRAFFIC,
    SA_VERDICT,
    ApproveInput,
    MigrationInput,
    MigrationState,
    OperatorInput,
    RollbackInput,
)

WORKFLOW = "MigrationWorkflow"


class NoWorkerAnswered(ConnectionError):
    """A query or update timed out: no worker of the control queue picked it up in time."""


class AlreadyClosed(ValueError):
    """An operator message to a migration that has finished: nothing will act on it."""


def migration_id(plan: MigrationPlan) -> str:
    return f"{plan.name}-{secrets.token_hex(3)}"


async def start_migration(client: Client, plan: MigrationPlan, workflow_id: str | None = None) -> WorkflowHandle:
    """Start; an id already used (running or closed) raises `WorkflowAlreadyStartedError`.

    A migration id names one audit trail forever, so ids are never reused. The search attributes
    start at phase `pending`, 0% traffic: a list filter sees a migration before its first task runs.
    """
    stages = " → ".join(f"{s.percent}%" for s in plan.cutover.stages)
    return await client.start_workflow(
        WORKFLOW,
        MigrationInput(plan=plan),
        id=workflow_id or migration_id(plan),
        task_queue=CONTROL_TASK_QUEUE,
        result_type=MigrationState,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(SA_PHASE, "pending"), SearchAttributePair(SA_TRAFFIC, 0)]
        ),
        static_summary=f"migrate {plan.name}: {plan.source} → {plan.target}",
        static_details=(
            f"**{plan.name}**\n\nsource: {plan.source} ({plan.source_env.storage.url})\n\n"
            f"target: {plan.target} ({plan.target_env.storage.url})\n\n"
            f"workloads: {len(plan.workloads.datasets)} datasets, {len(plan.workloads.checkpoints)} checkpoints, "
            f"{len(plan.workloads.endpoints)} endpoints\n\ncutover: {stages}\n\n"
            f"egress budget: ${plan.egress_budget_usd:,.2f}"
        ),
    )


def handle_for(client: Client, workflow_id: str) -> WorkflowHandle:
    return client.get_workflow_handle(workflow_id, result_type=MigrationState)


async def _bounded(what: str, call):
    """Run a query/update; a deadline means no worker answered, which the operator must hear as such."""
    try:
        return await call
    except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as error:
        if isinstance(error, RPCError) and error.status not in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.CANCELLED,
        ):
            raise
        raise NoWorkerAnswered(
            f"{what}: no worker answered within {rpc_timeout().total_seconds():g}s: is "
            "`skyshift worker --control` running against this server? (SKYSHIFT_RPC_TIMEOUT sets the wait)"
        ) from None


async def get_status(client: Client, workflow_id: str) -> MigrationState:
    """The migration's state: its result once completed (no worker needed), else the `status` query."""
    await ensure_readable_history(client, workflow_id)
    handle = handle_for(client, workflow_id)
    description = await handle.describe(rpc_timeout=rpc_timeout())
    if description.status == WorkflowExecutionStatus.COMPLETED:
        return await handle.result(rpc_timeout=rpc_timeout())
    return await _bounded(
        f"status of {workflow_id}",
        handle.query("status", result_type=MigrationState, rpc_timeout=rpc_timeout()),
    )


async def approve(client: Client, workflow_id: str, stage: str, by: str, note: str) -> str:
    await ensure_readable_history(client, workflow_id)  # an approval's note must not land in plaintext
    handle = client.get_workflow_handle(workflow_id)
    return await _bounded(
        f"approve {stage} on {workflow_id}",
        handle.execute_update(
            "approve", ApproveInput(stage=stage, by=by, note=note), result_type=str, rpc_timeout=rpc_timeout()
        ),
    )


def _unknown_update(error: WorkflowUpdateFailedError) -> bool:
    message = str(getattr(error.cause, "message", "") or error.cause or "")
    return "not found" in message and "update" in message.lower()


async def rollback(client: Client, workflow_id: str, reason: str, by: str) -> str:
    """Ask for a rollback; return "accepted" or "signalled".

    Through the `request_rollback` update when the worker has it: its validator rejects a rollback the
    workflow would ignore (finished, or past the point of no return), which surfaces here as
    `WorkflowUpdateFailedError`. Workers that predate the update get the `rollback` signal, whose
    fate the caller learns only from the audit log.
    """
    await ensure_readable_history(client, workflow_id)
    handle = client.get_workflow_handle(workflow_id)
    description = await handle.describe(rpc_timeout=rpc_timeout())
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise AlreadyClosed(f"{workflow_id} has already finished ({description.status.name.lower()})")
    request = RollbackInput(reason=reason, by=by)
    try:
        await _bounded(
            f"rollback {workflow_id}",
            handle.execute_update("request_rollback", request, result_type=str, rpc_timeout=rpc_timeout()),
        )
        return "accepted"
    except WorkflowUpdateFailedError as error:
        if not _unknown_update(error):
            raise
    await handle.signal("rollback", request, rpc_timeout=rpc_timeout())
    return "signalled"


async def pause(client: Client, workflow_id: str, by: str, note: str, resume: bool = False) -> None:
    await ensure_readable_history(client, workflow_id)
    await client.get_workflow_handle(workflow_id).signal(
        "resume" if resume else "pause", OperatorInput(by=by, note=note), rpc_timeout=rpc_timeout()
    )


async def stage_action(client: Client, workflow_id: str, action: str, by: str, note: str) -> str:
    """`skip_stage` or `promote`: validated by the workflow, rejected if not in cutover."""
    if action not in ("skip_stage", "promote"):
        raise ValueError(f"unknown stage action {action!r}")
    await ensure_readable_history(client, workflow_id)
    handle = client.get_workflow_handle(workflow_id)
    return await _bounded(
        f"{action} on {workflow_id}",
        handle.execute_update(action, OperatorInput(by=by, note=note), result_type=str, rpc_timeout=rpc_timeout()),
    )


async def list_migrations(client: Client, limit: int = 50, query: str | None = None) -> list[dict]:
    """Recent migrations with their search attributes; `query` narrows (e.g. `SkyshiftPhase="cutover"`)."""
    rows = []
    filters = f'WorkflowType="{WORKFLOW}"' + (f" AND ({query})" if query else "")
    async for execution in client.list_workflows(filters, limit=limit):
        attributes = execution.typed_search_attributes
        rows.append(
            {
                "id": execution.id,
                "status": execution.status.name if execution.status else "UNKNOWN",
                "started": execution.start_time.isoformat() if execution.start_time else None,
                "phase": attributes.get(SA_PHASE),
                "traffic_percent": attributes.get(SA_TRAFFIC),
                "verdict": attributes.get(SA_VERDICT),
                "outcome": attributes.get(SA_OUTCOME),
            }
        )
    return rows


async def is_closed(client: Client, workflow_id: str) -> bool:
    description = await client.get_workflow_handle(workflow_id).describe(rpc_timeout=rpc_timeout())
    return description.status != WorkflowExecutionStatus.RUNNING


async def follow(
    client: Client,
    workflow_id: str,
    on_change: Callable[[MigrationState, MigrationState | None], None],
    interval: float = 1.0,
    on_tick: Callable[[MigrationState], object] | None = None,
    until: Callable[[MigrationState], bool] | None = None,
) -> MigrationState:
    """Poll `status` until the workflow closes (or `until(state)`), calling `on_change` whenever the state moved.

    `skyshift watch` follows the history instead (starters.cmd_watch); this loop serves callers that
    act on every tick, like the demo's auto-approver.
    """
    previous: MigrationState | None = None
    while True:
        state = await get_status(client, workflow_id)
        if previous is None or state.model_dump() != previous.model_dump():
            on_change(state, previous)
        if on_tick is not None:
            result = on_tick(state)
            if asyncio.iscoroutine(result):
                await result
        if state.outcome is not None and await is_closed(client, workflow_id):
            return state
        if until is not None and until(state):
            return state
        previous = state
        await asyncio.sleep(interval)
