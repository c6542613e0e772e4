"""The shadow runner: send each request to the source twice and the target once, then judge.

`run_shadow` runs on the control worker. Requests come from a JSON-lines sample in the source's
storage and/or from live traffic the router mirrors while the activity runs. Every answer stays in
this process; the result that reaches workflow history is compact (per-field numbers, floors,
example request ids, latency percentiles), never the bodies.

A restarted attempt starts over: a sample is seconds of requests, and comparing half a sample
with the other half's floor would be worse than sending it again.
"""

from __future__ import annotations

import contextvars
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.analysis import Verdict
from activities.shadow.compare import Uncomparable, compare, parse
from activities.shadow.judge import (
    FieldDiff,
    FieldSamples,
    PositionDiff,
    ShadowThresholds,
    judge_fields,
    measure_errors,
    measure_latency,
    measure_outputs,
    measure_requests,
    percentiles,
    shadow_verdict,
    source_down,
    worst_positions,
)
from activities.shadow.mirror import ArmReply, Exchange, MirrorClient, MirrorCounters, MirrorSettings
from activities.stores import StoreError, StoreSpec, open_store
from skyshift.spec.endpoints import EndpointPair
from skyshift.spec.shadow import ARMS, SHADOW_HEADER, SHADOW_ID_HEADER, ShadowSpec
from skyshift.spec.traffic import HttpRouterSpec, RouterSpec

MAX_FIELDS_KEPT = 20
MAX_EXAMPLES = 5


class RunShadowInput(BaseModel):
    endpoint: EndpointPair = Field(description="The pair to compare; its `shadow` says how")
    store: StoreSpec | None = Field(None, description="The source environment's storage (holds shadow.requests)")
    router: RouterSpec | None = Field(None, description="The plan's router; needed when shadow.mirror_percent > 0")
    thresholds: ShadowThresholds = Field(default_factory=ShadowThresholds)


class ArmStats(BaseModel):
    calls: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_examples: list[str] = Field(default_factory=list, description="request id: what went wrong")


class ShadowResult(BaseModel):
    endpoint: str
    comparator: str
    sent: int = Field(description="Requests sent (sample) or mirrored and answered (live)")
    compared: int = Field(description="Requests all three arms answered, compared field by field")
    from_sample: int = 0
    from_mirror: int = 0
    arms: dict[str, ArmStats] = Field(description="source, source_again (the floor), target")
    fields: list[FieldDiff] = Field(description=f"The {MAX_FIELDS_KEPT} most different fields, worst first")
    fields_total: int = 0
    positions: list[PositionDiff] = Field(default_factory=list, description="Logits: positions most beyond the floor")
    examples: list[str] = Field(default_factory=list, description="Worst request ids of the fields that differ")
    mirror: MirrorCounters | None = None
    verdict: Verdict


class MirrorInput(BaseModel):
    router: RouterSpec
    percent: float = Field(ge=0, le=100)
    path: str = "/v1/predict"


# -- sending -----------------------------------------------------------------------------------


def call(base_url: str, path: str, body: bytes, request_id: str, origin: str, timeout: float) -> ArmReply:
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}{path}", data=body, method="POST",
        headers={"Content-Type": "application/json", SHADOW_HEADER: origin, SHADOW_ID_HEADER: request_id},
    )  # fmt: skip
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        payload, status = error.read(), error.code
    except OSError as error:  # refused, reset, timed out
        latency = (time.perf_counter() - started) * 1000
        return ArmReply(latency_ms=latency, error=f"{type(error).__name__}: {error}")
    latency = (time.perf_counter() - started) * 1000
    return ArmReply(status=status, latency_ms=latency, body=payload.decode("utf-8", "replace"))


def exchange(pair: EndpointPair, spec: ShadowSpec, request_id: str, body: bytes, seed: int) -> Exchange:
    """One request to the three arms, one after another in a seeded order (no arm always goes first)."""
    arms = [("source", pair.source_url), ("source_again", pair.source_url), ("target", pair.target_url)]
    random.Random(seed).shuffle(arms)
    replies = {arm: call(url, spec.path, body, request_id, "sample", spec.timeout_seconds) for arm, url in arms}
    return Exchange(id=request_id, origin="sample", arms=replies)


