"""Human-readable views of a migration for the terminal: the status summary, change lines, sync progress."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from workflows.state import MigrationState

if TYPE_CHECKING:
    from workflows.sync import SyncResult


def gb(n: float) -> str:
    """Bytes in the unit that keeps three significant figures readable (decimal, as clouds bill)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n < 100 * scale else f"{n / scale:,.0f} {unit}"
    return f"{int(n)} B"


def transfer_line(t: SyncResult) -> str:
    n = t.totals
    return (
        f"{t.path or t.source}: {n.objects_changed}/{n.objects_total} objects changed, "
        f"{n.chunks_transferred}/{n.chunks_total} chunks sent ({gb(n.bytes_transferred)} of {gb(n.bytes_total)}), "
        f"{n.chunks_reused} reused at the target; BLAKE3-verified: {t.verified}"
    )


def summary(state: MigrationState, ui_url: str | None = None) -> str:
    lines = [f"migration {state.migration_id} ({state.plan_name})"]
    lines.append(
        f"  outcome:  {state.outcome or 'running'}{': ' + state.outcome_reason if state.outcome_reason else ''}"
    )
    lines.append(f"  phase:    {state.phase}" + (f", stage {state.stage}" if state.stage else ""))
    lines.append(f"  traffic:  {state.traffic_percent}% to target")
    if state.pending_gate:
        lines.append(f"  waiting:  approve --stage {state.pending_gate.stage}  ({state.pending_gate.reason})")
    if state.assessment:
        a = state.assessment
        lines.append(
            f"  assess:   {a.total_objects} objects, {gb(a.total_bytes)}; projected egress ${a.egress_cost_usd:.4f}, "
            f"{a.transfer_seconds:.1f}s at plan bandwidth; residency {'ok' if a.residency_ok else 'BREACH'}"
        )
        lines += [f"            ! {w}" for w in a.warnings]
    for t in state.poc.transfers:
        lines.append(f"  sync:     {transfer_line(t)}")
    for sealed in state.poc.sealed:
        lines.append(
            f"  sealed:   {sealed.name}: {sealed.files} files under {sealed.key_id}, {sealed.chunks_sent}/"
            f"{sealed.chunks_total} chunks sent ({gb(sealed.bytes_sent)}), decrypted only by the target's worker"
        )
    lines += _checkpoint_lines(state)
    for side, results in (("source", state.poc.source_bench), ("target", state.poc.target_bench)):
        for r in results:
            lines.append(
                f"  bench:    {side} {r.environment} on {r.device} ({r.device_name}): "
                f"{r.median_matmul_tflops:.3f} TFLOP/s "
                f"matmul, {r.median_train_samples_per_s:,.0f} train samples/s (median of {len(r.trials)})"
            )
    if state.poc.comparison:
        c = state.poc.comparison
        lines.append(
            f"  poc:      {c.verdict.outcome}: throughput {c.throughput_ratio:.2f}x, USD per million samples "
            f"{c.target_cost_per_million_samples:.4f} (target) vs {c.source_cost_per_million_samples:.4f} (source)"
        )
    lines += _environment_lines(state)
    lines += _job_bench_lines(state)
    if state.jobs:
        from activities.jobs.compare import comparison_text

        for comparison in state.jobs:
            lines.append(f"  parallel: {comparison.job}: {comparison.verdict.outcome}: {comparison.verdict.summary}")
            lines += ["            " + line for line in comparison_text(comparison).splitlines() if line.strip()]
    elif state.parallel_run:
        lines.append(f"  parallel: {state.parallel_run.outcome}: {state.parallel_run.summary}")
        lines += [f"            {c.metric}: {c.detail}" for c in state.parallel_run.checks]
    lines += _shadow_lines(state)
    windows = [v for v in state.verdicts if v.subject.startswith("cutover:")]
    if windows:
        counts = {o: sum(v.outcome == o for v in windows) for o in ("pass", "fail", "inconclusive", "error")}
        lines.append(
            f"  cutover:  {len(windows)} recent windows judged: "
            + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        )
        last = windows[-1]
        lines.append(f"            last ({last.subject}): {last.outcome}: {last.summary}")
    lines += _continuous_lines(state)
    lines += _training_lines(state)
    d = state.decommission
    for t in d.final_sync:
        lines.append(f"  final:    {transfer_line(t)}")
    if d.archived_objects or d.released:
        released = sum(r.objects_deleted for r in d.released)
        lines.append(
            f"  decomm.:  archived {d.archived_objects} objects, verified {d.verified_objects} at target, "
            f"released {released}"
        )
    lines += _failback_lines(state)
    lines.append(f"  egress:   {gb(state.egress_bytes)}, ${state.egress_cost_usd:.4f}")
    if (amplification := state.data_transfer_amplification()) is not None:
        lines.append(f"  moved:    data_transfer_amplification {amplification:.3f}x (bytes moved over the migration "
                     f"÷ the {gb(state.assessment.total_bytes)} the assessment counted)")  # fmt: skip
    if state.saga.completed:
        lines.append("  undone:   " + "; ".join(state.saga.completed))
    if ui_url:
        lines.append(f"  UI:       {ui_url}")
    return "\n".join(lines)


