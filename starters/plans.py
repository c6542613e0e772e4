"""Read a plan file (YAML or JSON) into a validated MigrationPlan, or a PlanError naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from workflows.plan import MigrationPlan, PlanError, parse_plan


def load_plan(path: str | Path) -> MigrationPlan:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise PlanError(str(path), [f"cannot read the plan file: {error.strerror or error}"]) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise PlanError(str(path), [f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}"]) from None
    return parse_plan(data, source=str(path))


def plan_schema() -> dict:
    return MigrationPlan.model_json_schema()
