"""MigrationWorkflow: assess → poc → parallel_run → cutover → decommission, with a way back.

One short method per phase, gate logic visible here, the work in activities. Every step that
changes the world registers its compensation first; a forced rollback, a failing verdict or a
cancellation runs them in reverse until all have succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError
from temporalio.workflow import ActivityCancellationType, ChildWorkflowCancellationType

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.assess import (
        AssessInput,
        CheckpointFacts,
        EnvironmentFacts,
        InventoryInput,
        inventory_storage,
        project_assessment,
    )
    from activities.bench import BenchInput, run_benchmark_activity
    from activities.bench.judge import BenchTolerances, JudgeBenchInput, judge_bench_activity
    from activities.checkpoints.compat import CompatibilityInput, checkpoint_compatibility
    from activities.checkpoints.inspect import inspect_checkpoint
    from activities.checkpoints.models import InspectInput
    from activities.checkpoints.sealed import (
        OpenSealedInput,
        RemoveSealedInput,
        SealInput,
        SealResult,
        open_sealed,
        remove_sealed,
        seal_checkpoint,
    )
    from activities.jobs import (
        CodeRootInput,
        CompareJobArmsInput,
        JobBenchSide,
        JobResult,
        JobSpec,
        JudgeJobBenchInput,
        RunJobInput,
        compare_job_arms,
        judge_job_bench,
        record_code_root,
        run_job,
    )
    from activities.shadow.judge import ShadowThresholds
    from activities.shadow.runner import MirrorInput, RunShadowInput, run_shadow, set_mirror
    from activities.stores.base import metadata_spec
    from activities.training import TrainInput, train_seeded
    from activities.transfer.archive import ArchiveInput, archive_workload, release_source, verify_archive
    from activities.transfer.ledger import LedgerInput, ledger_key, remove_created
    from activities.validate import (
        CompareBenchInput,
        CompareTrainingInput,
        Verdict,
        compare_benchmarks,
        compare_training,
    )
    from skyshift import metrics
    from workflows.cutover import StagedCutover
    from workflows.plan import CONTROL_TASK_QUEUE, Checkpoint, Environment, MigrationPlan
    from workflows.saga import Compensation
    from workflows.state import (
        LEGACY_PHASES,
        MAX_VERDICTS,
        SA_OUTCOME,
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
    from workflows.versions import (
        BENCH_SUITE_JUDGE,
        CHECKPOINT_REPORTS,
        COMPENSATE_EVERY_EXIT,
        EMPTY_SOURCE_STOPS,
        INTERRUPT_LONG_WORK,
    )

QUICK = timedelta(minutes=5)
LONG = timedelta(hours=12)
#: A silent worker is presumed dead after this long, and a cancel reaches a running activity
#: through its next heartbeat: short enough that a rollback starts within ~30 s.
HEARTBEAT = timedelta(seconds=30)
#: In-flight work is cancelled and *waited for* before compensating, so no writer races the undo.
WAIT_CANCELLED = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


#: Checkpoint errors that mean "never load this": the migration stops at assess, naming the file.
CHECKPOINT_REFUSALS = ("UnsafeCheckpointError", "MalformedCheckpointError", "UnsupportedCheckpointError")


class RollbackRequested(Exception):
    """Raised inside a phase to leave it and run compensations."""


class StopMigration(Exception):
    """The plan may not proceed (e.g. residency breach): undo what was done, then stop."""


def failure_reason(error: BaseException) -> str:
    """The innermost message of a chain of Temporal failures (activity → application error → ...)."""
    messages = []
    while error is not None:
        message = error.message if isinstance(error, FailureError) else str(error)
        if message and message not in messages:
            messages.append(message)
        error = error.cause if isinstance(error, FailureError) else error.__cause__
    return ": ".join(messages[-2:]) if messages else "unknown failure"


def was_cancelled(error: BaseException | None) -> bool:
    """True when a failure chain ends in a cancellation (a cancel delivered during an activity or child)."""
    while error is not None:
        if isinstance(error, CancelledError | asyncio.CancelledError):
            return True
        error = error.cause if isinstance(error, FailureError) else error.__cause__
    return False


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
class MigrationWorkflow:
    @workflow.init
    def __init__(self, request: MigrationInput) -> None:
        self.plan: MigrationPlan = request.plan
        self.state: MigrationState = request.resume or MigrationState(
            migration_id=workflow.info().workflow_id, plan_name=request.plan.name
        )
        if self.state.next_phase and not self.state.completed_phases:
            # State carried across continue-as-new by a worker that counted phases by index.
            self.state.completed_phases = list(LEGACY_PHASES[: self.state.next_phase])
        self.cutover = StagedCutover(self)

    def lifecycle(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The phases, in order: DESIGN §3's table as code."""
        phases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("assess", self.assess),
            ("poc", self.poc),
            ("parallel_run", self.parallel_run),
            ("shadow", self.shadow),
            ("cutover", self.cutover.run),
            ("decommission", self.decommission),
        ]
        # A phase with nothing to do is not entered at all (no phase change in history or the UI).
        return [(name, work) for name, work in phases if name != "shadow" or self._shadowed()]

    def _shadowed(self) -> list:
        return [e for e in self.plan.workloads.endpoints if e.shadow is not None]

    # -- lifecycle ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: MigrationInput) -> MigrationState:
        if request.resume is None:
            self.audit("skyshift", "started", f"plan {self.plan.name}: {self.plan.source} → {self.plan.target}")
        try:
            for phase, work in self.lifecycle():
                if phase in self.state.completed_phases:
                    continue
                self._set_phase(phase)
                await self.checkpoint()
                await self._interruptible(work(), phase)
                self.state.completed_phases.append(phase)
                self.state.next_phase = len(self.state.completed_phases)
            self._finish("completed", "all phases done")
        except RollbackRequested:
            request_ = self.state.rollback_request
            await self._undo("rolled_back", f"{request_.reason} (by {request_.by})" if request_ else "rollback")
        except StopMigration as stop:
            await self._undo("stopped", str(stop))
        except asyncio.CancelledError:
            await self._undo("cancelled", "workflow cancelled")
            raise
        except Exception as error:
            if not workflow.patched(COMPENSATE_EVERY_EXIT):
                raise  # a history recorded before every exit compensated: replay it as it ran
            cancelled = was_cancelled(error)
            reason = failure_reason(error)
            await self._undo("cancelled" if cancelled else "failed", f"{self.state.phase}: {reason}")
            raise ApplicationError(
                f"migration {self.state.outcome} in {self.state.ended_in}: {reason}; "
                f"compensations run: {len(self.state.saga.completed)}, failed: {len(self.state.saga.failed)}",
                type="MigrationFailed",
                non_retryable=True,
            ) from None
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    async def _interruptible(self, work: Coroutine[Any, Any, None], phase: str) -> None:
        """Run a phase so that a rollback request or a cancel stops its in-flight work first.

        The phase runs as its own task. A rollback request cancels it and waits until its
        activities and children have *acknowledged* the cancellation (they use
        WAIT_CANCELLATION_COMPLETED), so no writer is still committing objects when the
        compensations start deleting them.
        """
        task = asyncio.ensure_future(work)
        try:
            await workflow.wait_condition(lambda: task.done() or self.state.rollback_request is not None)
        except asyncio.CancelledError:
            task.cancel()
            await workflow.wait([task])
            raise
        if not task.done():
            if not workflow.patched(INTERRUPT_LONG_WORK):
                await task  # recorded before interruption existed: the phase ran to its next wait point
                return
            self.audit("skyshift", "interrupting", f"{phase}: cancelling in-flight work before compensating")
            task.cancel()
            await workflow.wait([task])
            raise RollbackRequested()
        task.result()

    async def assess(self) -> None:
        source = self.plan.source_env
        workloads = (
            [(d.name, "dataset", d.path) for d in self.plan.workloads.datasets]
            + [(c.name, "checkpoint", c.path) for c in self.plan.workloads.checkpoints]
            + [(j.name, "dataset", j.code) for j in self.plan.workloads.jobs]
        )  # a job's code moves like a dataset
        inventory = await self._on(
            source, inventory_storage, InventoryInput(store=source.storage, workloads=workloads),
            f"inventory {source.storage.url}",
        )  # fmt: skip
        empty = [w.name for w in inventory.workloads if w.objects == 0]
        if empty and workflow.patched(EMPTY_SOURCE_STOPS):
            raise StopMigration(
                f"no objects at {source.name} for {', '.join(empty)}: a missing source is never an empty dataset "
                "(check the workload paths and the storage URL)"
            )
        parameters = await self._inspect_checkpoints() if workflow.patched(CHECKPOINT_REPORTS) else {}
        report = await workflow.execute_activity(
            project_assessment,
            AssessInput(
                source=_facts(source),
                target=_facts(self.plan.target_env),
                checkpoints=[
                    CheckpointFacts(name=c.name, parameters_billion=c.parameters_billion or parameters.get(c.name))
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
        self.show_details()
        if not report.residency_ok:
            raise StopMigration(f"data residency: {report.residency_detail}")
        if report.over_budget:
            await self.gate(
                "egress-budget",
                f"projected egress ${report.egress_cost_usd:,.2f} exceeds the budget "
                f"${self.plan.egress_budget_usd:,.2f}",
            )

    async def poc(self) -> None:
        plain = self._plain_workloads()
        self.state.poc.transfers = await self._together([self._copy(w, p, "poc") for w, p in plain])
        for checkpoint in self._encrypted():
            self.state.poc.sealed.append(await self._seal(checkpoint))
        for job in self.plan.workloads.jobs:
            root = await self._on(self.plan.source_env, record_code_root,
                                  CodeRootInput(store=self.plan.source_env.storage, prefix=job.code),
                                  f"record the code root of {job.name}")  # fmt: skip
            self.state.poc.code_roots[job.name] = root.root
        if self.plan.workloads.checkpoints and workflow.patched(CHECKPOINT_REPORTS):
            await self._checkpoint_reports()
        await self._bench_suite()
        if self.plan.bench.job is not None:
            await self._bench_job(next(j for j in self.plan.workloads.jobs if j.name == self.plan.bench.job))
        blocked = [v for v in self.state.verdicts if v.subject.startswith("checkpoint:") and v.outcome == "fail"]
        if blocked:
            self.start_rollback(f"checkpoint compatibility: {blocked[0].summary}", by="skyshift:poc")
            self.raise_if_rollback()
        verdict = self.state.poc.judgement.verdict if self.state.poc.judgement else self.state.poc.comparison.verdict
        await self.gate("poc", f"POC verdict {verdict.outcome}: {verdict.summary}")

    async def _bench_suite(self) -> None:
        """The built-in micro-suite on each side, one after the other (an idle host each), then judged."""
        bench = self.plan.bench
        for env, results in (
            (self.plan.source_env, self.state.poc.source_bench),
            (self.plan.target_env, self.state.poc.target_bench),
        ):
            request = BenchInput(
                environment=env.name, trials=bench.trials, matrix_size=bench.matrix_size, device=bench.device,
                seconds_per_test=bench.seconds_per_test, sustained_seconds=bench.sustained_seconds,
                allreduce_processes=bench.allreduce_processes,
                telemetry_url=metadata_spec(env.storage).url + f"/bench/{self.state.migration_id}",
            )  # fmt: skip
            summary = f"benchmark on {env.name} ({bench.trials} trials)"
            results.append(await self._on(env, run_benchmark_activity, request, summary, timeout=timedelta(hours=1)))
        thresholds = self.plan.thresholds
        prices = (_price_per_hour(self.plan.source_env), _price_per_hour(self.plan.target_env))
        if workflow.patched(BENCH_SUITE_JUDGE):
            judgement = await workflow.execute_activity(
                judge_bench_activity,
                JudgeBenchInput(
                    source=self.state.poc.source_bench, target=self.state.poc.target_bench,
                    tolerances=BenchTolerances(
                        min_throughput_ratio=thresholds.min_throughput_ratio,
                        latency_increase_pct=thresholds.latency_increase_pct,
                        min_ceiling_fraction=self.plan.bench.min_ceiling_fraction,
                        max_sustained_drop_pct=self.plan.bench.max_sustained_drop_pct,
                    ),
                    source_name=self.plan.source, target_name=self.plan.target, source_price_per_hour=prices[0],
                    target_price_per_hour=prices[1], max_cost_ratio=thresholds.max_cost_ratio,
                ),
                task_queue=CONTROL_TASK_QUEUE, start_to_close_timeout=QUICK,
                summary="micro-suite side by side, against datasheet ceilings; environment matrix",
            )  # fmt: skip
            self.state.poc.judgement, self.state.poc.comparison = judgement, judgement.comparison
            self.record_verdict(judgement.verdict)
            return
        comparison = await workflow.execute_activity(
            compare_benchmarks,
            CompareBenchInput(
                source=self.state.poc.source_bench, target=self.state.poc.target_bench,
                source_price_per_hour=prices[0], target_price_per_hour=prices[1],
                min_throughput_ratio=thresholds.min_throughput_ratio, max_cost_ratio=thresholds.max_cost_ratio,
            ),
            task_queue=CONTROL_TASK_QUEUE, start_to_close_timeout=QUICK,
            summary="compare benchmarks and cost per unit of work",
        )  # fmt: skip
        self.state.poc.comparison = comparison
        self.record_verdict(comparison.verdict)

    async def _bench_job(self, job: JobSpec) -> None:
        """The operator's job for `bench.job_steps` steps, `trials` times on each side: speed and cost per epoch."""
        trials = {}
        for env in (self.plan.source_env, self.plan.target_env):
            trials[env.name] = [
                await self._run_job(job, env, "bench", trial) for trial in range(self.plan.bench.trials)
            ]
        target_egress = self.state.egress_cost_usd
        comparison = await workflow.execute_activity(
            judge_job_bench,
            JudgeJobBenchInput(
                job=job,
                source=JobBenchSide(environment=self.plan.source, trials=trials[self.plan.source],
                                    price_per_gpu_hour=self.plan.source_env.compute.price_per_gpu_hour),
                target=JobBenchSide(environment=self.plan.target, trials=trials[self.plan.target],
                                    price_per_gpu_hour=self.plan.target_env.compute.price_per_gpu_hour,
                                    egress_usd=target_egress),
                cost=self.plan.bench.cost, min_throughput_ratio=self.plan.thresholds.min_throughput_ratio,
                max_cost_ratio=self.plan.thresholds.max_cost_ratio, confidence=self.plan.thresholds.confidence,
            ),
            task_queue=CONTROL_TASK_QUEUE, start_to_close_timeout=QUICK,
            summary=f"{job.name}: samples/s, step time, cost per epoch on both sides",
        )  # fmt: skip
        self.state.poc.job_bench = comparison
        self.record_verdict(comparison.verdict)

    async def _run_job(self, job: JobSpec, env: Environment, arm: str, trial: int = 0) -> JobResult:
        """One run of the operator's job on `env`'s worker, reading that environment's copy of its data."""
        datasets = {d.name: d.path for d in self.plan.workloads.datasets if d.name in job.uses}
        request = RunJobInput(
            job=job, environment=env.name, arm=arm, store=env.storage, datasets=datasets,
            code_root=self.state.poc.code_roots.get(job.name), artifacts=metadata_spec(env.storage),
            artifact_prefix=f"jobs/{self.state.migration_id}/{job.name}/{arm}-{trial}-{env.name}",
            stop_after_steps=self.plan.bench.job_steps if arm == "bench" else None,
        )  # fmt: skip
        return await self._on(env, run_job, request, f"{job.name} ({arm}) on {env.name}",
                              timeout=job.timeout + timedelta(minutes=30))  # fmt: skip

    async def _inspect_checkpoints(self) -> dict[str, float]:
        """Read every checkpoint's headers at the source, executing nothing: refuse what would run code."""
        source, parameters = self.plan.source_env, {}
        for checkpoint in self.plan.workloads.checkpoints:
            try:
                inspection = await self._on(
                    source, inspect_checkpoint,
                    InspectInput(store=source.storage, path=checkpoint.path, environment=source.name, digests=False),
                    f"inspect {checkpoint.name} (headers, nothing executed)",
                )  # fmt: skip
            except ActivityError as error:
                cause = error.cause
                if isinstance(cause, ApplicationError) and cause.type in CHECKPOINT_REFUSALS:
                    raise StopMigration(f"checkpoint {checkpoint.name}: {cause.message}") from None
                raise
            parameters[checkpoint.name] = inspection.parameters / 1e9
        return parameters

    async def _checkpoint_reports(self) -> None:
        """Each checkpoint read again at the source (digests) and judged on the target's worker after the copy."""
        source, target = self.plan.source_env, self.plan.target_env
        for checkpoint in self.plan.workloads.checkpoints:
            inspection = await self._on(
                source, inspect_checkpoint,
                InspectInput(store=source.storage, path=checkpoint.path, environment=source.name),
                f"per-tensor digests of {checkpoint.name} at {source.name}",
            )  # fmt: skip
            report = await self._on(
                target, checkpoint_compatibility,
                CompatibilityInput(
                    name=checkpoint.name, store=target.storage, path=checkpoint.path, source=inspection,
                    environment=target.name, target_gpu_type=target.compute.gpu_type,
                    target_gpu_count=target.compute.gpu_count, target_world_size=checkpoint.world_size,
                ),
                f"does {checkpoint.name} load on {target.name}?",
            )  # fmt: skip
            self.state.poc.checkpoints.append(report)
            self.record_verdict(report.verdict)

    def _encrypted(self) -> list[Checkpoint]:
        return [c for c in self.plan.workloads.checkpoints if c.encryption is not None]

    async def _seal(self, checkpoint: Checkpoint) -> SealResult:
        """Move a checkpoint sealed under the operator's key; only the target's worker decrypts it."""
        source, target = self.plan.source_env, self.plan.target_env
        self.register_undo(
            Compensation.of(remove_sealed, RemoveSealedInput(store=target.storage, sealed_path=checkpoint.path),
                            task_queue=target.task_queue,
                            summary=f"delete the sealed copy of {checkpoint.name} at {target.name}"),
            announce=f"delete the sealed copy of {checkpoint.name} at {target.name}",
        )  # fmt: skip
        assert checkpoint.encryption is not None
        sealed = await self._on(
            source, seal_checkpoint,
            SealInput(name=checkpoint.name, source=source.storage, source_path=checkpoint.path,
                      target=target.storage, target_path=checkpoint.path, key=checkpoint.encryption),
            f"seal {checkpoint.name} at {source.name} and send the chunks the target lacks",
        )  # fmt: skip
        self.state.egress_bytes += sealed.bytes_sent
        self.state.egress_cost_usd = round(
            self.state.egress_cost_usd + sealed.bytes_sent / 1e9 * source.egress_per_gb_usd, 6
        )
        opened = await self._on(
            target, open_sealed,
            OpenSealedInput(name=checkpoint.name, store=target.storage, sealed_path=checkpoint.path,
                            destination_path=checkpoint.path),
            f"verify and decrypt {checkpoint.name} on {target.name}'s worker",
        )  # fmt: skip
        self.register_undo(
            Compensation.of(remove_sealed, RemoveSealedInput(store=target.storage, sealed_path=checkpoint.path,
                                                             written=opened.written),
                            task_queue=target.task_queue,
                            summary=f"delete the decrypted copy of {checkpoint.name} at {target.name}"),
            announce=f"delete the decrypted copy of {checkpoint.name} at {target.name}",
        )  # fmt: skip
        self.show_details()
        return sealed

    async def parallel_run(self) -> None:
        if self.plan.workloads.jobs:
            for job in self.plan.workloads.jobs:
                await self._job_arms(job)
            return
        if not self.plan.workloads.datasets:
            self.audit("skyshift", "parallel_run_skipped", "the plan has no dataset to train on")
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
            summary = f"seeded training on {env.name}'s copy of {dataset.name}"
            results.append(await self._on(env, train_seeded, request, summary, timeout=timedelta(hours=2)))
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
        self.record_verdict(verdict)
        if verdict.outcome == "fail":
            self.start_rollback(f"parallel run: {verdict.summary}", by="skyshift:parallel_run")
            self.raise_if_rollback()

    async def _job_arms(self, job: JobSpec) -> None:
        """Source, source again, target: the target's differences count only where they beat the source's own."""
        source, target = self.plan.source_env, self.plan.target_env
        first = await self._run_job(job, source, "source")
        repeat = await self._run_job(job, source, "source-repeat")
        moved = await self._run_job(job, target, "target")
        comparison = await workflow.execute_activity(
            compare_job_arms,
            CompareJobArmsInput(job=job.name, source=first, source_repeat=repeat, target=moved,
                                tolerances=self.plan.parallel_run.jobs),
            task_queue=CONTROL_TASK_QUEUE, start_to_close_timeout=timedelta(hours=1), heartbeat_timeout=HEARTBEAT,
            cancellation_type=WAIT_CANCELLED, summary=f"{job.name}: three arms against the noise floor",
        )  # fmt: skip
        self.state.jobs.append(comparison)
        self.state.parallel_run = comparison.verdict
        self.record_verdict(comparison.verdict)
        if comparison.verdict.outcome == "fail":
            self.start_rollback(f"parallel run of {job.name}: {comparison.verdict.summary}", by="skyshift:parallel_run")
            self.raise_if_rollback()

    async def shadow(self) -> None:
        """The same requests to both endpoints before any traffic moves: outputs judged against the source's noise."""
        router = self.plan.workloads.router
        if router is not None and any(e.shadow.mirror_percent > 0 for e in self._shadowed()):
            self.register_undo(
                Compensation.of(set_mirror, MirrorInput(router=router, percent=0), task_queue=CONTROL_TASK_QUEUE,
                                summary="stop mirroring live traffic to the target"),
                announce="stop mirroring live traffic to the target",
            )  # fmt: skip
        thresholds = self.plan.thresholds
        limits = ShadowThresholds(latency_increase_pct=thresholds.latency_increase_pct,
                                  error_rate_increase_pp=thresholds.error_rate_increase_pp,
                                  confidence=thresholds.confidence)  # fmt: skip
        for pair in self._shadowed():
            result = await workflow.execute_activity(
                run_shadow,
                RunShadowInput(endpoint=pair, store=self.plan.source_env.storage, router=router, thresholds=limits),
                task_queue=CONTROL_TASK_QUEUE, start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=HEARTBEAT,
                cancellation_type=WAIT_CANCELLED, summary=f"shadow {pair.name}: source twice, target once",
            )  # fmt: skip
            self.state.shadow.append(result)
            self.record_verdict(result.verdict)
            if result.verdict.outcome == "fail":
                self.start_rollback(f"shadow {pair.name}: {result.verdict.summary}", by="skyshift:shadow")
                self.raise_if_rollback()
            if result.verdict.outcome != "pass" or pair.shadow.approval:
                await self.gate(
                    f"shadow-{pair.name}", f"shadow verdict {result.verdict.outcome}: {result.verdict.summary}"
                )

    async def decommission(self) -> None:
        await self.wait(lambda: False, timeout=self.plan.soak_period, summary="soak at 100% before decommission")
        await self.gate("decommission", "archive and release the source: the last steps cannot be undone")
        result = self.state.decommission
        plain = self._plain_workloads()
        result.final_sync = await self._together([self._copy(w, p, "final") for w, p in plain])
        for checkpoint in self._encrypted():
            await self._seal(checkpoint)  # incremental: only chunks the sealed copy lacks are sent
        for name, path in self._workloads():
            request = self._archive_input(name, path)
            archived = await self._on(self.plan.source_env, archive_workload, request, f"archive {name}")
            result.archived_objects += archived.objects
            verified = await self._on(self.plan.target_env, verify_archive, request, f"verify {name} at target")
            result.verified_objects += verified.objects_verified
        if not self.plan.decommission.delete_source:
            self.audit("skyshift", "source_kept", "plan keeps the source copies (decommission.delete_source: false)")
            return
        self.state.point_of_no_return = True
        self.state.saga.forget()
        self.audit("skyshift", "point_of_no_return", "releasing source data; rollback is no longer possible")
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
        self.audit(request.by, "approved", f"{gate.stage}{': ' + request.note if request.note else ''}")
        self.state.pending_gate = None
        self.show_details()
        return gate.stage

    @approve.validator
    def _validate_approve(self, request: ApproveInput) -> None:
        gate = self.state.pending_gate
        if gate is None:
            raise ValueError(f"nothing is awaiting approval (phase {self.state.phase}); '{request.stage}' rejected")
        if gate.stage != request.stage:
            raise ValueError(f"'{request.stage}' is not awaiting approval; the pending gate is '{gate.stage}'")

    @workflow.signal
    def rollback(self, raw: Any) -> None:
        """Fire-and-forget form of `request_rollback`, for clients that only send signals.

        Taken raw and validated here: a malformed request from any Temporal client is audited as
        rejected instead of being dropped by the SDK with only a worker log line.
        """
        try:
            request = RollbackInput.model_validate(raw)
        except ValidationError as error:
            self.audit("unknown", "rollback_rejected", f"malformed rollback signal: {error.errors()[0]['msg']}")
            return
        if self._rollback_refusal() is not None:
            self.audit(request.by, "rollback_ignored", f"{request.reason}: {self._rollback_refusal()}")
            return
        self.start_rollback(request.reason, request.by)

    @workflow.update
    def request_rollback(self, request: RollbackInput) -> str:
        """Force a rollback; the caller learns at once whether it was accepted (the validator) and the phase."""
        self.start_rollback(request.reason, request.by)
        return self.state.phase

    @request_rollback.validator
    def _validate_rollback(self, request: RollbackInput) -> None:
        refusal = self._rollback_refusal()
        if refusal is not None:
            raise ValueError(f"rollback rejected: {refusal}")
        if not request.reason.strip():
            raise ValueError("reason: say why the migration is rolled back")

    def _rollback_refusal(self) -> str | None:
        if self.state.outcome is not None:
            return f"the migration already ended ({self.state.outcome})"
        if self.state.point_of_no_return:
            return "past the point of no return: the source is being released"
        if self.state.rollback_request is not None:
            return f"a rollback is already under way (requested by {self.state.rollback_request.by})"
        return None

    @workflow.update
    def skip_stage(self, request: OperatorInput) -> str:
        stage = self.state.stage or ""
        self.state.cutover.skip_requested = True
        self.audit(request.by, "skip_stage", f"{stage}{': ' + request.note if request.note else ''}")
        return stage

    @skip_stage.validator
    def _validate_skip(self, request: OperatorInput) -> None:
        self._require_cutover_stage("skip_stage")
        if self.state.cutover.stage_index >= len(self.plan.cutover.stages) - 1:
            raise ValueError("the last stage cannot be skipped: it is where the cutover ends")

    @workflow.update
    def promote(self, request: OperatorInput) -> str:
        self.state.cutover.promote_requested = True
        self.audit(
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
        self.audit(request.by, "paused", request.note)
        self.show_details()

    @workflow.signal
    def resume(self, request: OperatorInput) -> None:
        self.state.paused = False
        self.audit(request.by, "resumed", request.note)
        self.show_details()

    # -- helpers shared by the phases -------------------------------------------------------------

    def _workloads(self) -> list[tuple[str, str]]:
        """Every (name, path) the migration moves: datasets, checkpoints and the jobs' code."""
        w = self.plan.workloads
        return (
            [(d.name, d.path) for d in w.datasets]
            + [(c.name, c.path) for c in w.checkpoints]
            + [(j.name, j.code) for j in w.jobs]
        )

    def _plain_workloads(self) -> list[tuple[str, str]]:
        """What the delta engine copies as is: everything but checkpoints moved sealed."""
        sealed = {c.name for c in self._encrypted()}
        return [(name, path) for name, path in self._workloads() if name not in sealed]

    def _archive_input(self, name: str, path: str) -> ArchiveInput:
        return ArchiveInput(
            migration_id=self.state.migration_id,
            workload=name,
            path=path,
            source=self.plan.source_env.storage,
            target=self.plan.target_env.storage,
        )

    async def _on(self, env: Environment, activity, argument, summary: str, timeout: timedelta = LONG):
        """Run work on an environment's worker: heartbeated, and cancelled only once it has stopped."""
        return await workflow.execute_activity(
            activity,
            argument,
            task_queue=env.task_queue,
            start_to_close_timeout=timeout,
            heartbeat_timeout=HEARTBEAT,
            cancellation_type=WAIT_CANCELLED,
            summary=summary,
        )

    async def _together(self, works: list[Coroutine[Any, Any, SyncResult]]) -> list[SyncResult]:
        """Run work side by side; when one fails, stop the others (and wait for them) before the undo."""
        tasks = [asyncio.ensure_future(work) for work in works]
        if not tasks:
            return []
        try:
            await workflow.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            # Cancelled from above (a rollback, a cancel): `wait` does not pass that on; stop each child and wait.
            for task in tasks:
                task.cancel()
            await workflow.wait(tasks)
            raise
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
        if failed and workflow.patched(COMPENSATE_EVERY_EXIT):
            for task in tasks:
                task.cancel()
            await workflow.wait(tasks)
            raise failed[0].exception()  # the failure, not the cancellations it caused
        return [await task for task in tasks]

    async def _copy(self, name: str, path: str, phase: str) -> SyncResult:
        """Delta-sync one workload to the target as a child workflow; its undo is registered first."""
        source, target = self.plan.source_env, self.plan.target_env
        ledger = ledger_key(self.state.migration_id, name)
        self.register_undo(
            Compensation.of(
                remove_created, LedgerInput(target=target.storage, ledger_key=ledger), task_queue=target.task_queue,
                summary=f"delete what the migration created for {name} at {target.name}",
            ),
            announce=f"delete {name} copies at {target.name}",
        )  # fmt: skip
        result = await workflow.execute_child_workflow(
            DatasetSyncWorkflow.run,
            SyncInput(source=source.storage, target=target.storage, source_queue=source.task_queue,
                      target_queue=target.task_queue, path=path, egress_per_gb_usd=source.egress_per_gb_usd,
                      ledger_key=ledger),
            id=f"{self.state.migration_id}-{phase}-sync-{name}",
            static_summary=f"sync {name}: {source.name} → {target.name}",
            cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
        )  # fmt: skip
        self.state.egress_bytes += result.egress_bytes
        self.state.egress_cost_usd = round(self.state.egress_cost_usd + result.egress_cost_usd, 6)
        self.show_details()
        return result

    async def gate(self, stage: str, reason: str, deadline: timedelta | None = None) -> bool:
        """Wait for `approve(stage)` or a rollback; return False if the deadline passed unanswered."""
        self.state.pending_gate = Gate(stage=stage, reason=reason, opened_at=workflow.now())
        self.audit("skyshift", "awaiting_approval", f"{stage}: {reason}")
        self.show_details()
        try:
            await self.wait(lambda: self.state.pending_gate is None, timeout=deadline, summary=f"await {stage}")
            answered = self.state.pending_gate is None
        finally:
            self.state.pending_gate = None
        if not answered:
            self.audit("skyshift", "gate_expired", f"{stage}: nobody answered within {deadline}")
        return answered

    async def wait(
        self, done: Callable[[], bool], timeout: timedelta | None = None, summary: str | None = None
    ) -> None:
        """Wait for `done` (or time out); a rollback request always ends the wait by raising."""
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: done() or self.state.rollback_request is not None, timeout=timeout, timeout_summary=summary
            )
        self.raise_if_rollback()

    async def checkpoint(self) -> None:
        """Between steps: honour a pause (until resume) and a rollback request."""
        await self.wait(lambda: not self.state.paused)

    def start_rollback(self, reason: str, by: str) -> None:
        if self.state.rollback_request is None:
            self.state.rollback_request = RollbackInput(reason=reason, by=by)
            self.audit(by, "rollback_requested", reason)
            metrics.rollback(by)

    def raise_if_rollback(self) -> None:
        if self.state.rollback_request is not None:
            raise RollbackRequested()

    def register_undo(self, step: Compensation, announce: str) -> None:
        """Record the undo of a step *before* the step acts; audited the first time it is registered."""
        if self.state.saga.register(step):
            self.audit("skyshift", "compensation_registered", announce)

    async def _undo(self, outcome: str, reason: str) -> None:
        """Compensate newest first, shielded from a cancellation of the workflow, then record the outcome."""
        self.state.ended_in = self.state.phase
        self._set_phase("rolling_back")
        self.state.pending_gate = None
        await asyncio.shield(asyncio.ensure_future(self.state.saga.compensate(self._compensated)))
        for failure in self.state.saga.failed:
            self.audit("skyshift", "compensation_failed", f"{failure.summary}: {failure.error}")
        if self.state.saga.failed:
            reason += f"; {len(self.state.saga.failed)} compensations failed and need an operator (see audit)"
        self._finish(outcome, reason)

    def _compensated(self, step: Compensation) -> None:
        if step.activity == "route_traffic":
            self.state.traffic_percent = 0
            workflow.upsert_search_attributes([SA_TRAFFIC.value_set(0)])
        self.audit("skyshift", "compensated", step.summary)

    def _finish(self, outcome: str, reason: str) -> None:
        self.state.outcome = outcome
        self.state.outcome_reason = reason
        self._set_phase("done")  # SkyshiftPhase holds what `status` shows; the outcome has its own attribute
        workflow.upsert_search_attributes([SA_OUTCOME.value_set(outcome)])
        self.audit("skyshift", outcome, reason)
        self.show_details()

    def _set_phase(self, phase: str) -> None:
        self.state.phase = phase
        workflow.upsert_search_attributes([SA_PHASE.value_set(phase)])
        self.show_details()

    def record_verdict(self, verdict: Verdict) -> None:
        self.state.verdicts = [*self.state.verdicts, verdict][-MAX_VERDICTS:]
        metrics.verdict(verdict.outcome, subject=verdict.subject)
        workflow.upsert_search_attributes([SA_VERDICT.value_set(verdict.outcome)])
        self.show_details()

    def audit(self, actor: str, action: str, detail: str = "") -> None:
        self.state.audit.append(AuditEntry(at=workflow.now(), actor=actor, action=action, detail=detail))

    def continue_as_new_if_suggested(self) -> None:
        if workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished():
            workflow.continue_as_new(MigrationInput(plan=self.plan, resume=self.state))

    def show_details(self) -> None:
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
