"""The report's effective cost per GPU-hour on each side, from what the migration recorded.

`activities.pricing.effective_cost` over the recorded inputs, each with its source and age:
the plan's price (read when the migration started; a plan carries no price date of its own), the
useful throughput the POC measured (the operator's job when it ran, else the micro-suite's training
figure), the all-reduce busbw and NVLink islands the micro-suite measured, and the egress the syncs
metered (on the target side, spread over a month of work). The target is expressed in GPU-hours of
the *source's* measured throughput, so the two sides compare like with like.
"""

from __future__ import annotations

import statistics

from activities.pricing import Effective, EffectiveInputs, Sourced, effective_cost
from starters.report.history import Recorded
from workflows.plan import Environment
from workflows.state import MigrationState

HOURS_PER_MONTH = 730.0


def _closed(recorded: Recorded, activity: str, environment: str | None = None):
    """When the newest completed `activity` (for this environment, when its result names one) closed."""
    found = [a for a in recorded.results(activity) if environment is None or not isinstance(a.result, dict)
             or a.result.get("environment") in (None, environment)]  # fmt: skip
    return max((a.closed_at for a in found if a.closed_at), default=None)


def _throughput(recorded: Recorded, state: MigrationState, side: str, env: Environment) -> tuple[Sourced, str] | None:
    job = getattr(state.poc, "job_bench", None)
    summary = getattr(job, side, None) if job is not None else None
    if summary is not None and summary.per_s.median and summary.unit == "samples":
        source = f"the job '{job.job}' on {env.name}: median of {summary.trials_ok} trial(s) (judge_job_bench)"
        value = Sourced(value=summary.per_s.median, source=source, as_of=_closed(recorded, "judge_job_bench"))
        return value, "job"
    bench = state.poc.source_bench if side == "source" else state.poc.target_bench
    rates = [b.median_train_samples_per_s for b in bench if b.median_train_samples_per_s > 0]
    if not rates:
        return None
    source = f"micro-suite training figure on {env.name}: median of {len(rates)} run(s) (run_benchmark)"
    value = Sourced(value=statistics.median(rates), source=source, as_of=_closed(recorded, "run_benchmark", env.name))
    return value, "micro-suite"


def _allreduce(state: MigrationState, side: str) -> tuple[Sourced | None, int | None]:
    bench = state.poc.source_bench if side == "source" else state.poc.target_bench
    for result in bench:
        suite = result.suite
        if suite is None:
            continue
        busbw = None
        if suite.allreduce is not None and suite.allreduce.points:
            largest = max(suite.allreduce.points, key=lambda p: p.size_bytes)
            busbw = Sourced(value=largest.busbw_gbps.median, source=(
                f"micro-suite all-reduce ({suite.allreduce.backend}, {suite.allreduce.world_size} ranks, "
                f"{largest.size_bytes:,} B)"))  # fmt: skip
        island = max((len(i) for i in suite.topology.islands), default=None) if suite.topology else None
        return busbw, island
    return None, None


def effective_side(recorded: Recorded, state: MigrationState, side: str, env: Environment,
                   reference: float | None) -> Effective | None:  # fmt: skip
    """One side's effective cost; `reference` is the source's useful samples/s per GPU (None: this side's)."""
    measured = _throughput(recorded, state, side, env)
    if measured is None:
        return None
    throughput, basis = measured
    gpus = max(env.compute.gpu_count, 1)
    price = env.compute.price_per_gpu_hour * gpus
    busbw, island = _allreduce(state, side)
    egress = None
    if side == "target" and state.egress_cost_usd:
        rate = recorded.plan.source_env.egress_per_gb_usd
        metered = f"egress metered by the syncs ({state.egress_bytes / 1e9:,.3f} GB at the source's ${rate:g}/GB)"
        egress = Sourced(value=state.egress_cost_usd, source=f"{metered}, spread over {HOURS_PER_MONTH:g} h of work")
    inputs = EffectiveInputs(
        environment=env.name, gpu_count=gpus, throughput=throughput, throughput_basis=basis,
        price_per_hour=Sourced(value=price, as_of=recorded.started_at, source=(
            f"plan '{recorded.plan.name}': {gpus} x {env.compute.gpu_type} at ${env.compute.price_per_gpu_hour:g}"
            "/GPU-h, read when the migration started (no price book date)")),
        egress_usd=egress, amortize_hours=HOURS_PER_MONTH, busbw_in_island_gbps=busbw,
        gpus_per_nvlink_island=island or 8,
    )  # fmt: skip
    try:
        return effective_cost(inputs, reference_samples_per_gpu_s=reference, now=recorded.closed_at)
    except ValueError:
        return None


def effective_both(recorded: Recorded, state: MigrationState) -> dict[str, Effective | None]:
    plan = recorded.plan
    source = effective_side(recorded, state, "source", plan.source_env, None)
    reference = source.reference_samples_per_gpu_s if source else None
    target = effective_side(recorded, state, "target", plan.target_env, reference)
    return {"source": source, "target": target}
