"""`skyshift watch` screens and `sync` progress lines, from recorded real states.

The live loop itself (history long-poll, `--json` frames, plain lines) runs against a real migration
in tests/test_cli.py; here the screen is checked for what an operator reads off it: stage n/N, time
left from the workflow's own timers, the exact approve command, the last verdict's numbers.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from starters.cmd_watch import Timer, build_frame, plain_lines, screen
from starters.render import SyncProgress
from starters.report.history import Recorded, read_runs
from tests.helpers import recorded_histories
from workflows.state import Gate

HISTORIES = recorded_histories("MigrationWorkflow")  # a sync's history is not a migration's
T0 = datetime(2026, 11, 22, 6, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def recorded() -> dict[str, Recorded]:
    out = {}
    for scenario, path in HISTORIES.items():
        history = WorkflowHistory.from_json(path.stem.split("@")[1], path.read_text())
        out[scenario] = asyncio.run(read_runs([history], pydantic_data_converter))
    return out


def text_of(renderable) -> str:
    console = Console(file=io.StringIO(), width=140, force_terminal=True, color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def mid_cutover(recorded: Recorded):
    """The recorded completed run's state, as it was 4 s into its second stage (25%, 12 s long)."""
    state = recorded.state.model_copy(deep=True)
    state.phase, state.stage, state.traffic_percent, state.outcome = "cutover", "25pct", 25, None
    state.cutover.stage_index, state.cutover.stage_elapsed_s, state.cutover.entered = 1, 4.0, True
    hold = Timer(summary="hold 25pct", started_at=T0, fires_at=T0 + timedelta(seconds=6))
    return state, [hold]


def test_the_screen_counts_down_from_the_workflows_own_timers(recorded):
    run = recorded["demo_ok"]
    state, timers = mid_cutover(run)
    frame = build_frame("demo-llm-d31fed", run.plan, state, "RUNNING", timers, seen_audit=len(state.audit))
    assert (frame.stage_number, frame.stages_total) == (2, len(run.plan.cutover.stages)) == (2, 4)
    # 12 s stage, 4 s already held when the current 6 s window timer started 2 s ago.
    at = frame.at(T0 + timedelta(seconds=2))
    assert (at.stage_left_s, at.next_window_s) == (6.0, 4.0)
    shown = text_of(screen(frame, T0 + timedelta(seconds=2)))
    assert "stage 2/4 25pct" in shown and "25% to nebius-eu-north1" in shown
    assert "6s left · next window in 4s" in shown
    verdict = state.verdicts[-1]
    assert f"last verdict: {verdict.subject} {verdict.outcome}" in shown
    for check in verdict.checks:
        assert check.metric in shown and f"{check.threshold:.3g}" in shown


def test_a_pending_gate_shows_the_command_to_type(recorded):
    run = recorded["demo_ok"]
    state, _ = mid_cutover(run)
    state.pending_gate = Gate(stage="50pct", reason="route 50% of traffic to nebius-eu-north1", opened_at=T0)
    frame = build_frame("demo-llm-d31fed", run.plan, state, "RUNNING", [], seen_audit=len(state.audit))
    assert frame.pending_gate.approve_command == "skyshift approve demo-llm-d31fed --stage 50pct"
    assert "skyshift approve demo-llm-d31fed --stage 50pct" in text_of(screen(frame, T0))
    lines = plain_lines(frame, None)
    assert any("waiting for approval; run: skyshift approve demo-llm-d31fed --stage 50pct" in line for line in lines)


def test_plain_lines_tell_a_rollback_as_it_happened(recorded):
    run = recorded["demo_regression"]
    frame = build_frame("demo-llm-eed1a4", run.plan, run.state, "COMPLETED", [], seen_audit=0)
    lines = plain_lines(frame, None)
    assert any("skyshift:analysis: rollback_requested 25pct: chat.latency" in line for line in lines)
    assert any(line.strip().startswith("verdict cutover:25pct: fail") for line in lines)
    assert frame.outcome == "rolled_back" and frame.traffic_percent == 0
    shown = text_of(screen(frame, T0))
    assert "rolled_back" in shown and "0% to nebius-eu-north1" in shown and "chat.latency_tail" in shown
    again = build_frame("demo-llm-eed1a4", run.plan, run.state, "COMPLETED", [], seen_audit=len(run.state.audit))
    assert again.new_audit == [] and plain_lines(again, frame) == [], "nothing new, nothing printed"


def test_sync_progress_is_one_line_on_a_terminal():
    out = io.StringIO()
    with SyncProgress("s3://a → gs://b", out, force_terminal=True) as progress:
        for done in range(1, 6):
            progress.update(objects_done=done, objects_total=5, bytes_done=done * 10_000_000, bytes_total=50_000_000)
    text = out.getvalue()
    assert "5/5 objects" in text and "50.0/50.0 MB" in text
    assert text.count("\n") <= 2, "redrawn in place, not one line per update"


def test_sync_progress_prints_a_plain_line_only_when_something_moved():
    out = io.StringIO()
    progress = SyncProgress("s3://a → gs://b", out, every=0)
    for _ in range(17):  # a poll every second while a big object is in flight: nothing moved
        progress.update(objects_done=0, objects_total=None, bytes_done=0, bytes_total=None)
    progress.update(objects_done=3, objects_total=16, bytes_done=48_000_000, bytes_total=None)
    progress.close()
    assert out.getvalue().splitlines() == ["s3://a → gs://b: 0 objects, 0 B", "s3://a → gs://b: 3/16 objects, 48 MB"]
