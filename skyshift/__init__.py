"""skyshift: durable, auditable migration of ML workloads between clouds, on Temporal.

This package holds only what both process kinds (starters and workers) need at run time: where
the embedded stack wrote its addresses and how to build a Temporal client. The product lives in
`workflows/`, `activities/`, `workers/` and `starters/`.
"""

__version__ = "0.1.0"
