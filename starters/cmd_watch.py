"""`skyshift watch ID [--json]`: a migration live, like `kubectl argo rollouts get rollout --watch`.

Driven by the workflow's history, not by a polling interval: the history long-poll returns the moment
something happens, and only then is `status` queried. The durable timers in the history say exactly
when the current cutover stage ends and when the next window is judged, so the countdowns are the
workflow's own, not guesses.

On a terminal one screen redraws in place (rich's Live): phase, stage n/N, traffic, time left, the
pending gate with the exact approve command, the last verdict with its numbers, egress. Not on a
terminal, it prints plain lines as events happen; `--json` prints one JSON object per change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from starters.common import EXIT_FAILED, EXIT_OK, UsageError, with_client
from starters.reconnect import Outage, patiently, unreachable

if TYPE_CHECKING:  # the workflow models load with the command, not with the parser (`skyshift --help`)
    from workflows.plan import MigrationPlan
    from workflows.state import MigrationState

#: Events after which the workflow's state may have changed, so `status` is worth asking again.
STATE_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
}
CLOSED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "COMPLETED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "FAILED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "CANCELED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "TERMINATED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "TIMED_OUT",
}


class Timer(BaseModel):
    summary: str
    started_at: datetime
    fires_at: datetime


class GateView(BaseModel):
    stage: str
    reason: str
    opened_at: datetime
    approve_command: str


class CheckView(BaseModel):
    metric: str
    outcome: str
    source: float | None = None
    target: float | None = None
    observed: float | None = None
    threshold: float | None = None
    p_value: float | None = None


class VerdictView(BaseModel):
    subject: str
    outcome: str
    summary: str
    checks: list[CheckView]


class AuditLine(BaseModel):
    at: datetime
    actor: str
    action: str
    detail: str = ""


class WatchFrame(BaseModel):
    """What the screen shows; `--json` prints one per change. Times are absolute, countdowns derived."""

    id: str
    plan: str
    source: str
    target: str
    workflow_status: str
    phase: str
    stage: str | None = None
    stage_number: int | None = None
    stages_total: int
    traffic_percent: int
    paused: bool = False
    stage_ends_at: datetime | None = None
    next_window_at: datetime | None = None
    timers: list[Timer] = Field(default_factory=list, description="Durable timers the workflow waits on")
    pending_gate: GateView | None = None
    last_verdict: VerdictView | None = None
    egress_bytes: int = 0
    egress_cost_usd: float = 0
    outcome: str | None = None
    outcome_reason: str = ""
    new_audit: list[AuditLine] = Field(default_factory=list, description="Audit entries since the previous frame")
    note: str | None = Field(None, description="e.g. no worker answered the status query")
    stage_left_s: float | None = None
    next_window_s: float | None = None

    def key(self) -> dict:
        """What counts as a change: everything but the countdowns."""
        return self.model_dump(exclude={"stage_left_s", "next_window_s"})

    def at(self, now: datetime) -> WatchFrame:
        left = (self.stage_ends_at - now).total_seconds() if self.stage_ends_at else None
        window = (self.next_window_at - now).total_seconds() if self.next_window_at else None
        return self.model_copy(update={"stage_left_s": None if left is None else max(left, 0.0),
                                       "next_window_s": None if window is None else max(window, 0.0)})  # fmt: skip


def build_frame(workflow_id: str, plan: MigrationPlan, state: MigrationState, status: str, timers: list[Timer],
                seen_audit: int, note: str | None = None) -> WatchFrame:  # fmt: skip
    stages = plan.cutover.stages
    progress = state.cutover
    in_cutover = state.phase == "cutover" and progress.stage_index < len(stages)
    hold = next((t for t in reversed(timers) if t.summary.startswith("hold ")), None) if in_cutover else None
    stage_ends_at = next_window_at = None
    if hold is not None:
        # The hold timer started when `stage_elapsed_s` was last brought up to date.
        duration = stages[progress.stage_index].duration.total_seconds()
        stage_ends_at = hold.started_at + timedelta(seconds=max(duration - progress.stage_elapsed_s, 0))
        next_window_at = hold.fires_at if plan.workloads.endpoints else None
    return WatchFrame(
        id=workflow_id,
        plan=plan.name,
        source=plan.source,
        target=plan.target,
        workflow_status=status,
        phase=state.phase,
        stage=state.stage,
        stage_number=progress.stage_index + 1 if in_cutover or state.stage else None,
        stages_total=len(stages),
        traffic_percent=state.traffic_percent,
        paused=state.paused,
        stage_ends_at=stage_ends_at,
        next_window_at=next_window_at,
        timers=timers,
        pending_gate=_gate(workflow_id, state),
        last_verdict=_verdict(state),
        egress_bytes=state.egress_bytes,
        egress_cost_usd=state.egress_cost_usd,
        outcome=state.outcome,
        outcome_reason=state.outcome_reason,
        new_audit=[AuditLine.model_validate(e.model_dump()) for e in state.audit[seen_audit:]],
        note=note,
    )


def _gate(workflow_id: str, state: MigrationState) -> GateView | None:
    gate = state.pending_gate
    if gate is None:
        return None
    return GateView(stage=gate.stage, reason=gate.reason, opened_at=gate.opened_at,
                    approve_command=f"skyshift approve {workflow_id} --stage {gate.stage}")  # fmt: skip


def _verdict(state: MigrationState) -> VerdictView | None:
    if not state.verdicts:
        return None
    v = state.verdicts[-1]
    checks = [CheckView.model_validate(c.model_dump()) for c in v.checks]
    return VerdictView(subject=v.subject, outcome=v.outcome, summary=v.summary, checks=checks)


# -- following the history ------------------------------------------------------------------------


async def _events(client: Client, workflow_id: str, run_id: str | None, queue: asyncio.Queue) -> None:
    """Put history events on `queue`, then None; an error that ends the read goes on the queue too (a reader
    that died silently left `watch` waiting forever)."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        async for event in handle.fetch_history_events(wait_new_event=True):
            await queue.put(event)
    except Exception as error:
        await queue.put(error)
        return
    await queue.put(None)


