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

import pytest
from markupsafe import escape
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from starters.report import write_report
from starters.report.history import Recorded, read_runs
from starters.report.html import usd
from starters.report.model import Report
from tests.helpers import recorded_histories
from workflows.state import MigrationState

HISTORIES = recorded_histories("MigrationWorkflow")  # a sync's history is not a migration's
PLOTS = ("loss_curves", "throughput", "latency", "traffic", "egress")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[Recorded, MigrationState, Report, str]]:
    """Every recorded run that ended with a state, reported once: (record, state, report.json parsed, report.html)."""
    built = {}
    for scenario, path in HISTORIES.items():
        history = WorkflowHistory.from_json(path.stem.split("@")[1], path.read_text())
        recorded = asyncio.run(read_runs([history], pydantic_data_converter))
        if recorded.state is None:
            continue  # failed or terminated: a live report asks the workers for the state instead
        _, html, data = write_report(recorded, recorded.state, tmp_path_factory.mktemp(scenario))
        assert html.exists() and data.exists()
        report = Report.model_validate_json(data.read_text())
        built[scenario] = (recorded, recorded.state, report, html.read_text())
    return built


@pytest.mark.parametrize("scenario", sorted(HISTORIES))
def test_report_figures_are_the_states_own(reports, scenario):
    if scenario not in reports:
        pytest.skip(f"{scenario} recorded no final state")
    _, state, report, _ = reports[scenario]
    figures, comparison, job = report.state, state.poc.comparison, state.poc.job_bench
    assert (figures.egress_bytes, figures.egress_cost_usd) == (state.egress_bytes, state.egress_cost_usd)
    assert figures.data_transfer_amplification == state.data_transfer_amplification()
    assert (figures.continuous_passes, figures.continuous_bytes) == (state.sync.passes_run, state.sync.bytes_sent)
    assert (figures.outcome, figures.outcome_reason, figures.traffic_percent) == (
        state.outcome, state.outcome_reason, state.traffic_percent,
    )  # fmt: skip
    executive = report.executive
    for side in ("source", "target"):
        shown = getattr(executive, side)
        if job is not None and getattr(job, side).cost_per_1k_samples_usd is not None:
            assert shown.per_1k_samples.median == getattr(job, side).cost_per_1k_samples_usd
            assert shown.per_epoch.median == getattr(job, side).cost_per_epoch_usd
        elif comparison is not None:
            per_million = getattr(comparison, f"{side}_cost_per_million_samples")
            assert shown.per_1k_samples.median * 1000 == pytest.approx(per_million)
        if shown.per_1k_samples is not None:
            assert shown.per_1k_samples.low <= shown.per_1k_samples.median <= shown.per_1k_samples.high
    if executive.savings is not None:
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


def job_run(store_url: str, job: str, env: str, arm: str, losses: list[float], step_s: float, trial: int = 0) -> dict:
    """One `run_job` result as the history holds it: the job's metric lines stored by reference.

    The lines are what a job writes through the skyshift.jobs contract (step, loss, samples, time);
    the timing and the reference are computed by the jobs engine's own functions.
    """
    import blake3

    from activities.jobs.files import ArtifactRef
    from activities.jobs.run import JobResult
    from activities.jobs.series import load_series, timing
    from activities.stores import StoreSpec, open_store

    started = 1_800_000_000.0
    lines = "".join(json.dumps({"step": i + 1, "loss": loss, "samples": 64, "time": started + 2 + i * step_s}) + "\n"
                    for i, loss in enumerate(losses)).encode()  # fmt: skip
    key = f"jobs/{job}/{arm}-{trial}-{env}/metrics.jsonl"
    open_store(store_url).put_bytes(key, lines)
    records = load_series(lines)
    return JobResult(
        job=job, environment=env, arm=arm, status="succeeded", exit_code=0, code_root="ab" * 32,
        steps_logged=len(losses), last_step=len(losses), last_loss=losses[-1],
        timing=timing(records, started, records[-1]["time"], None),
        metrics=ArtifactRef(store=StoreSpec(url=store_url), key=key, size=len(lines),
                            blake3=blake3.blake3(lines).hexdigest()),
    ).model_dump(mode="json")  # fmt: skip


