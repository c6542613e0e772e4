"""What every `skyshift` command shares: exit codes, the invalid-input error and JSON-or-text output.

Command modules (`starters/cmd_*.py`) import from here, never from `starters.cli`, so the parser can
import them without a cycle.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class UsageError(Exception):
    """Invalid input: exit 2."""


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """`--json`: exactly one JSON object on stdout; otherwise the human-readable text."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=str))
    else:
        print(text)