async def follow(client: Client, workflow_id: str) -> AsyncIterator[tuple[WatchFrame, MigrationState]]:
    """(frame, state) as the migration moves, until it closes. The first is the current state."""
    from starters import operate
    from workflows.state import MigrationInput, MigrationState

    plan: MigrationPlan | None = None
    timers: dict[str, Timer] = {}
    seen_audit = 0
    run_id: str | None = None
    state: MigrationState | None = None
    outage = Outage(f"following {workflow_id}")
    while True:
        queue: asyncio.Queue = asyncio.Queue()
        reader = asyncio.ensure_future(_events(client, workflow_id, run_id, queue))
        status, next_run = "RUNNING", None
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                failed = next((e for e in batch if isinstance(e, Exception)), None)
                if failed is not None:
                    await outage.retry_after(failed)  # an unreachable server: read the history again
                    break
                outage.over()
                ended = batch[-1] is None
                changed = plan is None
                for event in (e for e in batch if e is not None):
                    kind = event.event_type
                    if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED and plan is None:
                        payloads = event.workflow_execution_started_event_attributes.input.payloads
                        [request] = await client.data_converter.decode(list(payloads[:1]), [MigrationInput])
                        plan = request.plan
                    elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
                        attributes = event.timer_started_event_attributes
                        started = event.event_time.ToDatetime(tzinfo=UTC)
                        summary = ""
                        if event.user_metadata.HasField("summary"):
                            [summary] = await client.data_converter.decode([event.user_metadata.summary], [str])
                        timers[attributes.timer_id] = Timer(
                            summary=summary, started_at=started,
                            fires_at=started + attributes.start_to_fire_timeout.ToTimedelta(),
                        )  # fmt: skip
                        changed = True
                    elif kind == EventType.EVENT_TYPE_TIMER_FIRED:
                        timers.pop(event.timer_fired_event_attributes.timer_id, None)
                    elif kind == EventType.EVENT_TYPE_TIMER_CANCELED:
                        timers.pop(event.timer_canceled_event_attributes.timer_id, None)
                    elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                        next_run = event.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                    elif kind in CLOSED:
                        status = CLOSED[kind]
                        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                            payloads = event.workflow_execution_completed_event_attributes.result.payloads
                            [state] = await client.data_converter.decode(list(payloads), [MigrationState])
                    changed = changed or kind in STATE_EVENTS
                if next_run is not None:
                    break
                note = None
                if changed and status == "RUNNING":
                    try:
                        state = await operate.get_status(client, workflow_id)
                    except operate.NoWorkerAnswered as error:
                        note = str(error)
                    except RPCError as error:
                        if not unreachable(error):
                            raise
                        note = "the server is unreachable"
                if plan is not None and (changed or ended) and (state is not None or note is not None):
                    shown = state or MigrationState(migration_id=workflow_id, plan_name=plan.name)
                    frame = build_frame(workflow_id, plan, shown, status, list(timers.values()), seen_audit, note)
                    if state is None:
                        frame.phase = "unknown"
                    seen_audit = len(shown.audit)
                    yield frame, shown
                if ended:
                    if status == "RUNNING":  # the long-poll ended without a close event: look again
                        description = await patiently(client.get_workflow_handle(workflow_id).describe,
                                                      f"following {workflow_id}")  # fmt: skip
                        if description.status == WorkflowExecutionStatus.RUNNING:
                            break
                    return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if next_run is not None:
            run_id, timers = next_run, {}
        else:
            run_id = None


