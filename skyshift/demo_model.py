"""The demo's tiny inference model and its request shape: what the seeded source, the endpoints and
the tests must agree on, kept below both `starters` (which seeds it) and `workers` (which serve it)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INPUTS, OUTPUTS = 16, 4


def tiny_model(seed: int = 0, hidden: int = 64) -> torch.nn.Module:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(INPUTS, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, OUTPUTS))


def request_sample(count: int, seed: int = 0, rows: int = 1) -> bytes:
    """A JSON-lines sample of request bodies (seeded): what `shadow.requests` points at."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    lines = [
        json.dumps({"inputs": torch.randn(rows, INPUTS, generator=generator).round(decimals=4).tolist()})
        for _ in range(count)
    ]
    return ("\n".join(lines) + "\n").encode()
