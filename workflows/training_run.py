"""TrainingRunWorkflow: a production training run that skyshift owns, and moves without a human.

DESIGN §11 "A training run is durable". The run is a resumable job (plan `resume:`) executed in
segments, each one long heartbeated `run_job` on the worker of the environment it runs in. What the
workflow keeps is small: where the run is, its newest checkpoint (a reference: prefix, step, size,
and the environment whose metadata store holds it), its step, and the events (moves, hand-backs)
with their timings. Series and bytes stay in the stores.

`move(to, reason)` (a signal, so a parent workflow can send it too) is the one move of handoff,
preemption and failback: the running segment is cancelled, which `run_job` (with
`sigterm_on_cancel`) turns into SIGTERM → the job checkpoints within `resume.grace` and exits 0 →
the checkpoint is put in the origin's metadata store. Then the checkpoint prefix (and the datasets
the job uses) are delta-synced to the destination by sync children, the destination resumes the
job for `watch_steps` steps, and those steps are judged (`judge_move`) against the run's own
continuation: the origin resumed from the same checkpoint for the same steps, twice for the floor.
A passing verdict leaves the run on the destination; a failing one **hands back**: the run resumes
on the origin from the very checkpoint it handed off (still in the origin's store, untouched by the
destination's attempt). A job that ignores SIGTERM past its grace is a failed move: the run stays on
the origin and resumes from its newest periodic checkpoint.

A parent (the migration) is told of every move by its `training_run_event` signal.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError
from temporalio.workflow import ActivityCancellationType, ChildWorkflowCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.jobs import (
        CheckpointRef,
        HandoffComparison,
        HandoffMeasures,
        JobResult,
        JobSpec,
        JobTolerances,
        JudgeMoveInput,
        RunJobInput,
        judge_move,
        run_job,
    )
    from activities.preemption.base import WatcherConfig
    from activities.preemption.fallback import Eviction, FallbackCandidate, choose_fallback
    from activities.preemption.watch import (
        PREEMPTION_SIGNAL,
        PreemptionSignal,
        WatchPreemptionInput,
        heartbeat_timeout_for,
        watch_preemption,
    )
    from activities.stores.base import metadata_spec
    from workflows.plan import CONTROL_TASK_QUEUE, Environment
    from workflows.sync import DatasetSyncWorkflow, SyncInput, SyncResult
    from workflows.training_events import MoveRequest, RunEvent

#: A move's cancellation reaches the running job through its next heartbeat; the SDK sends at most
#: one per 0.8 x this, so it bounds how long a move waits before SIGTERM.
JOB_HEARTBEAT = timedelta(seconds=10)
#: The name of the parent's signal that hears about each move (MigrationWorkflow.training_run_event).
PARENT_SIGNAL = "training_run_event"
#: Beyond the job's own timeout: fetching its code, data and checkpoint, and putting its results.
SLACK = timedelta(minutes=30)


class TrainingRunState(BaseModel):
    environment: str = Field(description="Where the run runs now")
    status: Literal["running", "moving", "finished", "failed"] = "running"
    step: int | None = Field(None, description="The last step logged")
    checkpoint: CheckpointRef | None = Field(None, description="The newest checkpoint (a reference)")
    checkpoint_env: str | None = Field(None, description="The environment whose metadata store holds it")
    segments: int = 0
    events: list[RunEvent] = Field(default_factory=list)
    pending_move: MoveRequest | None = None
    evictions: list[Eviction] = Field(default_factory=list, description="Preemption notices acted on (zone, when)")
    notices_seen: list[str] = Field(default_factory=list, description="Notice keys already handled")
    detail: str = ""


class TrainingRunInput(BaseModel):
    run_id: str = Field(min_length=1, description="Names the checkpoint prefix and the run's artifacts")
    job: JobSpec
    environments: list[Environment] = Field(min_length=1, description="Where the run may run")
    start_on: str
    datasets: dict[str, str] = Field(default_factory=dict, description="Dataset name -> its path in each store")
    code_root: str | None = None
    watch_steps: int = Field(10, ge=1, description="Steps after a move judged against the run's continuation")
    tolerances: JobTolerances = Field(default_factory=JobTolerances)
    state: TrainingRunState | None = Field(None, description="Carried across continue-as-new")


def checkpoint_prefix(run_id: str, job: str) -> str:
    """The same prefix in every environment's metadata store: the delta engine rebuilds from what is there."""
    return f"runs/{run_id}/{job}/checkpoint"