# -- showing it -----------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    return " ".join([*parts, f"{secs}s"] if not days else parts) or "0s"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def screen(frame: WatchFrame, now: datetime):
    """The rich renderable for one moment: recomputed at every refresh so countdowns tick."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    f = frame.at(now)
    colors = {"pass": "green", "fail": "red", "inconclusive": "yellow", "error": "magenta"}
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    status = f.outcome or ("paused" if f.paused else f.workflow_status.lower())
    grid.add_row("status", Text(status, style="green" if status in ("completed", "running") else "red"))
    stage = f" · stage {f.stage_number}/{f.stages_total} {f.stage}" if f.stage_number else ""
    grid.add_row("phase", f"{f.phase}{stage}")
    bar = "█" * (f.traffic_percent // 5) + "░" * (20 - f.traffic_percent // 5)
    grid.add_row("traffic", f"{bar} {f.traffic_percent}% to {f.target}")
    if f.stage_left_s is not None:
        window = f" · next window in {_duration(f.next_window_s)}" if f.next_window_s is not None else ""
        grid.add_row("stage", f"{_duration(f.stage_left_s)} left{window}")
    for timer in f.timers:
        if not timer.summary.startswith("hold "):
            grid.add_row("waiting", f"{timer.summary or 'timer'}: {_duration((timer.fires_at - now).total_seconds())}")
    if f.pending_gate:
        gate = f.pending_gate
        grid.add_row("gate", Text(f"⏸ {gate.stage}: {gate.reason}", style="yellow"))
        grid.add_row("", Text(gate.approve_command, style="bold cyan"))
    grid.add_row("egress", f"{f.egress_bytes / 1e9:,.3f} GB, ${f.egress_cost_usd:,.4f}")
    if f.outcome:
        grid.add_row("outcome", Text(f"{f.outcome}: {f.outcome_reason}", style="green" if f.outcome == "completed"
                                     else "red"))  # fmt: skip
    if f.note:
        grid.add_row("note", Text(f.note, style="yellow"))
    parts = [grid]
    if f.last_verdict:
        v = f.last_verdict
        table = Table(title=f"last verdict: {v.subject} [{colors.get(v.outcome, 'white')}]{v.outcome}[/]",
                      title_justify="left", expand=False)  # fmt: skip
        for column in ("check", "outcome", "source", "target", "observed", "threshold", "p"):
            table.add_column(column, justify="left" if column in ("check", "outcome") else "right")
        for c in v.checks:
            table.add_row(c.metric, f"[{colors.get(c.outcome, 'white')}]{c.outcome}[/]", _number(c.source),
                          _number(c.target), _number(c.observed), _number(c.threshold), _number(c.p_value))  # fmt: skip
        parts.append(table)
    title = f"{f.id} · {f.plan}: {f.source} → {f.target}"
    return Panel(Group(*parts), title=title, title_align="left")


def plain_lines(frame: WatchFrame, previous: WatchFrame | None) -> list[str]:
    """Not a terminal: one line per thing that happened, as it happens."""
    lines = [f"[{e.at:%H:%M:%S}] {e.actor}: {e.action} {e.detail}".rstrip() for e in frame.new_audit]
    if previous is None or previous.phase != frame.phase or previous.stage != frame.stage:
        stage = f", stage {frame.stage_number}/{frame.stages_total} {frame.stage}" if frame.stage_number else ""
        lines.append(f"           phase {frame.phase}{stage}, traffic {frame.traffic_percent}%")
    elif previous.traffic_percent != frame.traffic_percent:
        lines.append(f"           traffic to target: {previous.traffic_percent}% → {frame.traffic_percent}%")
    v = frame.last_verdict
    if v and (previous is None or previous.last_verdict != v):
        lines.append(f"           verdict {v.subject}: {v.outcome}: {v.summary}")
    if frame.pending_gate and (previous is None or previous.pending_gate != frame.pending_gate):
        lines.append(f"           waiting for approval; run: {frame.pending_gate.approve_command}")
    if frame.note and (previous is None or previous.note != frame.note):
        lines.append(f"           {frame.note}")
    return lines


async def watch(client: Client, workflow_id: str, mode: str, out=None, console=None) -> MigrationState | None:
    """Follow until the migration closes or completes into its failback window; mode is "live" (rich screen),
    "plain" or "json". Returns the last state."""
    out = out or sys.stdout
    last: WatchFrame | None = None
    state: MigrationState | None = None
    if mode == "live":
        from rich.console import Console
        from rich.live import Live

        console = console or Console(file=out)

        def draw():
            return screen(last, datetime.now(UTC)) if last else "waiting for the first event..."

        with Live(console=console, refresh_per_second=2, get_renderable=draw, transient=False):
            async for frame, current in follow(client, workflow_id):
                last, state = frame, current
                if current.in_failback_window:
                    break  # completed: the window stays open for weeks, `status` and `failback` reach it
        return state
    async for frame, current in follow(client, workflow_id):
        state = current
        if last is not None and frame.key() == last.key():
            continue  # a workflow task that changed nothing an operator sees
        if mode == "json":
            print(frame.at(datetime.now(UTC)).model_dump_json(), file=out, flush=True)
        else:
            for line in plain_lines(frame, last):
                print(line, file=out, flush=True)
        last = frame
        if current.in_failback_window:
            break  # completed: the window stays open for weeks, `status` and `failback` reach it
    return state


@with_client
async def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    from skyshift.runtime import ui_link
    from starters import render

    mode = "json" if args.json else "live" if sys.stdout.isatty() else "plain"
    try:
        await client.get_workflow_handle(args.id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise UsageError(f"no migration {args.id!r} on this server: check the id with `skyshift list`") from None
        raise
    state = await watch(client, args.id, mode)
    if mode != "json" and state is not None:
        print(render.summary(state, ui_link(args.id)))
    done = state is not None and (state.outcome == "completed" or state.in_failback_window)
    return EXIT_OK if done else EXIT_FAILED


def add_commands(sub: argparse._SubParsersAction) -> None:
    watch_ = sub.add_parser(
        "watch",
        help="follow a migration live until it ends: phase, stage, traffic, gate, last verdict, egress",
        description="Follow a migration live until it ends. On a terminal one screen redraws in place; "
        "otherwise plain lines as events happen. Exit 0 if it completed, 1 otherwise.",
    )
    watch_.set_defaults(handler=cmd_watch)
    watch_.add_argument("id", help="the migration's workflow id")
    watch_.add_argument("--json", action="store_true", help="one JSON object per change on stdout (JSON lines)")