def load_sample(store: StoreSpec | None, spec: ShadowSpec) -> list[tuple[str, bytes]]:
    """Request bodies from the JSON-lines sample: (id, body), id naming the file's line."""
    if spec.requests is None:
        return []
    if store is None:
        raise ApplicationError("shadow.requests is set but no source storage was given", non_retryable=True)
    source = open_store(store)
    where = f"{store.url.rstrip('/')}/{spec.requests}"
    if not source.exists(spec.requests):
        raise ApplicationError(
            f"shadow.requests: {where} does not exist in the source storage; upload a JSON-lines file of request "
            "bodies there (one JSON object per line) or use mirror_percent",
            type="ShadowInputError", non_retryable=True,
        )  # fmt: skip
    sample: list[tuple[str, bytes]] = []
    for number, line in enumerate(source.read_bytes(spec.requests).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError as error:
            raise ApplicationError(
                f"shadow.requests: {where} line {number} is not JSON ({error}); each line must be one request body",
                type="ShadowInputError", non_retryable=True,
            ) from None  # fmt: skip
        sample.append((f"line-{number}", line.strip()))
        if len(sample) >= spec.max_requests:
            break
    if not sample:
        raise ApplicationError(f"shadow.requests: {where} holds no request", type="ShadowInputError",
                               non_retryable=True)  # fmt: skip
    return sample


def send_sample(pair: EndpointPair, spec: ShadowSpec, sample: list[tuple[str, bytes]],
                progress: Callable[[dict[str, int]], None]) -> list[Exchange]:  # fmt: skip
    """At most `spec.concurrency` requests in flight; progress is reported about once a second."""
    done: list[Exchange] = []
    pool = ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="skyshift-shadow")
    try:
        pending: set[Future[Exchange]] = {
            pool.submit(contextvars.copy_context().run, exchange, pair, spec, request_id, body, index)
            for index, (request_id, body) in enumerate(sample)
        }
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            done += [future.result() for future in finished]
            progress({"sent": len(done), "total": len(sample)})
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a cancel must not send the rest of the sample
    order = {request_id: index for index, (request_id, _) in enumerate(sample)}
    return sorted(done, key=lambda e: order[e.id])


def collect_mirrored(client: MirrorClient, spec: ShadowSpec,
                     progress: Callable[[dict[str, int]], None]) -> tuple[list[Exchange], MirrorCounters]:  # fmt: skip
    """Wait until the router holds `min_requests` mirrored exchanges (or `mirror_seconds` passed); read them."""
    deadline, tick = time.monotonic() + spec.mirror_seconds, threading.Event()
    while time.monotonic() < deadline:
        counters = client.status().counters
        progress({"mirrored": counters.collected, "wanted": spec.min_requests})
        if counters.collected >= spec.min_requests:
            break
        tick.wait(0.5)
    return client.all_exchanges(limit=spec.max_requests), client.status().counters


def mirror_client(router: RouterSpec | None) -> MirrorClient:
    if not isinstance(router, HttpRouterSpec):
        kind = router.kind if router else "none"
        raise ApplicationError(
            f"shadow.mirror_percent needs skyshift's http router (workloads.router.kind: http), not {kind}; "
            "set mirror_percent: 0 and use a requests sample",
            type="ShadowInputError", non_retryable=True,
        )  # fmt: skip
    return MirrorClient(router.admin_url)


# -- judging -----------------------------------------------------------------------------------


def _arm_stats(exchanges: list[Exchange], arm: str) -> ArmStats:
    replies = [(e.id, e.arms[arm]) for e in exchanges]
    failed = [(i, r) for i, r in replies if not r.ok]
    p50, p95, p99 = percentiles([r.latency_ms for _, r in replies if r.ok])
    examples = [f"{i}: {f'HTTP {r.status}' if r.status else r.error}" for i, r in failed[:3]]
    return ArmStats(calls=len(replies), errors=len(failed), p50_ms=p50, p95_ms=p95, p99_ms=p99,
                    error_examples=examples)  # fmt: skip


