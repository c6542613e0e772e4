"""Shadow inference: the same requests to both endpoints, outputs compared against a noise floor.

`spec` (plan data), `compare` (comparators), `judge` (the floor and the verdict rows), `mirror`
(the router's live-traffic mirror API) and `runner` (the `run_shadow` and `set_mirror` activities).
Only the plan data is re-exported here: `activities.metrics` imports it, and the runner imports
`activities.metrics`, so importing the runner from this package would be circular.
"""

from activities.shadow.spec import (
    ARMS,
    SHADOW_HEADER,
    SHADOW_ID_HEADER,
    Comparator,
    JsonComparator,
    LogitsComparator,
    ShadowSpec,
    TextComparator,
)

__all__ = [
    "ARMS",
    "SHADOW_HEADER",
    "SHADOW_ID_HEADER",
    "Comparator",
    "JsonComparator",
    "LogitsComparator",
    "ShadowSpec",
    "TextComparator",
]
