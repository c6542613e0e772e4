"""Price fetchers, one module per provider, registered by name in `FETCHERS`."""

from activities.pricing.fetchers import aws, gcp, lambda_cloud
from activities.pricing.fetchers.base import FETCHERS, PriceFetcher, fetcher_from_spec

__all__ = ["FETCHERS", "PriceFetcher", "aws", "fetcher_from_spec", "gcp", "lambda_cloud"]
