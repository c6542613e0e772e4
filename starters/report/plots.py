"""The report's plots: matplotlib figures written as SVG text, to embed inline (the report opens offline).

One function per plot, each returning the SVG or None when the migration recorded nothing to draw;
PLOTS lists them in report order with the caption that tells a reader what to look for.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from starters.report.model import Report

COLORS = {"source": "#4c72b0", "target": "#dd8452"}
OUTCOME_COLORS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#757575", "error": "#ef6c00"}
MARKER_STYLE = {
    "gate": ("#757575", ":", "gate opened"),
    "approval": ("#2e7d32", "--", "approved"),
    "rollback": ("#c62828", "-", "rollback requested"),
}

STYLE = {
    "svg.fonttype": "none",  # text stays text: selectable, and the browser's font renders it
    "svg.hashsalt": "skyshift-report",  # stable element ids: the same report renders to the same bytes
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _svg(figure) -> str:
    buffer = io.StringIO()
    # No creation date or tool credits: the same record gives byte-identical plots.
    figure.savefig(buffer, format="svg", bbox_inches="tight",
                   metadata={"Date": None, "Creator": None, "Format": None, "Type": None})  # fmt: skip
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline SVG in HTML needs neither


def _figure(height: float = 2.8):
    return plt.subplots(figsize=(7.2, height), layout="constrained")


def _time_axis(axis, start: datetime, end: datetime) -> None:
    locator = mdates.AutoDateLocator()
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axis.set_xlim(start, end if end > start else start)


def _markers(axis, report: Report) -> None:
    seen = set()
    for marker in report.series.markers:
        color, style, label = MARKER_STYLE[marker.kind]
        axis.axvline(marker.at, color=color, linestyle=style, linewidth=1,
                     label=None if marker.kind in seen else label)  # fmt: skip
        seen.add(marker.kind)


ARM_STYLE = {  # arm: (color, line style, width)
    "source": (COLORS["source"], "-", 2.4),
    "source-repeat": ("#8fa8d6", ":", 1.6),
    "target": (COLORS["target"], "--", 1.4),
}


def loss_curves(report: Report) -> str | None:
    curves = report.series.loss_curves
    if not curves:
        return None
    jobs = list(dict.fromkeys(c.job for c in curves))
    figure, axes = plt.subplots(1, len(jobs), figsize=(7.2, 2.8), layout="constrained", squeeze=False)
    for axis, job in zip(axes[0], jobs, strict=True):
        for i, curve in enumerate(c for c in curves if c.job == job):
            color, style, width = ARM_STYLE.get(curve.arm, (f"C{i + 2}", "-", 1.2))
            steps = curve.steps or list(range(1, len(curve.values) + 1))
            axis.plot(steps, curve.values, color=color, linestyle=style, linewidth=width,
                      label=f"{curve.arm} ({curve.environment})")  # fmt: skip
        axis.set_title(job or "seeded parallel run", fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.legend(frameon=False, fontsize=8)
    return _svg(figure)


def throughput(report: Report) -> str | None:
    points = report.series.throughput_trials
    if not points:
        return None
    kinds = list(dict.fromkeys(p.kind for p in points))
    figure, axes = plt.subplots(1, len(kinds), figsize=(7.2, 2.8), layout="constrained", squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        unit = "samples"
        for side in ("source", "target"):
            mine = [p for p in points if p.side == side and p.kind == kind]
            if not mine:
                continue
            unit = mine[0].unit
            axis.plot([p.trial for p in mine], [p.samples_per_s for p in mine], "o-", color=COLORS[side],
                      label=f"{side} ({mine[0].environment})")  # fmt: skip
        axis.set_title(kind.replace("job:", "job: "), fontsize=9)
        axis.set_xlabel("trial")
        axis.set_ylabel(f"training {unit}/s")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_ylim(bottom=0)
        axis.legend(frameon=False, fontsize=8)
    return _svg(figure)


def latency(report: Report) -> str | None:
    windows = report.series.latency_windows
    if not windows:
        return None
    figure, axis = _figure(3.2)
    top = max([w.source_ms.get("p99", 0) for w in windows] + [w.target_ms.get("p99", 0) for w in windows])
    bottom = min([v for w in windows for v in (w.source_ms.get("p50"), w.target_ms.get("p50")) if v] or [1])
    for side, offset in (("source", -0.17), ("target", 0.17)):
        for w in windows:
            q = w.source_ms if side == "source" else w.target_ms
            if not q:
                continue
            x = w.index + offset
            axis.vlines(x, q["p50"], q["p99"], color=COLORS[side], linewidth=6, alpha=0.55)
            axis.plot([x], [q["p95"]], "_", color=COLORS[side], markersize=12, markeredgewidth=2)
            axis.plot([x], [q["p50"]], "o", color=COLORS[side], markersize=4)
        label = f"{side}: p50 (dot), p95 (tick), p99 (top)"
        axis.plot([], [], color=COLORS[side], linewidth=6, alpha=0.55, label=label)
    if top / max(bottom, 1e-9) > 8:
        axis.set_yscale("log")
    for w in windows:
        color = OUTCOME_COLORS.get(w.outcome, "black")
        axis.annotate(w.outcome.upper(), (w.index, 1.0), xycoords=("data", "axes fraction"), ha="center",
                      va="bottom", color=color, fontweight="bold", fontsize=8)  # fmt: skip
        if w.outcome == "fail":
            axis.axvspan(w.index - 0.45, w.index + 0.45, color=OUTCOME_COLORS["fail"], alpha=0.08)
    axis.set_xticks([w.index for w in windows], [f"{w.index}\n{w.stage}" for w in windows])
    axis.set_xlabel("cutover window (stage)")
    axis.set_ylabel("latency, ms")
    axis.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, fontsize=8)
    return _svg(figure)


def traffic(report: Report) -> str | None:
    points = report.series.traffic
    if len(points) < 2:
        return None
    end = report.closed_at or report.generated_at
    figure, axis = _figure()
    axis.step([p.at for p in points] + [end], [p.value for p in points] + [points[-1].value], where="post",
              color=COLORS["target"], linewidth=2, label="traffic to target")  # fmt: skip
    _markers(axis, report)
    _time_axis(axis, report.started_at, end)
    axis.set_ylim(-3, 105)
    axis.set_ylabel("% of traffic to target")
    axis.legend(frameon=False, fontsize=8, loc="upper left")
    return _svg(figure)


def egress(report: Report) -> str | None:
    sent, dollars = report.series.egress_bytes, report.series.egress_usd
    if len(sent) < 2:
        return None
    end = report.closed_at or report.generated_at
    figure, axis = _figure()
    axis.step([p.at for p in sent] + [end], [p.value / 1e9 for p in sent] + [sent[-1].value / 1e9], where="post",
              color=COLORS["source"], linewidth=2, label="GB sent (left)")  # fmt: skip
    axis.set_ylabel("cumulative egress, GB")
    axis.set_ylim(bottom=0, top=max(sent[-1].value / 1e9 * 1.1, 0.001))
    cost = axis.twinx()
    cost.step([p.at for p in dollars] + [end], [p.value for p in dollars] + [dollars[-1].value], where="post",
              color="#55a868", linewidth=1.2, linestyle="--", label="USD (right)")  # fmt: skip
    cost.set_ylabel("cumulative egress, USD")
    cost.set_ylim(bottom=0, top=max(dollars[-1].value * 1.1, 0.01))
    cost.grid(False)
    _time_axis(axis, report.started_at, end)
    lines = axis.get_legend_handles_labels()
    more = cost.get_legend_handles_labels()
    axis.legend(lines[0] + more[0], lines[1] + more[1], frameon=False, fontsize=8, loc="upper left")
    return _svg(figure)


#: The plots, in report order: (section, title, caption, function).
PLOTS: tuple[tuple[str, str, str, Callable[[Report], str | None]], ...] = (
    (
        "loss_curves",
        "Loss curves of every arm",
        "Training loss per step of the same seeded job on each side. Curves that lie on top of each other mean "
        "the target computes what the source computes.",
        loss_curves,
    ),
    (
        "throughput",
        "Throughput per benchmark trial",
        "Training samples per second in each POC benchmark trial; the spread shows how steady each side is.",
        throughput,
    ),
    (
        "latency",
        "Latency per cutover window, with the verdict",
        "For each judged window, each side's p50 to p99 range (p95 marked); the verdict of that window above it. "
        "A shaded window failed and triggered the rollback.",
        latency,
    ),
    (
        "traffic",
        "Traffic to the target over time",
        "Share of requests routed to the target, with gates, approvals and rollback requests marked.",
        traffic,
    ),
    (
        "egress",
        "Cumulative egress",
        "Bytes that crossed from the source, and what they cost at the source's egress price.",
        egress,
    ),
)


def render_plots(report: Report) -> list[dict[str, str]]:
    """Every plot this report has data for: [{section, title, caption, svg}]."""
    with plt.rc_context(STYLE):
        drawn = []
        for section, title, caption, draw in PLOTS:
            svg = draw(report)
            if svg is not None:
                drawn.append({"section": section, "title": title, "caption": caption, "svg": svg})
        return drawn
