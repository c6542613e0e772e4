"""`skyshift place JOB.yaml --prices FILE...`: rank where a job should run by expected total cost.

Reads the operator's price files (YAML/CSV, `examples/prices/`), builds one offer per compute quote
whose GPU the job has a measured throughput for, and ranks them with `activities.pricing.place`:
expected total cost = price x (hours of work + expected preemption overhead) + egress to bring the
data + storage, under memory fit, topology, residency and the deadline. Every price is printed with
its source and age; a stale one is marked; refused prices and infeasible offers are listed with why.
Runs in this process (no Temporal). Exit 0: a feasible offer; 1: none; 2: invalid input.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import ValidationError

from starters.common import EXIT_FAILED, EXIT_OK, UsageError, emit, fail


def load_job(path: str):
    from activities.pricing.offers import JobFile

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no such job file")
    try:
        data = yaml.safe_load(file.read_text("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not a YAML job file: {error}") from None
    try:
        return JobFile.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "job"
        raise UsageError(f"{path}: {field}: {first['msg']}") from None


def cmd_place(args: argparse.Namespace) -> int:
    from activities.pricing import PriceBook, PriceError, load_price_file, place
    from activities.pricing.fetchers import fetcher_from_spec
    from activities.pricing.offers import offers_for

    job = load_job(args.job)
    book = PriceBook()
    try:
        for path in args.prices or []:
            book = book.merged(load_price_file(path))
        fetchers = [fetcher_from_spec(spec) for spec in args.fetch or []]
    except PriceError as error:
        raise UsageError(str(error)) from None
    now = datetime.now(UTC)
    for spec, fetcher in zip(args.fetch or [], fetchers, strict=True):
        try:
            book = book.merged(PriceBook.build(fetcher.fetch(now)))
        except (OSError, ValueError) as error:  # unreachable API, an answer not in the documented format
            return fail(args, EXIT_FAILED, f"--fetch {spec}: cannot read prices: {error}")
    if not book.quotes and not book.refused:
        raise UsageError("no prices: give --prices FILE or --fetch SOURCE")
    offers, skipped = offers_for(job, book, now)
    ranked = place(job, offers)
    feasible = [r for r in ranked if r.feasible]
    payload = {
        "job": job.name,
        "ranked": [r.model_dump(mode="json") for r in ranked[: args.top]] + [
            r.model_dump(mode="json") for r in ranked[args.top :] if not r.feasible],
        "feasible": len(feasible),
        "offers": len(offers),
        "refused_prices": [r.model_dump() for r in book.refused],
        "skipped_quotes": skipped,
        "stale_prices": sum(1 for o in offers if o.stale),
    }  # fmt: skip
    lines = [f"{job.name}: {len(feasible)} of {len(offers)} offer(s) can run it; cheapest expected total first"]
    lines.append(f"{'#':>2}  {'offer':<52} {'$/h':>8} {'hours':>7} {'egress':>9} {'storage':>8} {'expected':>10}")
    for i, r in enumerate(feasible[: args.top], start=1):
        lines.append(
            f"{i:>2}  {r.offer.id:<52} {r.offer.usd_per_hour:>8,.2f} {r.wall_hours:>7,.1f} {r.egress_usd:>9,.2f} "
            f"{r.storage_usd:>8,.2f} {r.expected_usd:>10,.2f}{'  STALE' if r.offer.stale else ''}"
        )
        lines.append(f"    price: {r.offer.price_source}")
    infeasible = [r for r in ranked if not r.feasible]
    if infeasible:
        lines.append("cannot run it:")
        lines += [f"  {r.offer.id}: {r.reason}" for r in infeasible]
    if book.refused:
        lines.append("prices refused:")
        lines += [f"  {r.quote} ({r.source}): {r.reason}" for r in book.refused]
    if skipped:
        lines.append("left out:")
        lines += [f"  {line}" for line in skipped]
    emit(args, payload, "\n".join(lines))
    return EXIT_OK if feasible else EXIT_FAILED


def add_commands(sub: argparse._SubParsersAction) -> None:
    place = sub.add_parser(
        "place",
        help="rank where a job should run by expected total cost (price book + measured throughput)",
        description="Rank offers for JOB.yaml by expected total cost: price x (hours of work + expected "
        "preemption overhead) + egress to bring the data + storage, under memory, topology, residency and "
        "deadline. Every price with its source and age.",
    )
    place.set_defaults(handler=cmd_place)
    place.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
    place.add_argument(
        "job", help="the job: needs, measured throughput per GPU, data location (examples/prices/job.yaml)"
    )
    place.add_argument("--prices", action="append", metavar="FILE",
                       help="a price file (.yaml/.csv); repeatable, screened together")  # fmt: skip
    place.add_argument("--fetch", action="append", metavar="SOURCE",
                       help="read a provider's price API too: lambda | gcp:REGION[,..] | aws:REGION:TYPE[,..] "
                       "(keys from LAMBDA_API_KEY, GCP_BILLING_API_KEY, AWS credentials)")  # fmt: skip
    place.add_argument("--top", type=int, default=10, help="show this many feasible offers (default 10)")
