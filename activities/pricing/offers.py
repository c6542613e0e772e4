"""Offers from a price book: each compute quote a job could run on, with what was measured for the job.

The job file (`skyshift place JOB.yaml`) says what the job needs and what the POC measured: useful
samples/s per GPU by GPU model (the job's own figure, else the micro-suite's), where its data lives
(egress to anywhere else is priced from the book's egress quote of that place), and its residency.
An offer whose GPU has no measured throughput is left out *by name* rather than guessed.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from activities.pricing.placement import Offer, PlacementJob
from activities.pricing.quotes import PriceBook, Quote


class Measured(BaseModel):
    samples_per_s_per_gpu: float = Field(gt=0)
    source: str = Field(min_length=1, description="Which run measured it: a POC job bench, the micro-suite")


class DataLocation(BaseModel):
    provider: str
    region: str


class JobFile(PlacementJob):
    """A placement job with the measurements and the data's location the offers are priced from."""

    data: DataLocation
    throughput: dict[str, Measured] = Field(
        description="Measured useful samples/s per GPU, keyed by GPU model, or provider/GPU, or provider/region/GPU "
        "(the most specific wins: a cluster with a slow network is measured where it is)"
    )


def egress_price(book: PriceBook, data: DataLocation, quote: Quote, month_gb: float) -> tuple[float, str]:
    """USD per GB to bring the data to the quote's place, and the source of that price."""
    if (quote.provider, quote.region) == (data.provider, data.region):
        return 0.0, "in place"
    destination = "inter-region" if quote.provider == data.provider else "internet"
    found = book.egress(data.provider, data.region, destination, month_gb) or (
        book.egress(data.provider, data.region, "internet", month_gb)
    )
    if found is None:
        return 0.0, f"no egress quote for {data.provider}/{data.region} → {destination}: counted as $0"
    return found.usd, found.source


def offers_for(job: JobFile, book: PriceBook, now: datetime) -> tuple[list[Offer], list[str]]:
    """Every compute quote with a GPU as an offer; and the quotes left out, each with why."""
    offers, skipped = [], []
    measured = {gpu.lower(): m for gpu, m in job.throughput.items()}
    for quote in book.compute():
        if not quote.gpu or quote.gpu_count <= 0:
            continue
        if (quote.instance_type or "").endswith("-gpu") and job.min_gpus > quote.gpu_count:
            skipped.append(f"{quote.name}: a GPU priced alone (GCP's GPU SKU): a whole machine's price is needed for "
                           f"{job.min_gpus} GPUs (add the machine type to a price file)")  # fmt: skip
            continue
        keys = (f"{quote.provider}/{quote.region}/{quote.gpu}", f"{quote.provider}/{quote.gpu}", quote.gpu)
        rate = next((measured[k.lower()] for k in keys if k.lower() in measured), None)
        if rate is None:
            skipped.append(f"{quote.name}: no measured throughput for {quote.gpu} (add it under throughput:)")
            continue
        egress, egress_source = egress_price(book, job.data, quote, job.dataset_gb)
        storage = book.storage(quote.provider, quote.region)
        suffix = f"{quote.market}{'-' + quote.term.replace(' ', '-') if quote.term else ''}"
        offers.append(Offer(
            id=f"{quote.provider}/{quote.region}/{quote.instance_type}/{suffix}", provider=quote.provider,
            region=quote.region, instance_type=quote.instance_type or "?", gpu=quote.gpu, gpu_count=quote.gpu_count,
            gpu_memory_gb=quote.gpu_memory_gb or 0.0, market=quote.market or "on_demand", usd_per_hour=quote.usd,
            samples_per_s=rate.samples_per_s_per_gpu * quote.gpu_count,
            interruption_rate_per_hour=quote.interruption_rate_per_hour or 0.0,
            egress_usd_per_gb=egress, storage_usd_per_gb_month=storage.usd if storage else 0.0,
            price_source=f"{quote.provenance(now)}; egress: {egress_source}; throughput: {rate.source}",
            stale=quote.stale(now),
        ))  # fmt: skip
    return offers, skipped
