"""Shadow inference: the same requests to both endpoints, outputs compared against a noise floor.

`compare` (comparators), `judge` (the floor and the verdict rows), `mirror`
(the router's live-traffic mirror API) and `runner` (the `run_shadow` and `set_mirror` activities).
The plan data (`ShadowSpec`, the comparators) lives in `skyshift.spec.shadow` and is re-exported here.
"""

from skyshift.spec.shadow import (
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
