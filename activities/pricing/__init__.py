"""Cost truth: a dated price book, effective cost per GPU-hour, and placement of jobs by expected cost.

- `quotes`: `Quote` (one price with source and `as_of`), `PriceBook` (screened: wrong prices refused by name)
- `files`: the operator's YAML/CSV rate cards; `fetchers/`: AWS, GCP and Lambda price APIs
- `effective`: (price + storage + amortized egress) ÷ measured useful throughput
- `placement`: offers ranked by expected total cost under fit, topology, residency and deadline
- `egress`: tiered egress for the bytes a dry run says will cross; `egress_defaults`: per-scheme list prices
- `offers`: a job file + the book → offers; `unit_costs`: cost per 1k inferences at measured capacity, per
  checkpoint, data-transfer amplification
"""

from activities.pricing.effective import Effective, EffectiveInputs, Factor, Sourced, effective_cost
from activities.pricing.egress_defaults import EGRESS_USD_PER_GB, default_egress_price
from activities.pricing.files import load_price_file
from activities.pricing.placement import Offer, PlacementJob, Ranked, cheapest_hourly, expected_cost, place
from activities.pricing.quotes import PriceBook, PriceError, Quote, Refusal

__all__ = [
    "EGRESS_USD_PER_GB",
    "Effective",
    "EffectiveInputs",
    "Factor",
    "Offer",
    "PlacementJob",
    "PriceBook",
    "PriceError",
    "Quote",
    "Ranked",
    "Refusal",
    "Sourced",
    "cheapest_hourly",
    "default_egress_price",
    "effective_cost",
    "expected_cost",
    "load_price_file",
    "place",
]