def _training_lines(state: MigrationState) -> list[str]:
    """The production run (cutover.training: handoff): where it is and what each move cost."""
    run = state.training
    if run.run_id is None:
        return []
    lines = [f"  training: {run.job} (run {run.run_id}) on {run.environment}"]
    for e in run.events:
        seconds = "?" if e.seconds_to_first_step is None else f"{e.seconds_to_first_step:.1f}s"
        moved = "?" if e.bytes_moved is None else gb(e.bytes_moved)
        size = "" if e.checkpoint_bytes is None else f" (checkpoint {gb(e.checkpoint_bytes)})"
        lines.append(
            f"            {e.kind} {e.origin} → {e.destination}: {e.outcome} (verdict {e.verdict or '-'}), "
            f"checkpoint step {e.checkpoint_step}, steps lost {e.steps_lost}, SIGTERM → first step {seconds}, "
            f"{moved} moved{size}"
        )
        if e.outcome != "moved" and e.summary:
            lines.append(f"            {e.summary}")
    return lines


def _failback_lines(state: MigrationState) -> list[str]:
    fb = state.failback
    if fb.opened_at is None:
        return []
    if state.outcome is None:
        lines = [f"  failback: the way back is open until {fb.closes_at:%Y-%m-%d %H:%M} UTC: "
                 f"skyshift failback {state.migration_id} --reason ... (or --drill to rehearse)"]  # fmt: skip
    else:
        back = fb.traffic_back_s
        closed = f"traffic back in {back:.1f}s" if back is not None else f"closed by {fb.closed_by}"
        lines = [f"  failback: window {fb.opened_at:%Y-%m-%d %H:%M} → {fb.closes_at:%Y-%m-%d %H:%M} UTC, {closed}"]
    if fb.passes:
        last = fb.passes[-1]
        lines.append(f"            reverse sync: {fb.passes_run} passes, {gb(fb.reverse_bytes)} back to the source; "
                     f"last {last.at:%H:%M:%S} ({last.objects} objects, {last.seconds:.1f}s)")  # fmt: skip
    lines += [f"            drill: {d.outcome}: {d.summary}" for d in fb.drills[-3:]]
    return lines


def _continuous_lines(state: MigrationState) -> list[str]:
    sync = state.sync
    if sync.started_at is None:
        return []
    when = (f"stopped for the {sync.stopped_for} at {sync.stopped_at:%Y-%m-%d %H:%M} UTC" if sync.stopped_at
            else f"next pass due {sync.next_due:%Y-%m-%d %H:%M:%S} UTC")  # fmt: skip
    lines = [f"  current:  continuous sync: {sync.passes_run} passes, {sync.objects} objects, {gb(sync.bytes_sent)}; "
             f"{when}"]  # fmt: skip
    if sync.passes:
        last = sync.passes[-1]
        lines.append(f"            last pass {last.number} at {last.at:%H:%M:%S}: {last.outcome}, {last.objects} "
                     f"objects, {gb(last.bytes_sent)}, lag {last.lag_s:.1f}s")  # fmt: skip
    return lines


def _checkpoint_lines(state: MigrationState) -> list[str]:
    lines = []
    for r in state.poc.checkpoints:
        loads = f"loads with map_location={r.map_location}" if r.map_location else "loads as saved"
        memory = ""
        if r.memory and r.memory.memory_gb is not None:
            memory = f"; {r.memory.parameters:,} parameters, serve {r.memory.serve_gb:.3g} GB of " \
                     f"{r.memory.memory_gb:.0f} GB ({r.memory.memory_source})"  # fmt: skip
        lines.append(f"  ckpt:     {r.name}: {r.verdict.outcome}: {r.tensors_compared} tensors, digests "
                     f"{'equal' if not r.mismatched else 'DIFFER: ' + ', '.join(r.mismatched[:3])}; {loads} on "
                     f"torch {r.target_environment.torch_version}{memory}")  # fmt: skip
        lines += [f"            ! blocker: {b}" for b in r.blockers] + [f"            ! {w}" for w in r.warnings]
    return lines


