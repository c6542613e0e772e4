"""`skyshift report` on recorded real runs (tests/histories): a completed and a rolled-back migration.

The report is built exactly as the command builds it (history → Recorded → Report → files), from the
demo's recorded histories; its figures must be the state's own, and the page must render in a real
browser (Debian's chromium, headless) without console errors. `tests/test_cli.py` runs the command
itself against a live migration.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from markupsafe import escape
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from starters.report import write_report
from starters.report.history import Recorded, read_runs
from starters.report.html import usd
from starters.report.model import Report
from workflows.state import MigrationState

HISTORIES = {p.stem.split("@")[0]: p for p in sorted((Path(__file__).parent / "histories").glob("*.json"))}
PLOTS = ("loss_curves", "throughput", "latency", "traffic", "egress")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[Recorded, MigrationState, Report, str]]:
    """Both recorded demo runs, reported once: (record, state, report.json parsed, report.html)."""
    built = {}
    for scenario in ("demo_ok", "demo_regression"):
        path = HISTORIES[scenario]
        history = WorkflowHistory.from_json(path.stem.split("@")[1], path.read_text())
        recorded = asyncio.run(read_runs([history], pydantic_data_converter))
        _, html, data = write_report(recorded, recorded.state, tmp_path_factory.mktemp(scenario))
        assert html.exists() and data.exists()
        report = Report.model_validate_json(data.read_text())
        built[scenario] = (recorded, recorded.state, report, html.read_text())
    return built


@pytest.mark.parametrize("scenario", ["demo_ok", "demo_regression"])
def test_report_figures_are_the_states_own(reports, scenario):
    _, state, report, _ = reports[scenario]
    figures, comparison = report.state, state.poc.comparison
    assert (figures.egress_bytes, figures.egress_cost_usd) == (state.egress_bytes, state.egress_cost_usd)
    assert (figures.outcome, figures.outcome_reason, figures.traffic_percent) == (
        state.outcome, state.outcome_reason, state.traffic_percent,
    )  # fmt: skip
    executive = report.executive
    assert executive.source.per_1k_samples.median * 1000 == pytest.approx(comparison.source_cost_per_million_samples)
    assert executive.target.per_1k_samples.median * 1000 == pytest.approx(comparison.target_cost_per_million_samples)
    assert executive.source.per_1k_samples.low <= executive.source.per_1k_samples.median
    assert executive.savings.egress_usd == state.egress_cost_usd
    assert [a.model_dump() for a in report.audit] == [a.model_dump() for a in state.audit]
    numbers = {"metric", "outcome", "source", "target", "observed", "threshold", "p_value"}
    # The state keeps the latest verdicts; the report has every one, in order, with the same numbers.
    latest = report.verdicts[-len(state.verdicts) :]
    for row, verdict in zip(latest, state.verdicts, strict=True):
        assert (row.subject, row.outcome, row.summary) == (verdict.subject, verdict.outcome, verdict.summary)
        assert [c.model_dump(include=numbers) for c in row.checks] == [c.model_dump(include=numbers)
                                                                        for c in verdict.checks]  # fmt: skip


@pytest.mark.parametrize("scenario", ["demo_ok", "demo_regression"])
def test_series_are_the_recorded_values(reports, scenario):
    _, state, report, _ = reports[scenario]
    series = report.series
    assert series.traffic[-1].value == state.traffic_percent, "the traffic plot ends where the router ended"
    assert sum(len(r.trials) for r in state.poc.source_bench + state.poc.target_bench) == len(series.throughput_trials)
    loss = next(c for c in state.parallel_run.checks if c.metric == "loss_curve")
    assert {curve.arm for curve in series.loss_curves} == {"source", "target"}
    for curve in series.loss_curves:
        assert curve.values[-1] == pytest.approx(loss.source if curve.arm == "source" else loss.target)
    cutover = [r for r in report.verdicts if r.subject.startswith("cutover:")]
    assert len(series.latency_windows) == len(cutover) > 0
    # The plotted tail is the verdict's own p99: same windows, same histogram arithmetic.
    for window, row in zip(series.latency_windows, cutover, strict=True):
        tail = next(c for c in row.checks if c.metric.endswith("latency_tail"))
        assert window.outcome == row.outcome and window.target_ms["p99"] == pytest.approx(tail.target, rel=2e-3)


def test_a_rolled_back_report_says_why_first(reports):
    _, state, report, html = reports["demo_regression"]
    assert report.executive.outcome == "rolled_back"
    banner = html[html.index('id="outcome"') : html.index('id="executive"')]
    assert "Why:" in banner and str(escape(state.outcome_reason.split("; ")[0])) in banner
    failed = [c.metric for v in state.verdicts if v.outcome == "fail" for c in v.checks if c.outcome == "fail"]
    assert failed and all(metric in banner for metric in failed), "the failing checks, with numbers, come first"
    assert "not realized" in html
    latency = next(r for r in report.executive.risks if r.name == "latency regression")
    assert latency.level == "high" and "failed in cutover:25pct" in latency.evidence


def test_a_completed_report_leads_with_the_savings(reports):
    _, state, report, html = reports["demo_ok"]
    savings = report.executive.savings
    assert report.executive.why is None and "Why:" not in html
    assert savings.monthly_usd > 0 and usd(savings.monthly_usd) in report.executive.headline
    assert str(escape(usd(savings.monthly_usd))) in html[: html.index('id="risks"')]
    assert savings.annual_run_rate_usd == pytest.approx(12 * savings.monthly_usd)
    assert savings.first_year_net_usd == pytest.approx(12 * savings.monthly_usd - savings.one_off_usd)
    reversibility = next(r for r in report.executive.risks if r.name == "reversibility")
    assert state.point_of_no_return and reversibility.level == "medium"


@pytest.mark.parametrize("scenario", ["demo_ok", "demo_regression"])
def test_the_page_has_every_plot_and_the_executive_numbers(reports, scenario):
    _, _, report, html = reports[scenario]
    for section in PLOTS:
        start = html.index(f'id="plot-{section}"')
        assert "<svg" in html[start : start + 2000], f"{section}: no inline SVG"
    offline = ("<script", "<link", "<img", 'src="', 'href="http', "url(http")
    assert not [marker for marker in offline if marker in html], "the page must open offline, on its own"
    assert str(escape(report.executive.headline)) in html
    for risk in report.executive.risks:
        assert str(escape(risk.evidence)) in html
    for side in (report.executive.source, report.executive.target):
        assert usd(side.per_1k_samples.median) in html and usd(side.per_1k_inferences.median) in html
    assert set(report.sections) >= {"executive", "risks", *PLOTS, "verdicts", "audit"}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
@pytest.mark.parametrize("scenario", ["demo_ok", "demo_regression"])
def test_the_page_renders_in_headless_chromium(reports, scenario, tmp_path):
    from PIL import Image

    _, _, _, html = reports[scenario]
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(html)
    run = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--screenshot={shot}", "--window-size=1100,2600", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    image = Image.open(shot).convert("RGB")
    assert image.size == (1100, 2600)
    colors = image.getcolors(maxcolors=1 << 20)
    ink = sum(count for count, rgb in colors if sum(rgb) < 600) / (image.size[0] * image.size[1])
    assert len(colors) > 200 and ink > 0.02, f"the screenshot looks blank: {len(colors)} colours, {ink:.1%} ink"


def test_report_json_round_trips(reports):
    for _, _, report, _ in reports.values():
        assert Report.model_validate(json.loads(report.model_dump_json())) == report
