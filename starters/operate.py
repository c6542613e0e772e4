"""Operator actions against a running Temporal: each takes a client, so tests pass their own."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from workflows.migration import MigrationWorkflow
from workflows.plan import CONTROL_TASK_QUEUE, MigrationPlan
from workflows.state import ApproveInput, MigrationInput, MigrationState, OperatorInput, RollbackInput


def migration_id(plan: MigrationPlan) -> str:
    return f"{plan.name}-{secrets.token_hex(3)}"


async def start_migration(client: Client, plan: MigrationPlan, workflow_id: str | None = None) -> WorkflowHandle:
    stages = " → ".join(f"{s.percent}%" for s in plan.cutover.stages)
    return await client.start_workflow(
        MigrationWorkflow.run,
        MigrationInput(plan=plan),
        id=workflow_id or migration_id(plan),
        task_queue=CONTROL_TASK_QUEUE,
        static_summary=f"migrate {plan.name}: {plan.source} → {plan.target}",
        static_details=(
            f"**{plan.name}**\n\nsource: {plan.source} ({plan.source_env.storage.url})\n\n"
            f"target: {plan.target} ({plan.target_env.storage.url})\n\n"
            f"workloads: {len(plan.workloads.datasets)} datasets, {len(plan.workloads.checkpoints)} checkpoints, "
            f"{len(plan.workloads.endpoints)} endpoints\n\ncutover: {stages}\n\n"
            f"egress budget: ${plan.egress_budget_usd:,.2f}"
        ),
    )


async def get_status(client: Client, workflow_id: str) -> MigrationState:
    return await client.get_workflow_handle(workflow_id).query(MigrationWorkflow.status)


async def approve(client: Client, workflow_id: str, stage: str, by: str, note: str) -> str:
    handle = client.get_workflow_handle(workflow_id)
    return await handle.execute_update(MigrationWorkflow.approve, ApproveInput(stage=stage, by=by, note=note))


async def rollback(client: Client, workflow_id: str, reason: str, by: str) -> None:
    await client.get_workflow_handle(workflow_id).signal(
        MigrationWorkflow.rollback, RollbackInput(reason=reason, by=by)
    )


async def pause(client: Client, workflow_id: str, by: str, note: str, resume: bool = False) -> None:
    signal = MigrationWorkflow.resume if resume else MigrationWorkflow.pause
    await client.get_workflow_handle(workflow_id).signal(signal, OperatorInput(by=by, note=note))


async def stage_action(client: Client, workflow_id: str, action: str, by: str, note: str) -> str:
    """`skip_stage` or `promote`: validated by the workflow, rejected if not in cutover."""
    update = {"skip_stage": MigrationWorkflow.skip_stage, "promote": MigrationWorkflow.promote}[action]
    return await client.get_workflow_handle(workflow_id).execute_update(update, OperatorInput(by=by, note=note))


async def list_migrations(client: Client, limit: int = 50) -> list[dict]:
    rows = []
    async for execution in client.list_workflows('WorkflowType="MigrationWorkflow"', limit=limit):
        attributes = execution.typed_search_attributes
        rows.append(
            {
                "id": execution.id,
                "status": execution.status.name if execution.status else "UNKNOWN",
                "started": execution.start_time.isoformat() if execution.start_time else None,
                "phase": next((p.value for p in attributes if p.key.name == "SkyshiftPhase"), None),
                "traffic_percent": next((p.value for p in attributes if p.key.name == "SkyshiftTrafficPercent"), None),
                "verdict": next((p.value for p in attributes if p.key.name == "SkyshiftVerdict"), None),
            }
        )
    return rows


async def is_closed(client: Client, workflow_id: str) -> bool:
    description = await client.get_workflow_handle(workflow_id).describe()
    return description.status != WorkflowExecutionStatus.RUNNING


async def follow(
    client: Client,
    workflow_id: str,
    on_change: Callable[[MigrationState, MigrationState | None], None],
    interval: float = 1.0,
    on_tick: Callable[[MigrationState], object] | None = None,
) -> MigrationState:
    """Poll `status` until the workflow closes, calling `on_change` whenever the state moved."""
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
        previous = state
        await asyncio.sleep(interval)
