"""Response comparators: how far one answer is from another, per field, for JSON, logits and text.

Each comparator turns a pair of parsed responses into `{field: difference}` in the field's own
units (absolute difference for numbers, 0/1 for equality, nats for KL, a normalized edit distance
for text). The runner calls it twice per request, source-vs-source (the noise floor) and
source-vs-target, and the judge compares the two. A field missing on one side, or changing type,
is `inf`: a structural difference no margin absorbs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skyshift.spec.shadow import Comparator, JsonComparator, LogitsComparator, TextComparator

STRUCTURAL = math.inf
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class Uncomparable(ValueError):
    """The reference (source) response has nothing to compare at the comparator's path."""


@dataclass
class Comparison:
    differences: dict[str, float]
    relative: dict[str, float] = field(default_factory=dict)
    positions: np.ndarray | None = None  # logits: |Δ| per (row, class)


def parse(body: str | None) -> Any:
    """A response body as JSON when it is JSON, else the raw text (the text comparator can use it)."""
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def select(document: Any, path: str) -> Any:
    """The value at a dotted path with indices (`choices[0].text`); LookupError when absent."""
    value = document
    for name, index in _TOKEN.findall(path):
        if name:
            if not isinstance(value, dict) or name not in value:
                raise LookupError(path)
            value = value[name]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                raise LookupError(path)
            value = value[int(index)]
    return value


def compare(comparator: Comparator, reference: Any, other: Any) -> Comparison:
    """Differences of `other` from `reference` (the source's first answer) for every field."""
    if isinstance(comparator, LogitsComparator):
        return _compare_logits(comparator, reference, other)
    if isinstance(comparator, TextComparator):
        return _compare_text(comparator, reference, other)
    return _compare_json(comparator, reference, other)


# -- json --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaves(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _leaves(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            _leaves(item, f"{prefix}[{index}]", out)
    else:
        out[prefix or "$"] = value
    return out


def _ignore_pattern(patterns: list[str]) -> re.Pattern[str] | None:
    """Leaf paths or prefixes; `*` stands for one key or index (fnmatch would read `[0]` as a class)."""
    if not patterns:
        return None
    parts = [re.escape(p).replace(r"\*", r"[^.\[\]]+") for p in patterns]
    return re.compile(rf"^(?:{'|'.join(parts)})(?:$|[.\[])")


def _leaf_difference(a: Any, b: Any) -> tuple[float, float | None]:
    if _is_number(a) and _is_number(b):
        if math.isnan(a) or math.isnan(b):
            return (0.0 if math.isnan(a) and math.isnan(b) else STRUCTURAL), None
        difference = abs(a - b)
        scale = max(abs(a), abs(b))
        return difference, (difference / scale if scale else 0.0)
    if _is_number(a) != _is_number(b) or type(a) is not type(b):
        return STRUCTURAL, None
    return (0.0 if a == b else 1.0), None


def _json_leaves(comparator: JsonComparator, document: Any, reference: bool) -> dict[str, Any]:
    try:
        value = select(document, comparator.path)
    except LookupError:
        if reference:
            raise Uncomparable(f"no '{comparator.path}' in the source's response") from None
        return {}
    leaves = _leaves(value, comparator.path, {})
    ignored = _ignore_pattern(comparator.ignore)
    return {k: v for k, v in leaves.items() if not (ignored and ignored.match(k))}


def _compare_json(comparator: JsonComparator, reference: Any, other: Any) -> Comparison:
    a, b = _json_leaves(comparator, reference, True), _json_leaves(comparator, other, False)
    result = Comparison(differences={})
    for name in a.keys() | b.keys():
        if name not in a or name not in b:
            result.differences[name] = STRUCTURAL
            continue
        difference, relative = _leaf_difference(a[name], b[name])
        result.differences[name] = difference
        if relative is not None:
            result.relative[name] = relative
    return result


# -- logits ------------------------------------------------------------------------------------


def _logits(document: Any, path: str) -> np.ndarray:
    array = np.asarray(select(document, path), dtype=np.float64)
    if array.ndim == 0 or array.size == 0:
        raise ValueError("not an array of logits")
    return array.reshape(-1, array.shape[-1])


def logits_fields(comparator: LogitsComparator) -> tuple[str, str, str]:
    return "max_abs_diff", "kl_divergence", f"top{comparator.top_k}_disagreement"


def _compare_logits(comparator: LogitsComparator, reference: Any, other: Any) -> Comparison:
    from scipy.special import rel_entr, softmax

    names = logits_fields(comparator)
    try:
        a = _logits(reference, comparator.path)
    except (LookupError, ValueError, TypeError) as error:
        raise Uncomparable(f"no logits at '{comparator.path}' in the source's response ({error})") from None
    try:
        b = _logits(other, comparator.path)
    except (LookupError, ValueError, TypeError):
        b = None
    if b is None or b.shape != a.shape or not np.isfinite(b).all():
        return Comparison(differences=dict.fromkeys(names, STRUCTURAL))
    positions = np.abs(a - b)
    kl = float(np.mean(np.sum(rel_entr(softmax(a, axis=-1), softmax(b, axis=-1)), axis=-1)))
    k = min(comparator.top_k, a.shape[-1])
    top_a = np.sort(np.argsort(-a, axis=-1, kind="stable")[:, :k], axis=-1)
    top_b = np.sort(np.argsort(-b, axis=-1, kind="stable")[:, :k], axis=-1)
    disagreement = float(np.mean(np.any(top_a != top_b, axis=-1)))
    return Comparison(
        differences=dict(zip(names, (float(positions.max()), max(kl, 0.0), disagreement), strict=True)),
        positions=positions,
    )


# -- text --------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance, one numpy row per character of the longer string.

    Hand-written because no edit-distance library is a dependency (rapidfuzz would be the choice);
    the insertion recurrence becomes a running minimum, so each row is vectorized.
    """
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    columns = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    offsets = np.arange(len(b) + 1)
    previous = offsets.copy()
    for row, char in enumerate(np.frombuffer(a.encode("utf-32-le"), dtype=np.uint32), start=1):
        current = np.empty_like(previous)
        current[0] = row
        current[1:] = np.minimum(previous[:-1] + (columns != char), previous[1:] + 1)
        previous = np.minimum.accumulate(current - offsets) + offsets
    return int(previous[-1])


def _texts(document: Any, path: str) -> list[str]:
    value = document if not path and isinstance(document, str) else select(document, path)
    if isinstance(value, str):
        return [value]
    flat: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            flat.append(item)
        else:
            raise TypeError(f"'{path}' holds {type(item).__name__}, not text")
    return flat


def _compare_text(comparator: TextComparator, reference: Any, other: Any) -> Comparison:
    try:
        a = _texts(reference, comparator.path)
    except (LookupError, TypeError) as error:
        raise Uncomparable(f"no text at '{comparator.path or '$'}' in the source's response ({error})") from None
    try:
        b = _texts(other, comparator.path)
    except (LookupError, TypeError):
        return Comparison(differences={"exact_mismatch": STRUCTURAL, "edit_distance": STRUCTURAL})
    count = max(len(a), len(b), 1)
    padded = [(x, y) for x, y in zip(a + [""] * (count - len(a)), b + [""] * (count - len(b)), strict=True)]
    mismatch = sum(x != y for x, y in padded) / count
    edits = sum(levenshtein(x, y) / max(len(x), len(y), 1) for x, y in padded) / count
    return Comparison(differences={"exact_mismatch": mismatch, "edit_distance": edits})