def _environment_lines(state: MigrationState) -> list[str]:
    """Both sides' fingerprints and the compatibility matrix the POC judged."""
    judgement = state.poc.judgement
    if judgement is None or judgement.compatibility is None:
        return []
    from starters.cmd_bench import matrix_lines

    lines = [f"  matrix:   {judgement.verdict.outcome}: {judgement.verdict.summary}"]
    return lines + ["            " + line for line in matrix_lines(judgement.compatibility)]


def _job_bench_lines(state: MigrationState) -> list[str]:
    bench = state.poc.job_bench
    if bench is None:
        return []
    lines = [f"  job POC:  {bench.job}: {bench.verdict.outcome}: {bench.verdict.summary}"]
    for side in (bench.source, bench.target):
        rate = side.per_s
        spread = f"{rate.median:,.0f} [{rate.min:,.0f}-{rate.max:,.0f}]" if rate.median is not None else "-"
        cost = f"${side.cost_per_epoch_usd:.4f}/epoch" if side.cost_per_epoch_usd is not None else "no epoch size"
        lines.append(f"            {side.environment}: {spread} {side.unit}/s over {side.trials_ok}/{side.trials} "
                     f"trials, {cost}")  # fmt: skip
    return lines


def _shadow_lines(state: MigrationState) -> list[str]:
    if not state.shadow:
        return []
    from activities.shadow.runner import comparison_table

    lines = []
    for result in state.shadow:
        lines.append(f"  shadow:   {result.endpoint}: {result.verdict.outcome}: {result.compared} requests compared "
                     f"({result.comparator}); p99 target {result.arms['target'].p99_ms or 0:.1f} ms vs source "
                     f"{result.arms['source'].p99_ms or 0:.1f} ms")  # fmt: skip
        rows = comparison_table(result)[:9]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += [
            "            " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
    return lines


def changes(state: MigrationState, previous: MigrationState | None) -> list[str]:
    """One line per audit entry added since `previous`, plus traffic moves."""
    seen = len(previous.audit) if previous else 0
    lines = [f"[{e.at:%H:%M:%S}] {e.actor}: {e.action} {e.detail}".rstrip() for e in state.audit[seen:]]
    if previous and previous.traffic_percent != state.traffic_percent:
        lines.append(f"           traffic to target: {previous.traffic_percent}% → {state.traffic_percent}%")
    if previous and state.verdicts and (not previous.verdicts or previous.verdicts[-1] != state.verdicts[-1]):
        v = state.verdicts[-1]
        lines.append(f"           verdict {v.subject}: {v.outcome}: {v.summary}")
    return lines


class SyncProgress:
    """One progress line for a sync: objects, bytes, rate and ETA, redrawn in place on a terminal.

    On a terminal this is a rich progress bar (rich computes the rate and the ETA from the updates);
    elsewhere (a log file, CI) it prints a plain line only when the numbers moved, at most once per
    `every` seconds, so a long sync leaves a readable log instead of one line per poll. Feed it the
    counts from the sync's heartbeat details or its progress query; totals may be unknown (None)
    while the source is still being listed.
    """

    def __init__(self, label: str, stream: TextIO | None = None, *, every: float = 10.0,
                 force_terminal: bool | None = None) -> None:  # fmt: skip
        from rich.console import Console

        self.label, self.every = label, every
        self.console = Console(file=stream or sys.stderr, force_terminal=force_terminal)
        self._last_line: tuple | None = None
        self._last_print = float("-inf")
        self._progress = None
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[objects]}"),
                DownloadColumn(binary_units=False),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(label, total=None, objects="")
            self._progress.start()

    def update(self, *, objects_done: int, objects_total: int | None, bytes_done: int, bytes_total: int | None) -> None:
        objects = f"{objects_done:,}/{objects_total:,} objects" if objects_total else f"{objects_done:,} objects"
        if self._progress is not None:
            self._progress.update(self._task, completed=bytes_done, total=bytes_total, objects=objects)
            return
        line = (objects_done, objects_total, bytes_done, bytes_total)
        now = time.monotonic()
        if line == self._last_line or now - self._last_print < self.every:
            return
        self._last_line, self._last_print = line, now
        of = f" of {gb(bytes_total)}" if bytes_total else ""
        self.console.print(f"{self.label}: {objects}, {gb(bytes_done)}{of}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __enter__(self) -> SyncProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
