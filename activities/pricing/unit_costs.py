"""The case study's cost metrics, from measurements: cost per 1k inferences at measured capacity,
training cost per checkpoint, and data-transfer amplification.

Cost per 1k inferences divides a side's price by what *that side* can serve within the latency SLO
(the highest step of a load ramp whose p99 met it), never by traffic both sides shared: dividing each
side's price by the same request count only restates the price ratio. A ramp whose first step
already breaks the SLO, or whose steps hold too few answers for a p99, is *inconclusive*; a ramp
whose last step still meets it gives a lower bound on capacity (the cost is then an upper bound).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

#: Answers a step needs before its p99 means anything (the 99th of 100 is the second-largest).
MIN_ANSWERS_FOR_P99 = 100
#: data_transfer_amplification above this is an alert (the case study's threshold)
AMPLIFICATION_ALERT = 3.0


class RampStep(BaseModel):
    rate_per_s: float = Field(gt=0, description="Offered load (open loop)")
    latencies_ms: list[float] = Field(description="Every answer's latency at this step")
    errors: int = 0

    @property
    def p99_ms(self) -> float | None:
        if len(self.latencies_ms) < MIN_ANSWERS_FOR_P99:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class CapacityCost(BaseModel):
    outcome: Literal["measured", "lower_bound", "inconclusive"]
    capacity_per_s: float | None = None
    usd_per_1k_inferences: float | None = None
    reason: str


def cost_per_1k_inferences(price_per_hour: float, ramp: list[RampStep], slo_p99_ms: float) -> CapacityCost:
    """Price ÷ the highest ramp rate whose p99 (and every lower step's) met the SLO without errors."""
    steps = sorted(ramp, key=lambda s: s.rate_per_s)
    if not steps:
        return CapacityCost(outcome="inconclusive", reason="no ramp steps were measured")
    met = None
    for step in steps:
        if step.p99_ms is None:
            return CapacityCost(outcome="inconclusive", capacity_per_s=met, reason=(
                f"{step.rate_per_s:g}/s: {len(step.latencies_ms)} answers, fewer than the {MIN_ANSWERS_FOR_P99} a "
                "p99 needs: run the step longer"))  # fmt: skip
        if step.p99_ms > slo_p99_ms or step.errors:
            break
        met = step
    if met is None:
        first = steps[0]
        return CapacityCost(outcome="inconclusive", reason=(
            f"the lowest step, {first.rate_per_s:g}/s, already missed the SLO (p99 {first.p99_ms:,.0f} ms > "
            f"{slo_p99_ms:g} ms, {first.errors} errors): ramp from a lower rate"))  # fmt: skip
    usd = price_per_hour / (met.rate_per_s * 3600) * 1000
    if met is steps[-1]:
        return CapacityCost(outcome="lower_bound", capacity_per_s=met.rate_per_s, usd_per_1k_inferences=usd, reason=(
            f"every step met the SLO up to {met.rate_per_s:g}/s (p99 {met.p99_ms:,.0f} ms): capacity is at least "
            "this, the cost at most this"))  # fmt: skip
    return CapacityCost(
        outcome="measured",
        capacity_per_s=met.rate_per_s,
        usd_per_1k_inferences=usd,
        reason=(
            f"{met.rate_per_s:g}/s was the highest step within the {slo_p99_ms:g} ms p99 SLO (p99 {met.p99_ms:,.0f} ms)"
        ),
    )


def measure_ramp(url: str, path: str, body: bytes, rates: list[float], seconds_per_step: float,
                 seed: int = 7, timeout_s: float = 30.0) -> list[RampStep]:  # fmt: skip
    """Open-loop Poisson load at each rate in turn against `url + path`; every answer's latency."""
    return [_step(url, path, body, rate, seconds_per_step, seed, timeout_s) for rate in rates]


def _step(url: str, path: str, body: bytes, rate: float, seconds: float, seed: int, timeout_s: float) -> RampStep:
    target, rng = urlsplit(url), random.Random(seed)
    latencies, errors, lock, local = [], [0], threading.Lock(), threading.local()

    def send() -> None:
        connection = getattr(local, "connection", None) or http.client.HTTPConnection(
            target.hostname, target.port, timeout=timeout_s
        )
        local.connection = connection
        started = time.perf_counter()
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            ok = response.status < 500
        except (OSError, http.client.HTTPException):
            local.connection, ok = None, False
        with lock:
            if ok:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[0] += 1

    with ThreadPoolExecutor(max_workers=64) as pool:
        start, at = time.perf_counter(), 0.0
        while True:
            at += rng.expovariate(rate)
            if at > seconds:
                break
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the offered load, not waiting for a result
            pool.submit(send)
    return RampStep(rate_per_s=rate, latencies_ms=latencies, errors=errors[0])


def training_cost_per_checkpoint(price_per_hour: float, checkpoint_interval_hours: float, checkpoint_gb: float,
                                 storage_usd_per_gb_month: float = 0.0, retention_months: float = 1.0,
                                 egress_usd_per_gb: float = 0.0) -> float:  # fmt: skip
    """The compute between two checkpoints plus keeping (and, across clouds, moving) the checkpoint."""
    return (price_per_hour * checkpoint_interval_hours + checkpoint_gb * storage_usd_per_gb_month * retention_months
            + checkpoint_gb * egress_usd_per_gb)  # fmt: skip


class Amplification(BaseModel):
    value: float | None
    alert: bool
    reason: str


def data_transfer_amplification(bytes_read: int, dataset_bytes: int) -> Amplification:
    """Bytes the stores served while jobs ran ÷ the dataset's size; alert above 3.0."""
    if dataset_bytes <= 0:
        return Amplification(value=None, alert=False, reason="the dataset's size is unknown or zero")
    value = bytes_read / dataset_bytes
    alert = value > AMPLIFICATION_ALERT
    return Amplification(
        value=value,
        alert=alert,
        reason=(
            f"{bytes_read / 1e9:,.3f} GB read for a {dataset_bytes / 1e9:,.3f} GB dataset: {value:.2f}x"
            + (f" > {AMPLIFICATION_ALERT:g}x: the job re-reads its data (cache it near the GPUs)" if alert else "")
        ),
    )
