"""`skyshift report ID [--out DIR] [--json]`: report.html (plots embedded) and report.json for one migration."""

from __future__ import annotations

import argparse
from pathlib import Path

from temporalio.client import Client

from starters.common import EXIT_OK, emit, with_client
from starters.report import generate


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