def judge_exchanges(pair: EndpointPair, spec: ShadowSpec, exchanges: list[Exchange], limits: ShadowThresholds,
                    mirror: MirrorCounters | None = None) -> ShadowResult:  # fmt: skip
    """Compare every fully answered exchange field by field and turn the numbers into verdict rows."""
    fields: dict[str, FieldSamples] = {}
    uncomparable: list[str] = []
    position_target = position_floor = None
    compared = 0
    for item in exchanges:
        if not all(item.arms[arm].ok for arm in ARMS):
            continue
        a, b, t = (parse(item.arms[arm].body) for arm in ARMS)
        try:
            noise, drift = compare(spec.comparator, a, b), compare(spec.comparator, a, t)
        except Uncomparable as error:
            uncomparable.append(f"{item.id}: {error}")
            continue
        compared += 1
        for name in noise.differences.keys() | drift.differences.keys():
            fields.setdefault(name, FieldSamples()).add(
                item.id, drift.differences.get(name, 0.0), noise.differences.get(name, 0.0), drift.relative.get(name)
            )
        if drift.positions is not None and noise.positions is not None:
            if position_target is None:
                position_target, position_floor = drift.positions.copy(), noise.positions.copy()
            elif position_target.shape == drift.positions.shape:
                np.maximum(position_target, drift.positions, out=position_target)
                np.maximum(position_floor, noise.positions, out=position_floor)
    judged = judge_fields(fields, spec, limits.confidence)
    arms = {arm: _arm_stats(exchanges, arm) for arm in ARMS}
    source_ms = [e.arms[a].latency_ms for e in exchanges for a in ("source", "source_again") if e.arms[a].ok]
    target_ms = [e.arms["target"].latency_ms for e in exchanges if e.arms["target"].ok]
    name = pair.name
    measurements = [
        measure_requests(name, compared, len(exchanges), uncomparable),
        *measure_outputs(name, judged, spec),
        measure_errors(name, arms["source"].errors + arms["source_again"].errors, 2 * len(exchanges),
                       arms["target"].errors, len(exchanges), arms["target"].error_examples),
        measure_latency(name, source_ms, target_ms),
    ]  # fmt: skip
    if exchanges and arms["source"].errors == len(exchanges):
        measurements.append(source_down(name, arms["source"].calls, arms["source"].error_examples))
    examples = list(dict.fromkeys(f.worst_request for f in judged if f.differs and f.worst_request))
    return ShadowResult(
        endpoint=name,
        comparator=spec.comparator.kind,
        sent=len(exchanges),
        compared=compared,
        from_sample=sum(e.origin == "sample" for e in exchanges),
        from_mirror=sum(e.origin == "mirror" for e in exchanges),
        arms=arms,
        fields=judged[:MAX_FIELDS_KEPT],
        fields_total=len(judged),
        positions=worst_positions(position_target, position_floor, spec),
        examples=examples[:MAX_EXAMPLES],
        mirror=mirror,
        verdict=shadow_verdict(name, measurements, spec, limits),
    )


def comparison_table(result: ShadowResult) -> list[list[str]]:
    """The per-field comparison as rows (header first), for the CLI, reports and notes."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}"

    rows = [
        ["field", "compared", "target max |Δ|", "floor max", "floor p95", "beyond floor", "by chance", "p", "verdict"]
    ]
    for f in result.fields:
        outcome = "DIFFERS" if f.differs else ("not judged" if not f.judged else "ok")
        rows.append([f.field, str(f.compared), number(f.target_max), number(f.floor_max), number(f.floor_p95),
                     str(f.exceeded), str(f.reverse), number(f.p_value), outcome])  # fmt: skip
    return rows


# -- activities --------------------------------------------------------------------------------


def _heartbeat(details: dict[str, int]) -> None:
    activity.heartbeat(details)
    if activity.is_cancelled():
        raise CancelledError("shadow run cancelled")


@activity.defn
def run_shadow(request: RunShadowInput) -> ShadowResult:
    """Shadow one endpoint pair: the sample (and mirrored live traffic) to all three arms, then the verdict.

    Mirroring is switched on for the run and off again before returning (also on failure or
    cancel); the workflow should still register `set_mirror(percent=0)` as a compensation first,
    in case this worker dies mid-run.
    """
    pair, spec = request.endpoint, request.endpoint.shadow
    if spec is None:
        raise ApplicationError(f"endpoint {pair.name} has no shadow settings", type="ShadowInputError",
                               non_retryable=True)  # fmt: skip
    try:
        sample = load_sample(request.store, spec)
    except StoreError as error:
        raise ApplicationError(str(error), type="StoreError", non_retryable=error.permanent) from error
    client = mirror_client(request.router) if spec.mirror_percent > 0 else None
    mirrored: list[Exchange] = []
    counters = None
    if client:
        client.configure(MirrorSettings(percent=spec.mirror_percent, path=spec.path, reset=True))
    try:
        exchanges = send_sample(pair, spec, sample, _heartbeat) if sample else []
        if client:
            mirrored, counters = collect_mirrored(client, spec, _heartbeat)
    finally:
        if client:
            with activity.shield_thread_cancel_exception():  # a cancel must not leave the router mirroring
                client.configure(MirrorSettings(percent=0, path=spec.path))
    activity.logger.info("shadow %s: %d sampled, %d mirrored exchanges", pair.name, len(exchanges), len(mirrored))
    return judge_exchanges(pair, spec, exchanges + mirrored, request.thresholds, counters)


@activity.defn
def set_mirror(request: MirrorInput) -> MirrorCounters:
    """Set the router's mirror share (idempotent); `percent=0` is the compensation of a shadow phase."""
    return mirror_client(request.router).configure(MirrorSettings(percent=request.percent, path=request.path)).counters
