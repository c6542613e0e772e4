"""`skyshift report ID [--out DIR] [--json]`: report.html (plots embedded) and report.json for one migration.

Built from what the migration recorded (its state and its history, read through the same data
converter the workers use), never from new measurements: a report written today and one written next
year from the same history say the same thing. Parts: `history` (read the record), `build` (economics,
risks, verdicts, series), `plots` (matplotlib → SVG), `html` (the page).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from temporalio.client import Client

from starters.common import EXIT_OK, emit, with_client


async def generate(client: Client, workflow_id: str, out_dir: Path):
    """Read the migration's record from Temporal and write its report; return (report, html, json)."""
    from starters import operate
    from starters.report.history import record

    recorded = await record(client, workflow_id)
    state = recorded.state or await operate.get_status(client, workflow_id)
    return write_report(recorded, state, out_dir)


def write_report(recorded, state, out_dir: Path):
    """report.html and report.json under out_dir from a Recorded and its state; return (report, html, json)."""
    from starters.report.build import build_report
    from starters.report.html import render_html

    report = build_report(recorded, state)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "report.html", out_dir / "report.json"
    for path, text in zip(paths, (render_html(report), report.model_dump_json(indent=2)), strict=True):
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)  # a reader never sees half a report
    return report, *paths


@with_client
async def cmd_report(args: argparse.Namespace, client: Client) -> int:
    out = Path(args.out or f"report-{args.id}")
    report, html, data = await generate(client, args.id, out)
    emit(
        args,
        {
            "id": args.id,
            "html": str(html),
            "json": str(data),
            "outcome": report.executive.outcome,
            "headline": report.executive.headline,
            "sections": report.sections,
        },
        f"{report.executive.headline}\n  report: {html}\n  data:   {data}",
    )
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report",
        help="write report.html (plots embedded, opens offline) and report.json for a migration",
        description="Write report.html and report.json for a migration from its recorded state and history: "
        "executive summary (cost per unit of work on both sides, projected savings, risk register), plots, "
        "every verdict with its numbers, and the audit log. Nothing is re-measured.",
    )
    report.set_defaults(handler=cmd_report)
    report.add_argument("id", help="the migration's workflow id")
    report.add_argument("--out", help="directory for the two files (default: ./report-<ID>)")
    report.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