def test_the_operators_job_gives_curves_by_reference_cost_per_epoch_and_convergence(reports, tmp_path):
    from activities.jobs.run import JobResult
    from activities.jobs.speed import JobBenchSide, JudgeJobBenchInput, judge_job_bench
    from skyshift.spec.jobs import JobSpec
    from starters.report.build import build_report
    from starters.report.history import ActivityRecord

    recorded, state, _, _ = reports["demo_ok"]
    recorded, state = recorded.model_copy(deep=True), state.model_copy(deep=True)
    plan, store = recorded.plan, f"file://{tmp_path}/metadata"
    source_losses = [3.0 * 0.8**i + 0.5 for i in range(60)]  # descends, then levels off near 0.5
    target_losses = [source_losses[0]] * 10 + source_losses[:50]  # the same descent, ten steps late
    arms = [
        job_run(store, "toy", plan.source, "source", source_losses, 0.1),
        job_run(store, "toy", plan.source, "source-repeat", source_losses, 0.1),
        job_run(store, "toy", plan.target, "target", target_losses, 0.08),
    ]
    bench = {env: [job_run(store, "toy", env, "bench", source_losses[:20], step, t) for t in range(2)]
             for env, step in ((plan.source, 0.1), (plan.target, 0.08))}  # fmt: skip
    comparison = judge_job_bench(JudgeJobBenchInput(
        job=JobSpec(name="toy", code="jobs/toy", command=["python", "train.py"], samples_per_epoch=100_000),
        source=JobBenchSide(environment=plan.source, trials=[JobResult.model_validate(r) for r in bench[plan.source]],
                            price_per_gpu_hour=plan.source_env.compute.price_per_gpu_hour),
        target=JobBenchSide(environment=plan.target, trials=[JobResult.model_validate(r) for r in bench[plan.target]],
                            price_per_gpu_hour=plan.target_env.compute.price_per_gpu_hour),
    ))  # fmt: skip
    state.poc.job_bench = comparison
    at = recorded.closed_at
    for result in [*bench[plan.source], *bench[plan.target], *arms]:
        recorded.activities.append(ActivityRecord(activity="run_job", scheduled_at=at, closed_at=at, result=result,
                                                  status="completed"))  # fmt: skip
    judged = comparison.model_dump(mode="json")
    recorded.activities.append(ActivityRecord(activity="judge_job_bench", scheduled_at=at, closed_at=at,
                                              result=judged, status="completed"))  # fmt: skip

    report = build_report(recorded, state)
    curves = {c.arm: c for c in report.series.loss_curves if c.job == "toy"}
    assert not report.series.notes, report.series.notes
    assert set(curves) == {"source", "source-repeat", "target"}
    assert curves["target"].values == pytest.approx(target_losses) and curves["source"].source.startswith(store)
    epoch = report.executive.target.per_epoch
    assert epoch.median == comparison.target.cost_per_epoch_usd and "toy" in epoch.basis
    assert report.state.job_target_cost_per_epoch_usd == comparison.target.cost_per_epoch_usd
    assert any("the job 'toy' throughput ratio" in a for a in report.executive.savings.assumptions)
    assert [p.kind for p in report.series.throughput_trials].count("job:toy") == 4
    reached = {c.arm.split(": ")[1].split(" ")[0]: c for c in report.executive.convergence}
    assert set(reached) == {"source", "source-repeat", "target"}
    source_step, target_step = (int(reached[a].detail.split(" ")[1].rstrip(":")) for a in ("source", "target"))
    assert target_step == source_step + 10, "the target's loss, ten steps late, converges ten steps later"
    judged = next(r for r in report.verdicts if r.subject == comparison.verdict.subject)
    assert "run_job" in judged.query

    # A series changed after it was recorded is refused, and the report says so instead of drawing it.
    from activities.stores import open_store

    open_store(store).put_bytes(arms[2]["metrics"]["key"], b'{"step": 1, "loss": 0.0}\n')
    tampered = build_report(recorded, state)
    assert "target" not in {c.arm for c in tampered.series.loss_curves if c.job == "toy"}
    assert any("changed since it was recorded" in note for note in tampered.series.notes)


def test_effective_cost_per_gpu_hour_is_shown_with_every_inputs_source_and_age(reports):
    """(price + storage + amortized egress) ÷ measured throughput, both sides in the source's GPU-hours."""
    recorded, state, report, page = reports["demo_ok"]
    source, target = report.executive.source.effective, report.executive.target.effective
    assert source is not None and target is not None
    assert target.reference_samples_per_gpu_s == source.reference_samples_per_gpu_s
    job = state.poc.job_bench
    measured = job.target.per_s.median if job else None
    if measured:
        assert target.useful_samples_per_s == pytest.approx(measured)
    per_hour = recorded.plan.target_env.compute.price_per_gpu_hour * recorded.plan.target_env.compute.gpu_count
    amortized = state.egress_cost_usd / 730
    assert target.usd_per_hour == pytest.approx(per_hour + amortized)
    assert target.effective_usd_per_gpu_hour == pytest.approx(
        target.usd_per_hour / (target.useful_samples_per_s * 3600) * source.reference_samples_per_gpu_s * 3600
    )
    for side in (source, target):
        assert side.inputs["price_per_hour"].startswith(
            f"{side.usd_per_hour - (amortized if side is target else 0):,.6g}"
        )
        assert "from plan 'demo-llm'" in side.inputs["price_per_hour"] and " old" in side.inputs["price_per_hour"]
        assert " old" in side.inputs["throughput"]
    assert "Effective cost per GPU-hour" in page and str(escape(source.inputs["throughput"])) in page
