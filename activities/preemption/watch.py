"""The watcher activity: runs on an environment's worker beside a training run, heartbeats, and
returns (or signals) the provider's notice.

A workflow starts `watch_preemption` next to the run it protects (same task queue, a heartbeat
timeout of a few poll intervals) and either awaits it or is woken by its signal
(`PREEMPTION_SIGNAL`, carrying a `PreemptionSignal`) when `signal_workflow_id` names a workflow: so
one watcher can wake a workflow that is busy awaiting something else. Answers that cannot be read
are counted and heartbeated, never returned as a notice. The activity ends on a notice of a kind
the caller asked for, when the environment says the instance is gone, or after `max_duration_s`
(so the caller can restart it, e.g. across continue-as-new); cancelling it stops the watch (the
cancellation arrives with a heartbeat's answer, which the SDK throttles to 0.8 x the heartbeat
timeout: ~18 s with `heartbeat_timeout_for`'s 22 s; the watcher only reads, so the wait is harmless).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.preemption.base import Notice, NoticeKind, Observation, UnreadableAnswer, WatcherConfig
from activities.preemption.registry import open_watcher

#: The signal a watcher sends to `signal_workflow_id`; its argument is a `PreemptionSignal`.
PREEMPTION_SIGNAL = "preemption_notice"
#: While a look blocks (a long-poll, a slow server) the activity still heartbeats this often.
HEARTBEAT_EVERY_S = 5.0
#: After an unreadable answer, a long-polling watcher waits this long before looking again.
RETRY_AFTER_FAILURE_S = 5.0


class WatchPreemptionInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: str = Field(description="The environment whose machine is watched (for the notice's reader)")
    watcher: WatcherConfig
    kinds: list[NoticeKind] = Field(
        default_factory=lambda: ["preempt", "rebalance", "maintenance"],
        description="Notice kinds that end the watch; others are recorded as seen and ignored",
    )
    seen: list[str] = Field(default_factory=list, description="Notice keys already handled: never returned again")
    signal_workflow_id: str | None = Field(None, description="Signal this workflow with the notice, then return")
    max_duration_s: float | None = Field(
        None, gt=0, description="Return without a notice after this long (the caller restarts the watch)"
    )


class WatchProgress(BaseModel):
    """Heartbeat details: what a retried attempt continues from."""

    looks: int = 0
    unreachable: int = 0
    seen: list[str] = Field(default_factory=list)
    last_error: str | None = None


class WatchPreemptionResult(BaseModel):
    environment: str
    notice: Notice | None = None
    gone: bool = Field(False, description="The environment said the instance no longer exists")
    looks: int = 0
    unreachable: int = Field(0, description="Looks that got no readable answer (never counted as notices)")
    last_error: str | None = None
    signalled: str | None = Field(None, description="The workflow id that was signalled, if any")


class PreemptionSignal(BaseModel):
    environment: str
    notice: Notice


class AcknowledgeInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    watcher: WatcherConfig
    notice: Notice


def _open(config: WatcherConfig):
    """The watcher, or a non-retryable failure naming what is missing (retrying cannot supply it)."""
    try:
        return open_watcher(config)
    except ValueError as error:
        raise ApplicationError(str(error), type="InvalidWatcherConfig", non_retryable=True) from None


def _progress() -> WatchProgress:
    details = activity.info().heartbeat_details
    if details:
        try:
            return WatchProgress.model_validate(details[0])  # heartbeat details come back as dicts
        except (ValueError, TypeError):
            pass
    return WatchProgress()


async def _look(watcher, seen: frozenset[str], progress: WatchProgress) -> Observation:
    """One observation, heartbeating while it blocks (a GCP long-poll can hold a minute)."""
    look = asyncio.ensure_future(asyncio.to_thread(watcher.observe, seen))
    try:
        while True:
            done, _ = await asyncio.wait({look}, timeout=HEARTBEAT_EVERY_S)
            if done:
                return look.result()
            activity.heartbeat(progress.model_dump())
    except asyncio.CancelledError:
        look.cancel()  # the thread ends with its request timeout; nothing waits for its answer
        raise


async def _pause(seconds: float, progress: WatchProgress) -> None:
    """Sleep between looks, heartbeating, so the heartbeat timeout need not exceed the poll interval."""
    while seconds > 0:
        step = min(seconds, HEARTBEAT_EVERY_S)
        await asyncio.sleep(step)
        seconds -= step
        activity.heartbeat(progress.model_dump())


@activity.defn(name="watch_preemption")
async def watch_preemption(request: WatchPreemptionInput) -> WatchPreemptionResult:
    progress = _progress()
    seen = set(request.seen) | set(progress.seen)
    watcher = _open(request.watcher)
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + request.max_duration_s if request.max_duration_s else None
    result = WatchPreemptionResult(environment=request.environment)
    try:
        while True:
            observation = await _look(watcher, frozenset(seen), progress)
            progress.looks += 1
            if not observation.reachable:
                progress.unreachable += 1
                progress.last_error = observation.error
            notice = observation.notice
            if notice is not None and notice.kind in request.kinds:
                result.notice = notice
                break
            if notice is not None:
                seen.add(notice.key)
                progress.seen = sorted(seen)
            if observation.gone:
                result.gone = True
                progress.last_error = observation.error
                break
            activity.heartbeat(progress.model_dump())
            if ends_at is not None and loop.time() >= ends_at:
                break
            if not observation.reachable:
                pause = min(watcher.poll_interval_s, RETRY_AFTER_FAILURE_S)
            else:
                pause = 0.0 if watcher.waits_itself else watcher.poll_interval_s
            if ends_at is not None:
                pause = min(pause, max(0.0, ends_at - loop.time()))
            await _pause(pause, progress)
    finally:
        watcher.close()
    result = result.model_copy(
        update={"looks": progress.looks, "unreachable": progress.unreachable, "last_error": progress.last_error}
    )
    if result.notice is not None and request.signal_workflow_id:
        payload = PreemptionSignal(environment=request.environment, notice=result.notice)
        await _signal(request.signal_workflow_id, payload)
        result = result.model_copy(update={"signalled": request.signal_workflow_id})
    return result


async def _signal(workflow_id: str, payload: PreemptionSignal) -> None:
    try:
        await activity.client().get_workflow_handle(workflow_id).signal(PREEMPTION_SIGNAL, payload)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ApplicationError(
                f"signal_workflow_id: workflow {workflow_id!r} is not running; the notice was: "
                f"{payload.notice.kind} from {payload.notice.provider}",
                type="WorkflowNotFound",
                non_retryable=True,
            ) from None
        raise


@activity.defn(name="acknowledge_preemption")
async def acknowledge_preemption(request: AcknowledgeInput) -> bool:
    """Let the provider start the event now (Azure StartRequests), once the checkpoint is safe.
    False where the provider has no such step; an unreadable answer retries."""
    watcher = _open(request.watcher)
    try:
        return await asyncio.to_thread(watcher.acknowledge, request.notice)
    except UnreadableAnswer as error:
        raise RuntimeError(str(error)) from None
    finally:
        watcher.close()


def heartbeat_timeout_for(config: WatcherConfig) -> timedelta:
    """A heartbeat timeout that a healthy watcher never misses: a few heartbeats' worth plus one request."""
    return timedelta(seconds=3 * HEARTBEAT_EVERY_S + config.request_timeout_s + 5)
