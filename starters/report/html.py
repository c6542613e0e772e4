"""`report.html`: one self-contained page (inline CSS and SVG, no scripts, no network) from a Report.

The page is `report.html.j2` beside this module. Jinja2 renders it with autoescaping on, so plan
names, audit notes and error messages from the record cannot inject markup. A rolled-back or
stopped migration says why before anything else.
"""

from __future__ import annotations

import math

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from starters.report.model import Figure, Report
from starters.report.plots import render_plots


def usd(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.3g}" if value else "$0"


def number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def figure_cell(fig: Figure | None) -> str:
    if fig is None:
        return "not measured"
    spread = f" ({usd(fig.low)} to {usd(fig.high)}, n={fig.n})" if fig.n > 1 else " (n=1)"
    return f"{usd(fig.median)}{spread}"


def change(source: float | None, target: float | None) -> Markup:
    if not source or target is None or not math.isfinite(source) or not math.isfinite(target):
        return Markup("-")
    delta = (target / source - 1) * 100
    css = "good" if delta < 0 else "bad" if delta > 0 else ""
    return Markup(f'<span class="{css}">{delta:+.1f}%</span>')


def months(value: float | None) -> str:
    if value is None:
        return "never (no saving)"
    if value < 1:
        days = value * 730 / 24
        return f"{days:.1f} days" if days >= 1 else "under a day"
    return f"{value:,.1f} months"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def gigabytes(n: float) -> str:
    return f"{n / 1e9:,.3f} GB"


UNITS = (
    ("per 1k training samples", "per_1k_samples"),
    ("per epoch", "per_epoch"),
    ("per 1k inferences", "per_1k_inferences"),
)


def render_html(report: Report) -> str:
    environment = Environment(
        loader=PackageLoader("starters.report", ""), autoescape=select_autoescape(default=True, default_for_string=True)
    )
    # The verdict that ended the migration is the last failing one; its failing checks come first.
    last_failed = next((v for v in reversed(report.verdicts) if v.outcome == "fail"), None)
    failing = [c for c in last_failed.checks if c.outcome == "fail"] if last_failed else []
    executive = report.executive
    units = [(label, key) for label, key in UNITS if getattr(executive.source, key) or getattr(executive.target, key)]
    return environment.get_template("report.html.j2").render(
        r=report,
        e=executive,
        failing=failing if executive.why else [],
        plots=render_plots(report),
        units=units,
        realized=executive.outcome in ("completed", "running"),
        months=months,
        duration=duration,
        usd=usd,
        num=number,
        gb=gigabytes,
        cell=figure_cell,
        change=change,
    )
