"""Shadow: the same requests to both endpoints before any traffic moves, outputs judged against the source's noise.

Entered only when an endpoint has a `shadow` section. Mirroring live traffic registers its undo
("stop mirroring") first; a failing comparison rolls back before a single user request reaches the
target.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.shadow.judge import ShadowThresholds
    from activities.shadow.runner import MirrorInput, RunShadowInput, run_shadow, set_mirror
    from workflows.phases.context import MigrationContext
    from workflows.plan import CONTROL_TASK_QUEUE, EndpointPair
    from workflows.saga import Compensation


def shadowed(ctx: MigrationContext) -> list[EndpointPair]:
    return [e for e in ctx.plan.workloads.endpoints if e.shadow is not None]


async def shadow(ctx: MigrationContext) -> None:
    router = ctx.plan.workloads.router
    if router is not None and any(e.shadow.mirror_percent > 0 for e in shadowed(ctx)):
        ctx.register_undo(
            Compensation.of(set_mirror, MirrorInput(router=router, percent=0), task_queue=CONTROL_TASK_QUEUE,
                            summary="stop mirroring live traffic to the target"),
            announce="stop mirroring live traffic to the target",
        )  # fmt: skip
    thresholds = ctx.plan.thresholds
    limits = ShadowThresholds(latency_increase_pct=thresholds.latency_increase_pct,
                              error_rate_increase_pp=thresholds.error_rate_increase_pp,
                              confidence=thresholds.confidence)  # fmt: skip
    for pair in shadowed(ctx):
        result = await ctx.control(
            run_shadow,
            RunShadowInput(endpoint=pair, store=ctx.plan.source_env.storage, router=router, thresholds=limits),
            f"shadow {pair.name}: source twice, target once", timeout=timedelta(hours=2), long_running=True,
        )  # fmt: skip
        ctx.state.shadow.append(result)
        ctx.record_verdict(result.verdict)
        ctx.fail_if(result.verdict, f"shadow {pair.name}", by="skyshift:shadow")
        if result.verdict.outcome != "pass" or pair.shadow.approval:
            await ctx.gate(f"shadow-{pair.name}", f"shadow verdict {result.verdict.outcome}: {result.verdict.summary}")
