"""Metric series a job writes (`SKYSHIFT_METRICS`, JSON lines): read as they grow, summarized, stored.

A line is `{"step": int, "loss": float, ...}` with any further numeric fields. Lines that are not
JSON objects with an integer step are counted and skipped (the first one is quoted in the result),
never fatal: a job's stray print must not fail a migration. A line without `time` is stamped when
read; step times and throughput come from those times.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path

from pydantic import BaseModel, Field

Record = dict[str, float]


class JobTiming(BaseModel):
    """What the POC compares: start-up, steady-state throughput and step times (start-up excluded)."""

    time_to_first_step_s: float | None = Field(None, description="From the activity's start (fetch included)")
    wall_s: float = 0.0
    warmup_steps: int = 0
    unit: str = Field("samples", description="'samples' when the job logs `samples`, else 'steps'")
    samples_total: float = 0.0
    samples_per_step: float | None = Field(None, description="Median samples a step (None: the job logs none)")
    steady_per_s: float | None = Field(None, description="Units per second after warm-up")
    step_time_p50_s: float | None = None
    step_time_p95_s: float | None = None


class MetricsTail:
    """Follows a JSON-lines file as a job appends to it; keeps the parsed records in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.records: list[Record] = []
        self.bad_lines = 0
        self.first_bad: str | None = None

    def read_new(self, final: bool = False) -> list[Record]:
        """Parse lines appended since the last call; `final` also takes an unterminated last line."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as stream:
            stream.seek(self.offset)
            data = stream.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        now, new = time.time(), []
        for line in lines:
            if not line.strip():
                continue
            record = parse_line(line)
            if record is None:
                self.bad_lines += 1
                self.first_bad = self.first_bad or line[:200].decode(errors="replace")
                continue
            record.setdefault("time", now)
            new.append(record)
        self.records += new
        return new


def parse_line(line: bytes) -> Record | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or isinstance(value.get("step"), bool) or not isinstance(value.get("step"), int):
        return None
    return {k: v for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def load_series(data: bytes) -> list[Record]:
    return [r for line in data.splitlines() if line.strip() and (r := parse_line(line)) is not None]


def dump_series(records: list[Record], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q) - 1]


def timing(records: list[Record], started: float, ended: float, warmup_steps: int | None) -> JobTiming:
    """Start-up and steady state from the series: the first `warmup_steps` (default 10%) are excluded."""
    ordered = sorted(records, key=lambda r: r["step"])
    result = JobTiming(wall_s=round(ended - started, 3))
    if not ordered:
        return result
    result.time_to_first_step_s = round(ordered[0]["time"] - started, 3)
    per_step = [r["samples"] for r in ordered if "samples" in r]
    result.unit = "samples" if per_step else "steps"
    result.samples_total = float(sum(per_step))
    result.samples_per_step = statistics.median(per_step) if per_step else None
    warmup = warmup_steps if warmup_steps is not None else max(1, len(ordered) // 10)
    warmup = min(warmup, len(ordered) - 2) if len(ordered) >= 2 else 0
    result.warmup_steps = max(warmup, 0)
    steady = ordered[result.warmup_steps :]
    if len(steady) < 2:
        return result
    span = steady[-1]["time"] - steady[0]["time"]
    work = sum(r.get("samples", 0) for r in steady[1:]) if per_step else len(steady) - 1
    result.steady_per_s = work / span if span > 0 else None
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(steady)]
    result.step_time_p50_s = _percentile(gaps, 50)
    result.step_time_p95_s = _percentile(gaps, 95)
    return result
