"""Price files the operator keeps: YAML (a rate card) or CSV (one quote per row), dated by the operator.

The operator vouches for a file until its `valid_until`; after that every quote from it is flagged
stale wherever it is used. Format (README "Cost truth" and `examples/prices/`):

YAML::

    as_of: 2026-12-01T00:00:00Z          # when these prices were read
    valid_until: 2027-01-01T00:00:00Z    # the operator vouches until then
    source: finance rate card 2026-12    # optional; default: the file's name
    compute:
      - {provider: aws, region: us-east-1, instance_type: p5.48xlarge, gpu: H100-80GB, gpu_count: 8,
         gpu_memory_gb: 80, on_demand: 98.32, spot: 55.04, reserved: {"1yr No Upfront": 62.0},
         interruption_rate_per_hour: 0.05}
    egress:
      - {provider: aws, region: us-east-1, destination: internet, tiers: [[0, 0.09], [10240, 0.085]]}
    storage:
      - {provider: aws, region: us-east-1, usd_per_gb_month: 0.023}

CSV: a header row with `provider,region,kind,usd,as_of,valid_until` and any of `instance_type, gpu,
gpu_count, gpu_memory_gb, market, term, destination, tier_start_gb, interruption_rate_per_hour`;
one quote per row (lines starting with `#` are comments).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from activities.pricing.quotes import PriceBook, PriceError, Quote

MAX_FILE_BYTES = 16 << 20  # a rate card is kilobytes; a bigger file is a mistake, not a price list
_CSV_FIELDS = set(Quote.model_fields) - {"source", "source_kind"}


def _when(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise PriceError(f"{where}: {value!r} is not a date (write 2026-12-01T00:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _quote(fields: dict[str, Any], where: str) -> Quote:
    try:
        return Quote(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "row"
        raise PriceError(f"{where}.{field}: {first['msg'].removeprefix('Value error, ')}") from None


def _read(path: Path) -> str:
    if not path.is_file():
        raise PriceError(f"{path}: no such price file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise PriceError(f"{path}: {path.stat().st_size:,} bytes is more than a price file holds ({MAX_FILE_BYTES:,})")
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError:
        raise PriceError(f"{path}: not UTF-8 text (save it as UTF-8 YAML or CSV)") from None


def load_yaml(path: Path) -> list[Quote]:
    try:
        data = yaml.safe_load(_read(path))
    except yaml.YAMLError as error:
        raise PriceError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise PriceError(f"{path}: expected a mapping with as_of, valid_until and compute/egress/storage lists")
    for key in ("as_of", "valid_until"):
        if key not in data:
            raise PriceError(
                f"{path}: {key}: missing (an operator file says when its prices were read and until when they hold)"
            )
    unknown = set(data) - {"as_of", "valid_until", "source", "compute", "egress", "storage"}
    if unknown:
        raise PriceError(f"{path}: {sorted(unknown)[0]}: unknown key (expected compute, egress, storage)")
    common = {
        "as_of": _when(data["as_of"], f"{path}: as_of"),
        "valid_until": _when(data["valid_until"], f"{path}: valid_until"),
        "source_kind": "operator",
    }
    label = str(data.get("source") or path.name)
    quotes: list[Quote] = []
    for section in ("compute", "egress", "storage"):
        rows = data.get(section) or []
        if not isinstance(rows, list):
            raise PriceError(f"{path}: {section}: expected a list")
        for i, row in enumerate(rows):
            where = f"{path}: {section}[{i}]"
            if not isinstance(row, dict):
                raise PriceError(f"{where}: expected a mapping")
            row = dict(row)
            base = {"kind": section, "source": f"file:{label} ({section}[{i}])", **common}
            if section == "compute":
                prices = {m: row.pop(m, None) for m in ("on_demand", "spot")}
                reserved = row.pop("reserved", None) or {}
                if not isinstance(reserved, dict):
                    raise PriceError(f"{where}.reserved: expected a mapping of term to USD per hour")
                if all(v is None for v in prices.values()) and not reserved:
                    raise PriceError(f"{where}: no price: give on_demand, spot or reserved (USD per instance-hour)")
                for market, usd in prices.items():
                    if usd is not None:
                        quotes.append(_quote({**base, **row, "market": market, "usd": usd}, where))
                for term, usd in reserved.items():
                    quotes.append(_quote({**base, **row, "market": "reserved", "term": str(term), "usd": usd}, where))
            elif section == "egress":
                tiers = row.pop("tiers", None)
                if not isinstance(tiers, list) or not tiers:
                    raise PriceError(f"{where}.tiers: expected [[start_gb, usd_per_gb], ...]")
                for j, tier in enumerate(tiers):
                    if not (isinstance(tier, list | tuple) and len(tier) == 2):
                        raise PriceError(f"{where}.tiers[{j}]: expected [start_gb, usd_per_gb]")
                    quotes.append(
                        _quote({**base, **row, "tier_start_gb": tier[0], "usd": tier[1]}, f"{where}.tiers[{j}]")
                    )
            else:
                if "usd_per_gb_month" not in row:
                    raise PriceError(f"{where}.usd_per_gb_month: missing")
                usd = row.pop("usd_per_gb_month")
                quotes.append(_quote({**base, **row, "usd": usd}, where))
    return quotes


def load_csv(path: Path) -> list[Quote]:
    text = "".join(line for line in io.StringIO(_read(path)) if not line.lstrip().startswith("#"))
    reader = csv.DictReader(io.StringIO(text))
    header = set(reader.fieldnames or [])
    missing = {"provider", "region", "kind", "usd", "as_of", "valid_until"} - header
    if missing:
        raise PriceError(f"{path}: header: missing column(s) {', '.join(sorted(missing))}")
    unknown = header - _CSV_FIELDS
    if unknown:
        raise PriceError(f"{path}: header: unknown column {sorted(unknown)[0]!r}")
    quotes = []
    for number, row in enumerate(reader, start=2):
        where = f"{path}: row {number}"
        fields: dict[str, Any] = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
        if None in row:
            raise PriceError(f"{where}: more cells than the header has columns")
        fields["as_of"] = _when(fields.get("as_of"), f"{where}.as_of")
        fields["valid_until"] = _when(fields.get("valid_until"), f"{where}.valid_until")
        quotes.append(
            _quote({**fields, "source": f"file:{path.name} (row {number})", "source_kind": "operator"}, where)
        )
    return quotes


def load_price_file(path: str | Path) -> PriceBook:
    """A screened book from one operator file; refusals are kept in the book, by name."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return PriceBook.build(load_yaml(path))
    if suffix == ".csv":
        return PriceBook.build(load_csv(path))
    raise PriceError(f"{path}: unknown price file type {suffix or '(none)'!r} (use .yaml, .yml or .csv)")