@workflow.defn(name="TrainingRunWorkflow")
class TrainingRunWorkflow:
    @workflow.init
    def __init__(self, input: TrainingRunInput) -> None:
        self.input = input
        self.state = input.state or TrainingRunState(environment=input.start_on)
        self.envs = {env.name: env for env in input.environments}

    # -- messages -------------------------------------------------------------------------------

    @workflow.signal
    def move(self, request: MoveRequest) -> None:
        """Move the run to `request.to`; ignored (with a reason in `detail`) when it cannot be moved now."""
        if request.to not in self.envs:
            self.state.detail = f"move to {request.to} ignored: not one of {', '.join(self.envs)}"
        elif self.state.status != "running" or self.state.pending_move is not None:
            self.state.detail = f"move to {request.to} ignored: the run is {self.state.status}"
        elif request.to == self.state.environment:
            self.state.detail = f"move to {request.to} ignored: the run is there already"
        else:
            self.state.pending_move = request

    @workflow.signal(name=PREEMPTION_SIGNAL)
    def preemption_notice(self, signal: PreemptionSignal) -> None:
        """The watcher beside the job read a notice: move to the first fallback `choose_fallback` gives."""
        s, notice = self.state, signal.notice
        if notice.key in s.notices_seen or signal.environment != s.environment:
            return
        s.notices_seen = [*s.notices_seen, notice.key][-50:]
        here = self.envs[s.environment]
        s.evictions = [*s.evictions, Eviction(environment=here.name, zone=here.region, at=workflow.now())][-20:]
        names = self.input.job.fallback or [e.name for e in self.input.environments if e.name != here.name]
        candidates = [FallbackCandidate(environment=n, zone=self.envs[n].region) for n in names if n in self.envs]
        choice = choose_fallback(candidates, s.evictions, workflow.now())
        if choice.environment is None or choice.environment == s.environment:
            s.detail = f"{notice.provider} {notice.kind} notice on {here.name}: {choice.reason}; nowhere else to go"
            return
        why = f"{notice.provider} {notice.kind} notice on {here.name}: {choice.reason}"
        self.move(MoveRequest(to=choice.environment, kind="preemption", by=f"{notice.provider} notice", reason=why,
                              noticed_at=notice.seen_at))  # fmt: skip

    @workflow.query
    def status(self) -> TrainingRunState:
        return self.state

    # -- the run --------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: TrainingRunInput) -> TrainingRunState:
        s = self.state
        while s.status == "running":
            self._show()
            result = await self._segment(self.envs[s.environment])
            if result is None:  # a move asked before the job ran: run it to its next step, then SIGTERM
                at = s.checkpoint.step + 1 if s.checkpoint is not None else 0
                result = await self._segment(self.envs[s.environment], at_step=at)
            self._absorb(result)
            request, s.pending_move = s.pending_move, None
            if request is not None and result.status != "checkpointed" and result.handoff != "ignored_sigterm":
                await self._record(request, RunEvent(
                    kind=request.kind, origin=s.environment, destination=request.to, reason=request.reason,
                    by=request.by, at=workflow.now(), outcome="ended_first",
                    checkpoint_step=s.checkpoint.step if s.checkpoint else None,
                    summary=f"the run ended before it could move: {result.detail}",
                ))  # fmt: skip
            if result.status == "succeeded":
                s.status, s.detail = "finished", f"finished on {s.environment}: {result.detail}"
            elif request is not None and result.status == "checkpointed":
                s.status = "moving"
                await self._move(request, result)
                s.status = "running"
            elif request is not None and result.handoff == "ignored_sigterm":
                # A failed move: nothing was synced, nothing ran elsewhere; the run goes on where it was,
                # from its newest periodic checkpoint (what the job logged past it is lost).
                step = s.checkpoint.step if s.checkpoint else None
                await self._record(request, RunEvent(
                    kind="failed_move", origin=s.environment, destination=request.to, reason=request.reason,
                    by=request.by, at=workflow.now(), outcome="stayed", checkpoint_step=step,
                    steps_lost=(result.last_step - step) if result.last_step is not None and step is not None else None,
                    summary=result.detail,
                ))  # fmt: skip
            else:
                s.status, s.detail = "failed", f"on {s.environment}: {result.detail}"
            if s.status == "running" and workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self.input.model_copy(update={"state": s}))
        self._show()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return s

    def _request(self, env: Environment, label: str, **fields) -> RunJobInput:
        job = self.input.job
        return RunJobInput(
            job=job, environment=env.name, arm="production", store=env.storage, datasets=self.input.datasets,
            code_root=self.input.code_root, artifacts=metadata_spec(env.storage),
            artifact_prefix=f"runs/{self.input.run_id}/{job.name}/{self.state.segments:04d}-{label}-{env.name}",
            checkpoints=metadata_spec(env.storage), **fields,
        )  # fmt: skip

    def _run(self, env: Environment, request: RunJobInput, summary: str):
        return workflow.start_activity(
            run_job, request, task_queue=env.task_queue, start_to_close_timeout=self.input.job.timeout + SLACK,
            heartbeat_timeout=JOB_HEARTBEAT, cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=summary,
        )  # fmt: skip

    async def _segment(self, env: Environment, at_step: int | None = None) -> JobResult | None:
        """Run the job on `env` from the newest checkpoint until it ends or a move is asked for (or, with
        `at_step`, until that step: SIGTERM and a checkpoint). None: cancelled before the job ran."""
        s, prefix = self.state, checkpoint_prefix(self.input.run_id, self.input.job.name)
        s.segments += 1
        resume = prefix if s.checkpoint is not None else None
        request = self._request(env, "run", checkpoint_prefix=prefix, resume_from=resume, sigterm_on_cancel=True,
                                handoff_at_step=at_step)  # fmt: skip
        handle = self._run(env, request, f"{self.input.job.name} on {env.name}")
        if at_step is None:
            watch = self._watch(env)
            await workflow.wait_condition(lambda: handle.done() or s.pending_move is not None)
            if watch is not None and not watch.done():
                watch.cancel()
            if not handle.done():
                handle.cancel()  # run_job turns it into SIGTERM and a checkpoint
        try:
            return await handle
        except ActivityError as error:
            if at_step is None and s.pending_move is not None and isinstance(error.cause, CancelledError):
                return None  # the cancellation reached it before the job's process started
            raise

    def _watch(self, env: Environment):
        """The preemption watcher beside the job (plan `environments[].preemption`): a notice signals this run."""
        if env.preemption == "none":
            return None
        config = WatcherConfig(provider=env.preemption, address=env.preemption_address)
        return workflow.start_activity(
            watch_preemption,
            WatchPreemptionInput(environment=env.name, watcher=config, kinds=["preempt"],
                                 seen=self.state.notices_seen, signal_workflow_id=workflow.info().workflow_id),
            task_queue=env.task_queue, start_to_close_timeout=self.input.job.timeout + SLACK,
            heartbeat_timeout=heartbeat_timeout_for(config), cancellation_type=ActivityCancellationType.TRY_CANCEL,
            summary=f"watch {env.name} for a {env.preemption} preemption notice",
        )  # fmt: skip

    def _absorb(self, result: JobResult) -> None:
        s = self.state
        if result.last_step is not None:
            s.step = result.last_step
        if result.checkpoint is not None:
            s.checkpoint, s.checkpoint_env = result.checkpoint, result.environment

    async def _sync(
        self, origin: Environment, destination: Environment, source, target, path: str, what: str
    ) -> SyncResult:
        return await workflow.execute_child_workflow(
            DatasetSyncWorkflow.run,
            SyncInput(source=source, target=target, source_queue=origin.task_queue, target_queue=destination.task_queue,
                      path=path, egress_per_gb_usd=origin.egress_per_gb_usd),
            id=f"{workflow.info().workflow_id}-{self.state.segments:04d}-sync-{what}",
            static_summary=f"{what}: {origin.name} → {destination.name}",
            cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
        )  # fmt: skip

    async def _move(self, request: MoveRequest, before: JobResult) -> None:
        s, job = self.state, self.input.job
        origin, destination = self.envs[s.environment], self.envs[request.to]
        prefix = checkpoint_prefix(self.input.run_id, job.name)
        moved = await self._sync(origin, destination, metadata_spec(origin.storage),
                                 metadata_spec(destination.storage), prefix, "checkpoint")  # fmt: skip
        data = await asyncio.gather(*(
            self._sync(origin, destination, origin.storage, destination.storage, path, f"dataset-{name}")
            for name, path in sorted(self.input.datasets.items())
        ))  # fmt: skip
        step = before.checkpoint.step
        until = step + self.input.watch_steps
        s.segments += 1
        watched = self._run(destination, self._request(destination, "watch", checkpoint_prefix=prefix,
                                                       resume_from=prefix, handoff_at_step=until),
                            f"{job.name}: first {self.input.watch_steps} steps on {destination.name}")  # fmt: skip
        # The run's own continuation, on the origin from the same checkpoint: nothing is put back in its store.
        references = [
            self._run(origin, self._request(origin, label, resume_from=prefix, stop_after_steps=self.input.watch_steps),
                      f"{job.name}: reference {label} on {origin.name}")
            for label in ("reference", "reference-repeat")
        ]  # fmt: skip
        after, reference, repeat = await asyncio.gather(watched, *references)
        measures = HandoffMeasures(
            checkpoint_bytes=before.checkpoint.bytes,
            bytes_moved=moved.egress_bytes + sum(d.egress_bytes for d in data),
        )
        verdict: HandoffComparison = await workflow.execute_activity(
            judge_move,
            JudgeMoveInput(job=job.name, before=before, after=after, reference=reference, reference_repeat=repeat,
                           watch_steps=self.input.watch_steps, tolerances=self.input.tolerances, measures=measures),
            task_queue=CONTROL_TASK_QUEUE, start_to_close_timeout=timedelta(minutes=30),
            summary=f"{job.name}: the first steps on {destination.name} against its own continuation",
        )  # fmt: skip
        outcome = verdict.comparison.verdict.outcome
        event = RunEvent(
            noticed_at=request.noticed_at, sigterm_at=before.sigterm_at,
            kind=request.kind, origin=origin.name, destination=destination.name, reason=request.reason,
            by=request.by, at=workflow.now(), outcome="moved" if outcome == "pass" else "handed_back",
            checkpoint_step=step, steps_lost=(before.last_step or step) - step,
            seconds_to_first_step=verdict.measures.seconds_to_first_step, bytes_moved=measures.bytes_moved,
            checkpoint_bytes=measures.checkpoint_bytes, verdict=outcome, summary=verdict.comparison.verdict.summary,
        )  # fmt: skip
        if outcome == "pass":
            s.environment = destination.name
            self._absorb(after)
        else:
            # Hand back: the origin's store still holds the checkpoint of `step`; the destination's attempt
            # (its steps, its checkpoint) is not the truth. The run resumes on the origin from `step`.
            event = event.model_copy(update={"kind": "hand_back"})
            s.checkpoint, s.checkpoint_env, s.step = before.checkpoint, origin.name, step
        await self._record(request, event)

    async def _record(self, request: MoveRequest, event: RunEvent) -> None:
        self.state.events.append(event)
        self.state.detail = f"{event.kind} {event.origin} → {event.destination}: {event.outcome}"
        parent = workflow.info().parent
        if parent is not None:
            handle = workflow.get_external_workflow_handle(parent.workflow_id)  # its latest run (continue-as-new)
            try:
                await handle.signal(PARENT_SIGNAL, event)
            except Exception as error:  # a parent that has ended does not stop the run
                workflow.logger.warning("could not tell the parent of %s: %s", event.kind, error)

    def _show(self) -> None:
        s = self.state
        lines = [f"**{self.input.job.name}** on **{s.environment}**: {s.status}, step {s.step}"]
        if s.checkpoint:
            lines.append(
                f"newest checkpoint: step {s.checkpoint.step} ({s.checkpoint.bytes} bytes) on {s.checkpoint_env}"
            )
        for e in s.events[-3:]:
            lines.append(f"{e.kind} {e.origin} → {e.destination}: {e.outcome}, steps lost {e.steps_lost}, "
                         f"SIGTERM → first step {e.seconds_to_first_step}s, {e.bytes_moved} bytes moved")  # fmt: skip
        workflow.set_current_details("\n\n".join(lines))
