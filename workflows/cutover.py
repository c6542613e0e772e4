"""Staged cutover: shift traffic stage by stage, judge every window, roll back on a breach.

For each stage: wait for approval if the plan asks, register "route everything back to the
source" *before* changing weights, set the weights, then hold the stage on durable timers,
measuring both sides every monitor interval. A failing window rolls back at once; a run of
inconclusive windows pauses for an operator.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.metrics import ScrapeInput, scrape_endpoints
    from activities.traffic import RouteInput, route_traffic
    from activities.validate import JudgeWindowInput, WindowThresholds, judge_window
    from workflows.plan import CONTROL_TASK_QUEUE, Stage
    from workflows.saga import Compensation
    from workflows.state import MAX_VERDICTS, SA_TRAFFIC, SA_VERDICT

QUICK = timedelta(minutes=2)


class StagedCutover:
    """Mixin for MigrationWorkflow: the cutover phase. Expects `plan`, `state` and the gate helpers."""

    async def cutover(self) -> None:
        stages = self.plan.cutover.stages
        progress = self.state.cutover
        for index in range(progress.stage_index, len(stages)):
            stage = stages[index]
            if not progress.entered:
                await self._enter_stage(stage)
            await self._hold_stage(stage)
            progress.stage_index = index + 1
            progress.stage_elapsed_s = 0
            progress.entered = False
            progress.inconclusive_streak = 0

    async def _enter_stage(self, stage: Stage) -> None:
        if stage.approval:
            await self._gate(stage.name, f"route {stage.percent}% of traffic to {self.plan.target}")
        await self._checkpoint()
        self.state.stage = stage.name
        await self._route(stage.percent, f"stage {stage.name}")
        self.state.cutover.entered = True
        self.state.cutover.previous = await self._scrape() if self.plan.workloads.endpoints else []
        self._audit("skyshift", "stage_entered", f"{stage.name}: {stage.percent}% to target for {stage.duration}")

    async def _route(self, percent: int, reason: str) -> None:
        router = self.plan.workloads.router
        if router is None:
            self._audit("skyshift", "traffic_unrouted", f"no router in the plan; {percent}% recorded only")
        else:
            undo = RouteInput(router=router, target_percent=0, reason="rollback: all traffic back to source")
            registered = self.state.saga.register(
                Compensation(
                    activity="route_traffic",
                    task_queue=CONTROL_TASK_QUEUE,
                    argument=undo.model_dump(mode="json"),
                    summary=f"route 100% to {self.plan.source}",
                )
            )
            if registered:
                self._audit("skyshift", "compensation_registered", f"route 100% to {self.plan.source}")
            await workflow.execute_activity(
                route_traffic,
                RouteInput(router=router, target_percent=percent, reason=reason),
                task_queue=CONTROL_TASK_QUEUE,
                start_to_close_timeout=QUICK,
                summary=f"route {percent}% to {self.plan.target}",
            )
        self.state.traffic_percent = percent
        workflow.upsert_search_attributes([SA_TRAFFIC.value_set(percent)])
        self._details()

    async def _hold_stage(self, stage: Stage) -> None:
        progress = self.state.cutover
        interval = self.plan.cutover.monitor_interval.total_seconds()
        measuring = bool(self.plan.workloads.endpoints)
        while (remaining := stage.duration.total_seconds() - progress.stage_elapsed_s) > 0:
            # Without endpoints to measure, the whole stage is one durable timer.
            step = min(interval, remaining) if measuring else remaining
            await self._wait(lambda: False, timeout=timedelta(seconds=step), summary=f"hold {stage.name}")
            progress.stage_elapsed_s += step
            if measuring:
                await self._judge(stage)
            await self._checkpoint()
            self._continue_as_new_if_suggested()

    async def _scrape(self):
        return await workflow.execute_activity(
            scrape_endpoints,
            ScrapeInput(endpoints=self.plan.workloads.endpoints),
            task_queue=CONTROL_TASK_QUEUE,
            start_to_close_timeout=QUICK,
            summary="scrape metrics from both sides",
        )

    async def _judge(self, stage: Stage) -> None:
        thresholds = self.plan.thresholds
        current = await self._scrape()
        judgement = await workflow.execute_activity(
            judge_window,
            JudgeWindowInput(
                stage=stage.name,
                previous=self.state.cutover.previous,
                current=current,
                thresholds=WindowThresholds(
                    latency_increase_pct=thresholds.latency_increase_pct,
                    error_rate_increase_pp=thresholds.error_rate_increase_pp,
                    min_samples=thresholds.min_samples,
                ),
                baselines=self.state.cutover.baselines,
            ),
            task_queue=CONTROL_TASK_QUEUE,
            start_to_close_timeout=QUICK,
            summary=f"judge window at {stage.name}",
        )
        verdict = judgement.verdict
        self.state.cutover.previous = current
        self.state.cutover.baselines = judgement.baselines
        self.state.verdicts = [*self.state.verdicts, verdict][-MAX_VERDICTS:]
        workflow.upsert_search_attributes([SA_VERDICT.value_set(verdict.outcome)])
        self._details()
        if verdict.outcome == "fail":
            self._request_rollback(f"{stage.name}: {verdict.summary}", by="skyshift:analysis")
            self._raise_if_rollback()
        if verdict.outcome == "pass":
            self.state.cutover.inconclusive_streak = 0
            return
        self.state.cutover.inconclusive_streak += 1
        if self.state.cutover.inconclusive_streak >= thresholds.inconclusive_limit:
            workflow.logger.warning(
                "%s: %d windows %s; waiting for an operator",
                stage.name,
                self.state.cutover.inconclusive_streak,
                verdict.outcome,
            )
            await self._gate(
                f"inconclusive-{stage.name}",
                f"{self.state.cutover.inconclusive_streak} windows in a row were {verdict.outcome}: {verdict.summary}",
            )
            self.state.cutover.inconclusive_streak = 0
