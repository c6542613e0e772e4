"""MigrationWorkflow: assess → poc → parallel_run → cutover → decommission, with a way back.

One short method per phase, gate logic visible here, the work in activities. Every step that
changes the world registers its compensation first; a forced rollback, a failing verdict or a
cancellation runs them in reverse until all have succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.assess import (
        AssessInput,
        CheckpointFacts,
        EnvironmentFacts,
        InventoryInput,
        inventory_storage,
        project_assessment,
    )
    from activities.bench import BenchInput, run_benchmark_activity
    from activities.training import TrainInput, train_seeded
    from activities.transfer.archive import ArchiveInput, archive_workload, release_source, verify_archive
    from activities.transfer.ledger import LedgerInput, ledger_key
    from activities.validate import (
        CompareBenchInput,
        CompareTrainingInput,
        Verdict,
        compare_benchmarks,
        compare_training,
    )
    from workflows.cutover import StagedCutover
    from workflows.plan import CONTROL_TASK_QUEUE, Environment, MigrationPlan
    from workflows.saga import Compensation
    from workflows.state import (
        MAX_VERDICTS,
        PHASES,
        SA_PHASE,
        SA_TRAFFIC,
        SA_VERDICT,
        ApproveInput,
        AuditEntry,
        Gate,
        MigrationInput,
        MigrationState,
        OperatorInput,
        RollbackInput,
    )
    from workflows.sync import DatasetSyncWorkflow, SyncInput, SyncResult

QUICK = timedelta(minutes=5)
LONG = timedelta(hours=12)
HEARTBEAT = timedelta(minutes=2)


class RollbackRequested(Exception):
    """Raised inside a phase to leave it and run compensations."""


class StopMigration(Exception):
    """The plan may not proceed (e.g. residency breach): undo what was done, then stop."""


def _facts(env: Environment) -> EnvironmentFacts:
    return EnvironmentFacts(
        name=env.name,
        region=env.region,
        egress_per_gb_usd=env.egress_per_gb_usd,
        bandwidth_gbps=env.bandwidth_gbps,
        allowed_data_regions=env.allowed_data_regions,
        gpu_type=env.compute.gpu_type,
        gpu_count=env.compute.gpu_count,
    )


def _price_per_hour(env: Environment) -> float:
    return env.compute.price_per_gpu_hour * max(env.compute.gpu_count, 1)


@workflow.defn
class MigrationWorkflow(StagedCutover):
    @workflow.init
    def __init__(self, request: MigrationInput) -> None:
        self.plan: MigrationPlan = request.plan
        self.state: MigrationState = request.resume or MigrationState(
            migration_id=workflow.info().workflow_id, plan_name=request.plan.name
        )

    # -- lifecycle ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: MigrationInput) -> MigrationState:
        if request.resume is None:
            self._audit("skyshift", "started", f"plan {self.plan.name}: {self.plan.source} → {self.plan.target}")
        try:
            while self.state.next_phase < len(PHASES):
                phase = PHASES[self.state.next_phase]
                self._set_phase(phase)
                await self._checkpoint()
                await getattr(self, phase)()
                self.state.next_phase += 1
            self._finish("completed", "all phases done")
        except RollbackRequested:
            request_ = self.state.rollback_request
            await self._rollback("rolled_back", f"{request_.reason} (by {request_.by})" if request_ else "rollback")
        except StopMigration as stop:
            await self._rollback("stopped", str(stop))
        except asyncio.CancelledError:
            # Compensate even though the workflow is being cancelled; shield the undo from it.
            await asyncio.shield(asyncio.ensure_future(self._rollback("cancelled", "workflow cancelled")))
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    async def assess(self) -> None:
        source = self.plan.source_env
        workloads = [(d.name, "dataset", d.path) for d in self.plan.workloads.datasets] + [
            (c.name, "checkpoint", c.path) for c in self.plan.workloads.checkpoints
        ]
        inventory = await workflow.execute_activity(
            inventory_storage,
            InventoryInput(store=source.storage, workloads=workloads),
            task_queue=source.task_queue,
            start_to_close_timeout=LONG,
            heartbeat_timeout=HEARTBEAT,
            summary=f"inventory {source.storage.url}",
        )
        report = await workflow.execute_activity(
            project_assessment,
            AssessInput(
                source=_facts(source),
                target=_facts(self.plan.target_env),
                checkpoints=[
                    CheckpointFacts(name=c.name, parameters_billion=c.parameters_billion)
                    for c in self.plan.workloads.checkpoints
                ],
                egress_budget_usd=self.plan.egress_budget_usd,
                inventory=inventory,
            ),
            task_queue=CONTROL_TASK_QUEUE,
            start_to_close_timeout=QUICK,
            summary="project egress, time, GPU fit and residency",
        )
        self.state.assessment = report
        self._details()
        if not report.residency_ok:
            raise StopMigration(f"data residency: {report.residency_detail}")
        if report.over_budget:
            await self._gate(
                "egress-budget",
                f"projected egress ${report.egress_cost_usd:,.2f} exceeds the budget "
                f"${self.plan.egress_budget_usd:,.2f}",
            )

    async def poc(self) -> None:
        self.state.poc.transfers = list(await asyncio.gather(*(self._copy(w, p, "poc") for w, p in self._workloads())))
        bench = self.plan.bench
        for env, results in (
            (self.plan.source_env, self.state.poc.source_bench),
            (self.plan.target_env, self.state.poc.target_bench),
        ):
            # One side at a time: when environments share a host, each measures an idle one.
            results.append(
                await workflow.execute_activity(
                    run_benchmark_activity,
                    BenchInput(
                        environment=env.name, trials=bench.trials, matrix_size=bench.matrix_size, device=bench.device
                    ),
                    task_queue=env.task_queue,
                    start_to_close_timeout=timedelta(hours=1),
                    heartbeat_timeout=timedelta(minutes=10),
                    summary=f"benchmark on {env.name} ({bench.trials} trials)",
                )
            )
        comparison = await workflow.execute_activity(
            compare_benchmarks,
            CompareBenchInput(
                source=self.state.poc.source_bench,
                target=self.state.poc.target_bench,
                source_price_per_hour=_price_per_hour(self.plan.source_env),
                target_price_per_hour=_price_per_hour(self.plan.target_env),
                min_throughput_ratio=self.plan.thresholds.min_throughput_ratio,
                max_cost_ratio=self.plan.thresholds.max_cost_ratio,
            ),
            task_queue=CONTROL_TASK_QUEUE,
            start_to_close_timeout=QUICK,
            summary="compare benchmarks and cost per unit of work",
        )
        self.state.poc.comparison = comparison
        self._record_verdict(comparison.verdict)
        await self._gate("poc", f"POC verdict {comparison.verdict.outcome}: {comparison.verdict.summary}")

    async def parallel_run(self) -> None:
        if not self.plan.workloads.datasets:
            self._audit("skyshift", "parallel_run_skipped", "the plan has no dataset to train on")
            return
        dataset, spec = self.plan.workloads.datasets[0], self.plan.parallel_run
        results = []
        for env in (self.plan.source_env, self.plan.target_env):
            # The target trains on exactly the object the source chose, read from its own copy.
            request = TrainInput(
                environment=env.name, store=env.storage, dataset_path=dataset.path,
                object_key=results[0].object_key if results else None,
                seed=spec.seed, steps=spec.steps, batch_size=spec.batch_size, sample_bytes=spec.sample_bytes,
            )  # fmt: skip
            results.append(
                await workflow.execute_activity(
                    train_seeded,
                    request,
                    task_queue=env.task_queue,
                    start_to_close_timeout=timedelta(hours=2),
                    summary=f"seeded training on {env.name}'s copy of {dataset.name}",
                )
            )
        verdict = await workflow.execute_activity(
            compare_training,
            CompareTrainingInput(
                source=results[0], target=results[1], loss_divergence_pct=self.plan.thresholds.loss_divergence_pct
            ),
            task_queue=CONTROL_TASK_QUEUE,
            start_to_close_timeout=QUICK,
            summary="compare loss curves, gradient norms, final tensors",
        )
        self.state.parallel_run = verdict
        self._record_verdict(verdict)
        if verdict.outcome == "fail":
            self._request_rollback(f"parallel run: {verdict.summary}", by="skyshift:parallel_run")
            self._raise_if_rollback()

    async def decommission(self) -> None:
        await self._wait(lambda: False, timeout=self.plan.soak_period, summary="soak at 100% before decommission")
        await self._gate("decommission", "archive and release the source: the last steps cannot be undone")
        result = self.state.decommission
        result.final_sync = list(await asyncio.gather(*(self._copy(w, p, "final") for w, p in self._workloads())))
        for name, path in self._workloads():
            request = self._archive_input(name, path)
            archived = await self._on(self.plan.source_env, archive_workload, request, f"archive {name}")
            result.archived_objects += archived.objects
            verified = await self._on(self.plan.target_env, verify_archive, request, f"verify {name} at target")
            result.verified_objects += verified.objects_verified
        if not self.plan.decommission.delete_source:
            self._audit("skyshift", "source_kept", "plan keeps the source copies (decommission.delete_source: false)")
            return
        self.state.point_of_no_return = True
        self.state.saga.forget()
        self._audit("skyshift", "point_of_no_return", "releasing source data; rollback is no longer possible")
        for name, path in self._workloads():
            released = await self._on(
                self.plan.source_env, release_source, self._archive_input(name, path), f"release {name} at source"
            )
            result.released.append(released)

    # -- operator messages ----------------------------------------------------------------------

    @workflow.query
    def status(self) -> MigrationState:
        return self.state

    @workflow.update
    def approve(self, request: ApproveInput) -> str:
        gate = self.state.pending_gate
        assert gate is not None  # guaranteed by the validator
        self._audit(request.by, "approved", f"{gate.stage}{': ' + request.note if request.note else ''}")
        self.state.pending_gate = None
        self._details()
        return gate.stage

    @approve.validator
    def _validate_approve(self, request: ApproveInput) -> None:
        gate = self.state.pending_gate
        if gate is None:
            raise ValueError(f"nothing is awaiting approval (phase {self.state.phase}); '{request.stage}' rejected")
        if gate.stage != request.stage:
            raise ValueError(f"'{request.stage}' is not awaiting approval; the pending gate is '{gate.stage}'")

    @workflow.signal
    def rollback(self, request: RollbackInput) -> None:
        if self.state.point_of_no_return or self.state.outcome is not None:
            self._audit(request.by, "rollback_ignored", f"{request.reason}: too late ({self.state.phase})")
            return
        self._request_rollback(request.reason, request.by)

    @workflow.update
    def skip_stage(self, request: OperatorInput) -> str:
        stage = self.state.stage or ""
        self.state.cutover.skip_requested = True
        self._audit(request.by, "skip_stage", f"{stage}{': ' + request.note if request.note else ''}")
        return stage

    @skip_stage.validator
    def _validate_skip(self, request: OperatorInput) -> None:
        self._require_cutover_stage("skip_stage")
        if self.state.cutover.stage_index >= len(self.plan.cutover.stages) - 1:
            raise ValueError("the last stage cannot be skipped: it is where the cutover ends")

    @workflow.update
    def promote(self, request: OperatorInput) -> str:
        self.state.cutover.promote_requested = True
        self._audit(
            request.by,
            "promote",
            f"to {self.plan.cutover.stages[-1].name}{': ' + request.note if request.note else ''}",
        )
        return self.plan.cutover.stages[-1].name

    @promote.validator
    def _validate_promote(self, request: OperatorInput) -> None:
        self._require_cutover_stage("promote")

    def _require_cutover_stage(self, action: str) -> None:
        if self.state.phase != "cutover" or self.state.outcome is not None:
            raise ValueError(f"{action} applies during cutover; the migration is in {self.state.phase}")

    @workflow.signal
    def pause(self, request: OperatorInput) -> None:
        self.state.paused = True
        self._audit(request.by, "paused", request.note)
        self._details()

    @workflow.signal
    def resume(self, request: OperatorInput) -> None:
        self.state.paused = False
        self._audit(request.by, "resumed", request.note)
        self._details()

    # -- helpers shared by the phases -------------------------------------------------------------

    def _workloads(self) -> list[tuple[str, str]]:
        w = self.plan.workloads
        return [(d.name, d.path) for d in w.datasets] + [(c.name, c.path) for c in w.checkpoints]

    def _archive_input(self, name: str, path: str) -> ArchiveInput:
        return ArchiveInput(
            migration_id=self.state.migration_id,
            workload=name,
            path=path,
            source=self.plan.source_env.storage,
            target=self.plan.target_env.storage,
        )

    async def _on(self, env: Environment, activity, argument, summary: str):
        return await workflow.execute_activity(
            activity,
            argument,
            task_queue=env.task_queue,
            start_to_close_timeout=LONG,
            heartbeat_timeout=HEARTBEAT,
            summary=summary,
        )

    async def _copy(self, name: str, path: str, phase: str) -> SyncResult:
        """Delta-sync one workload to the target as a child workflow; its undo is registered first."""
        source, target = self.plan.source_env, self.plan.target_env
        ledger = ledger_key(self.state.migration_id, name)
        if self.state.saga.register(
            Compensation(
                activity="remove_created",
                task_queue=target.task_queue,
                argument=LedgerInput(target=target.storage, ledger_key=ledger).model_dump(mode="json"),
                summary=f"delete what the migration created for {name} at {target.name}",
            )
        ):
            self._audit("skyshift", "compensation_registered", f"delete {name} copies at {target.name}")
        result = await workflow.execute_child_workflow(
            DatasetSyncWorkflow.run,
            SyncInput(source=source.storage, target=target.storage, source_queue=source.task_queue,
                      target_queue=target.task_queue, path=path, egress_per_gb_usd=source.egress_per_gb_usd,
                      ledger_key=ledger),
            id=f"{self.state.migration_id}-{phase}-sync-{name}",
            static_summary=f"sync {name}: {source.name} → {target.name}",
        )  # fmt: skip
        self.state.egress_bytes += result.egress_bytes
        self.state.egress_cost_usd = round(self.state.egress_cost_usd + result.egress_cost_usd, 6)
        self._details()
        return result

    async def _gate(self, stage: str, reason: str, deadline: timedelta | None = None) -> bool:
        """Wait for `approve(stage)` or a rollback; return False if the deadline passed unanswered."""
        self.state.pending_gate = Gate(stage=stage, reason=reason, opened_at=workflow.now())
        self._audit("skyshift", "awaiting_approval", f"{stage}: {reason}")
        self._details()
        try:
            await self._wait(lambda: self.state.pending_gate is None, timeout=deadline, summary=f"await {stage}")
            answered = self.state.pending_gate is None
        finally:
            self.state.pending_gate = None
        if not answered:
            self._audit("skyshift", "gate_expired", f"{stage}: nobody answered within {deadline}")
        return answered

    async def _wait(
        self, done: Callable[[], bool], timeout: timedelta | None = None, summary: str | None = None
    ) -> None:
        """Wait for `done` (or time out); a rollback request always ends the wait by raising."""
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: done() or self.state.rollback_request is not None, timeout=timeout, timeout_summary=summary
            )
        self._raise_if_rollback()

    async def _checkpoint(self) -> None:
        """Between steps: honour a pause (until resume) and a rollback request."""
        await self._wait(lambda: not self.state.paused)

    def _request_rollback(self, reason: str, by: str) -> None:
        if self.state.rollback_request is None:
            self.state.rollback_request = RollbackInput(reason=reason, by=by)
            self._audit(by, "rollback_requested", reason)

    def _raise_if_rollback(self) -> None:
        if self.state.rollback_request is not None:
            raise RollbackRequested()

    async def _rollback(self, outcome: str, reason: str) -> None:
        self._set_phase("rolling_back")
        self.state.pending_gate = None
        await self.state.saga.compensate(self._compensated)
        self._finish(outcome, reason)

    def _compensated(self, step: Compensation) -> None:
        if step.activity == "route_traffic":
            self.state.traffic_percent = 0
            workflow.upsert_search_attributes([SA_TRAFFIC.value_set(0)])
        self._audit("skyshift", "compensated", step.summary)

    def _finish(self, outcome: str, reason: str) -> None:
        self.state.outcome = outcome
        self.state.outcome_reason = reason
        self._set_phase("done")
        workflow.upsert_search_attributes([SA_PHASE.value_set(outcome), SA_VERDICT.value_set(outcome)])
        self._audit("skyshift", outcome, reason)
        self._details()

    def _set_phase(self, phase: str) -> None:
        self.state.phase = phase
        workflow.upsert_search_attributes([SA_PHASE.value_set(phase)])
        self._details()

    def _record_verdict(self, verdict: Verdict) -> None:
        self.state.verdicts = [*self.state.verdicts, verdict][-MAX_VERDICTS:]
        workflow.upsert_search_attributes([SA_VERDICT.value_set(verdict.outcome)])
        self._details()

    def _audit(self, actor: str, action: str, detail: str = "") -> None:
        self.state.audit.append(AuditEntry(at=workflow.now(), actor=actor, action=action, detail=detail))

    def _continue_as_new_if_suggested(self) -> None:
        if workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished():
            workflow.continue_as_new(MigrationInput(plan=self.plan, resume=self.state))

    def _details(self) -> None:
        """What the Temporal UI shows as current details: phase, traffic, gate, last verdict, egress."""
        s = self.state
        lines = [f"**{self.plan.name}**: {self.plan.source} → {self.plan.target}", f"phase: **{s.phase}**"]
        if s.stage:
            lines.append(f"stage: {s.stage}, traffic to target: {s.traffic_percent}%")
        if s.pending_gate:
            lines.append(f"⏸ awaiting approval of **{s.pending_gate.stage}**: {s.pending_gate.reason}")
        if s.paused:
            lines.append("⏸ paused by an operator")
        if s.verdicts:
            lines.append(f"last verdict ({s.verdicts[-1].subject}): {s.verdicts[-1].outcome}: {s.verdicts[-1].summary}")
        lines.append(f"egress so far: {s.egress_bytes / 1e9:.3f} GB, ${s.egress_cost_usd:.4f}")
        if s.outcome:
            lines.append(f"outcome: **{s.outcome}**: {s.outcome_reason}")
        workflow.set_current_details("\n\n".join(lines))
