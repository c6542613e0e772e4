"""Staged cutover: shift traffic stage by stage, judge every window, roll back on a breach.

For each stage: wait for approval if the plan asks, register "route everything back to the
source" *before* changing weights, set the weights, then hold the stage on durable timers,
measuring both sides every monitor interval. Each window is judged against a baseline at the
target's load (before any traffic moves, the source is measured alone at full load for one interval:
the baseline at 100%); a large, certain regression in one window rolls back at once, smaller ones
when the stage's sequential test decides (its false-rollback probability bounded over the whole
stage, `activities.sequential`); a run of inconclusive windows pauses for an operator.
"""

from __future__ import annotations

import math
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.metrics import ScrapeInput, scrape_endpoints
    from activities.sequential import StageBudget
    from activities.traffic import RouteInput, route_traffic
    from activities.windows import JudgeWindowInput, StageControl, WindowThresholds, judge_window
    from workflows.phases import training
    from workflows.phases.context import MigrationContext
    from workflows.plan import CONTROL_TASK_QUEUE, MigrationPlan, Stage
    from workflows.saga import Compensation
    from workflows.state import SA_TRAFFIC, MigrationState
    from workflows.versions import STAGE_VERDICTS

QUICK = timedelta(minutes=2)


class StagedCutover:
    """The cutover phase, over the migration's context (its plan, state, gates and undo)."""

    def __init__(self, ctx: MigrationContext) -> None:
        self.ctx = ctx

    @property
    def plan(self) -> MigrationPlan:
        return self.ctx.plan

    @property
    def state(self) -> MigrationState:
        return self.ctx.state

    async def run(self) -> None:
        stages = self.plan.cutover.stages
        progress = self.state.cutover
        while progress.stage_index < len(stages):
            if progress.promote_requested and progress.stage_index < len(stages) - 1 and not progress.entered:
                self.ctx.audit("skyshift", "promoting", f"skipping to {stages[-1].name} as an operator asked")
                progress.stage_index = len(stages) - 1
            stage = stages[progress.stage_index]
            if not progress.entered:
                await self._enter_stage(stage, approval=stage.approval and not progress.promote_requested)
            await self._hold_stage(stage)
            progress.stage_index += 1
            progress.stage_elapsed_s = 0
            progress.entered = progress.skip_requested = False
            progress.inconclusive_streak = progress.error_streak = 0
            progress.evidence = {}

    async def _enter_stage(self, stage: Stage, approval: bool) -> None:
        if approval:
            await self.ctx.gate(stage.name, f"route {stage.percent}% of traffic to {self.plan.target}")
        await self.ctx.checkpoint()
        if self.state.traffic_percent == 0 and self.plan.workloads.endpoints and workflow.patched(STAGE_VERDICTS):
            await self._record_source_load()
        self.state.stage = stage.name
        await self._route(stage.percent, f"stage {stage.name}")
        self.state.cutover.entered = True
        self.state.cutover.previous = await self._scrape() if self.plan.workloads.endpoints else []
        self.ctx.audit("skyshift", "stage_entered", f"{stage.name}: {stage.percent}% to target for {stage.duration}")
        await training.on_stage_entry(self.ctx, stage)  # cutover.training: handoff

    async def _route(self, percent: int, reason: str) -> None:
        router = self.plan.workloads.router
        if router is None:
            self.ctx.audit("skyshift", "traffic_unrouted", f"no router in the plan; {percent}% recorded only")
        else:
            undo = RouteInput(router=router, target_percent=0, reason="rollback: all traffic back to source")
            self.ctx.register_undo(
                Compensation.of(
                    route_traffic, undo, task_queue=CONTROL_TASK_QUEUE, summary=f"route 100% to {self.plan.source}"
                ),
                announce=f"route 100% to {self.plan.source}",
            )
            await workflow.execute_activity(
                route_traffic,
                RouteInput(router=router, target_percent=percent, reason=reason),
                task_queue=CONTROL_TASK_QUEUE,
                start_to_close_timeout=QUICK,
                summary=f"route {percent}% to {self.plan.target}",
            )
        self.state.traffic_percent = percent
        workflow.upsert_search_attributes([SA_TRAFFIC.value_set(percent)])
        self.ctx.show_details()

    async def hold(self, stage: Stage) -> None:
        """Hold `stage` for its duration, judging every window (the soak before decommission uses this too)."""
        await self._hold_stage(stage)

    async def _hold_stage(self, stage: Stage) -> None:
        progress = self.state.cutover
        interval = self.plan.cutover.monitor_interval.total_seconds()
        measuring = bool(self.plan.workloads.endpoints)

        def operator_moved_on() -> bool:
            return progress.skip_requested or progress.promote_requested

        while (remaining := stage.duration.total_seconds() - progress.stage_elapsed_s) > 0 and not operator_moved_on():
            # Without endpoints to measure, the whole stage is one durable timer.
            step = min(interval, remaining) if measuring else remaining
            started = workflow.now()
            await self.ctx.wait(operator_moved_on, timeout=timedelta(seconds=step), summary=f"hold {stage.name}")
            waited = (workflow.now() - started).total_seconds()
            progress.stage_elapsed_s += waited
            if operator_moved_on():
                break
            if measuring:
                await self._judge(stage, waited)
            await self.ctx.checkpoint()
            self.ctx.continue_as_new_if_suggested()

    async def _record_source_load(self) -> None:
        """One interval of the source alone at full load, before traffic moves: the baseline the target at 100%
        is judged against (at 100% the source is idle; a window measured at another load is never the baseline)."""
        interval = self.plan.cutover.monitor_interval
        before, started = await self._scrape(), workflow.now()
        await self.ctx.wait(lambda: False, timeout=interval, summary="measure the source at full load")
        seconds = (workflow.now() - started).total_seconds()
        recorded, _ = await self._judge_window("before", before, self._control(1, seconds, record_only=True))
        self.state.cutover.library = recorded.library
        self.ctx.audit("skyshift", "baseline_recorded", "the source at full load for one interval: " + "; ".join(
            f"{name} {', '.join(f'{level.rate:.3g} req/s' for level in levels)}"
            for name, levels in recorded.library.items()))  # fmt: skip

    def _control(self, planned_windows: int, seconds: float, record_only: bool = False) -> StageControl:
        thresholds = self.plan.thresholds
        budget = StageBudget(rate=thresholds.stage_false_rollback_rate, planned_windows=max(1, planned_windows),
                             endpoints=max(1, len(self.plan.workloads.endpoints)))  # fmt: skip
        return StageControl(budget=budget, window_seconds=seconds if seconds > 0 else None,
                            load_tolerance=thresholds.load_match_tolerance, record_only=record_only)  # fmt: skip

    async def _judge_window(self, stage: str, previous, control: StageControl | None):
        thresholds, progress = self.plan.thresholds, self.state.cutover
        current = await self._scrape()
        return await workflow.execute_activity(
            judge_window,
            JudgeWindowInput(
                stage=stage,
                previous=previous,
                current=current,
                thresholds=WindowThresholds(
                    latency_increase_pct=thresholds.latency_increase_pct,
                    error_rate_increase_pp=thresholds.error_rate_increase_pp,
                    min_samples=thresholds.min_samples,
                    confidence=thresholds.confidence,
                    dry_run=list(thresholds.dry_run),
                ),
                baselines=progress.baselines,
                control=control,
                evidence=progress.evidence,
                library=progress.library,
            ),
            task_queue=CONTROL_TASK_QUEUE,
            start_to_close_timeout=QUICK,
            summary=f"judge window at {stage}" if control is None or not control.record_only
            else "record the source's load and latency",
        ), current  # fmt: skip

    async def _scrape(self):
        return await workflow.execute_activity(
            scrape_endpoints,
            ScrapeInput(endpoints=self.plan.workloads.endpoints, provider=self.plan.workloads.metrics),
            task_queue=CONTROL_TASK_QUEUE,
            start_to_close_timeout=QUICK,
            summary="scrape metrics from both sides",
        )

    async def _judge(self, stage: Stage, window_s: float) -> None:
        thresholds, progress = self.plan.thresholds, self.state.cutover
        control = None
        if workflow.patched(STAGE_VERDICTS):
            interval = self.plan.cutover.monitor_interval.total_seconds()
            control = self._control(math.ceil(stage.duration.total_seconds() / interval), window_s)
        judgement, current = await self._judge_window(stage.name, progress.previous, control)
        if control is not None:
            progress.evidence, progress.library = judgement.evidence, judgement.library
        verdict = judgement.verdict
        progress.previous, progress.baselines = current, judgement.baselines
        self.ctx.record_verdict(verdict)
        progress.error_streak = progress.error_streak + 1 if verdict.outcome == "error" else 0
        if verdict.outcome == "fail" or progress.error_streak >= thresholds.max_consecutive_errors:
            why = verdict.summary if verdict.outcome == "fail" else f"{progress.error_streak} windows unreadable"
            self.ctx.start_rollback(f"{stage.name}: {why}", by="skyshift:analysis")
            self.ctx.raise_if_rollback()
        if verdict.outcome == "pass":
            progress.inconclusive_streak = 0
            return
        progress.inconclusive_streak += 1
        if progress.inconclusive_streak >= thresholds.inconclusive_limit:
            await self._inconclusive_pause(stage, verdict.summary)

    async def _inconclusive_pause(self, stage: Stage, summary: str) -> None:
        """Ask an operator; approve accepts and continues the stage. Nobody answers: the plan decides."""
        spec, streak = self.plan.cutover, self.state.cutover.inconclusive_streak
        workflow.logger.warning("%s: %d windows without a verdict; waiting for an operator", stage.name, streak)
        answered = await self.ctx.gate(
            f"inconclusive-{stage.name}",
            f"{streak} windows in a row without a verdict ({summary}); approve to continue, or by "
            f"{spec.inconclusive_deadline} the migration will {spec.on_deadline}",
            deadline=spec.inconclusive_deadline,
        )
        self.state.cutover.inconclusive_streak = 0
        if not answered and spec.on_deadline == "rollback":
            self.ctx.start_rollback(f"{stage.name}: no verdict and no operator within {spec.inconclusive_deadline}",
                                   by="skyshift:deadline")  # fmt: skip
            self.ctx.raise_if_rollback()


async def cutover(ctx: MigrationContext) -> None:
    """The phase: every stage of the plan in turn (its progress lives in `ctx.state.cutover`)."""
    await StagedCutover(ctx).run()
