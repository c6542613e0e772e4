"""The migration report: report.html (plots embedded) and report.json (`skyshift report`, starters.cmd_report).

Built from what the migration recorded (its state and its history, read through the same data
converter the workers use), never from new measurements: a report written today and one written next
year from the same history say the same thing. Parts: `history` (read the record), `build` (economics,
risks, verdicts, series), `plots` (matplotlib → SVG), `html` (the page).
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.client import Client


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
