"""Plan validation through the CLI: invalid plans exit 2 naming the field, and start nothing."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from starters.cli import main
from workflows.plan import PlanError, parse_plan

EXAMPLE = Path(__file__).parent.parent / "examples" / "plan.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def write(tmp_path: Path, data, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def edited(change) -> dict:
    data = copy.deepcopy(example())
    change(data)
    return data


def test_example_plan_is_valid_and_durations_are_real(capsys):
    assert main(["plan", "validate", str(EXAMPLE)]) == 0
    assert "valid plan 'llama-ft-to-nebius'" in capsys.readouterr().out
    plan = parse_plan(example())
    assert [s.duration for s in plan.cutover.stages[:3]] == [timedelta(hours=h) for h in (24, 48, 72)]
    assert plan.soak_period == timedelta(days=7) and plan.target_env.task_queue == "skyshift.nebius-eu-north1"


def test_plan_validate_json_prints_one_object(capsys):
    assert main(["plan", "validate", str(EXAMPLE), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["plan"]["name"] == "llama-ft-to-nebius"


def test_plan_schema_names_the_fields(capsys):
    assert main(["plan", "schema", "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"environments", "workloads", "cutover", "egress_budget_usd"} <= set(schema["properties"])
    # The ceilings are part of the contract an operator can read, not only of the code.
    assert schema["$defs"]["ComputeSpec"]["properties"]["price_per_gpu_hour"]["maximum"] == 10_000
    assert schema["$defs"]["Thresholds"]["properties"]["latency_increase_pct"]["maximum"] == 1000


INVALID = [
    ("region empty", lambda d: d["environments"][1].update(region=""), "environments[1].region"),
    ("bad storage scheme", lambda d: d["environments"][0]["storage"].update(url="ftp://x/y"), "environments[0].storage"),
    ("relative file url", lambda d: d["environments"][0]["storage"].update(url="file://data"), "environments[0].storage"),
    ("negative egress price", lambda d: d["environments"][0].update(egress_per_gb_usd=-1), "environments[0].egress_per_gb_usd"),
    ("gpu count not a number", lambda d: d["environments"][1]["compute"].update(gpu_count="eight"), "environments[1].compute.gpu_count"),
    ("unknown target", lambda d: d.update(target="azure-westeurope"), "target: 'azure-westeurope' is not one of"),
    ("source is target", lambda d: d.update(target=d["source"]), "target: must differ from source"),
    ("duplicate env", lambda d: d["environments"][1].update(name=d["environments"][0]["name"]), "environments[1].name"),
    ("stages go down", lambda d: d["cutover"]["stages"][1].update(percent=3), "stages[1].percent"),
    ("last stage not 100", lambda d: d["cutover"]["stages"].pop(), "stages[2].percent: the last stage must reach 100"),
    ("bad duration", lambda d: d["cutover"]["stages"][0].update(duration="a day"), "cutover.stages[0].duration"),
    ("percent above 100", lambda d: d["cutover"]["stages"][3].update(percent=150), "cutover.stages[3].percent"),
    ("path escapes root", lambda d: d["workloads"]["datasets"][0].update(path="../other-team"), "workloads.datasets[0].path"),
    ("unknown field", lambda d: d.update(egress_budget=5), "egress_budget: Extra inputs are not permitted"),
    ("missing budget", lambda d: d.pop("egress_budget_usd"), "egress_budget_usd: Field required"),
    ("endpoints without router", lambda d: d["workloads"].pop("router"), "workloads: router:"),
    ("bad endpoint url", lambda d: d["workloads"]["endpoints"][0].update(target_url="chat:8000"), "workloads.endpoints[0].target_url"),
    ("sync without interval", lambda d: d.update(sync={}), "sync.every: Field required"),
    ("sync every 0s", lambda d: d.update(sync={"every": "0s"}), "sync.every: must be at least 1 s"),
    ("sync every 8 days", lambda d: d.update(sync={"every": "8d"}), "sync.every: must be at most 7 days"),
    ("sync with no datasets", lambda d: (d.update(sync={"every": "6h"}), d["workloads"].update(datasets=[], jobs=[]),
                                        d["bench"].pop("job")),
     "sync: the plan has no workloads.datasets to keep current"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "field"), [(c, f) for _, c, f in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_plan_exits_2_naming_the_field(tmp_path, capsys, change, field):
    path = write(tmp_path, edited(change))
    assert main(["plan", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert field in err and str(path) in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", "not valid YAML"),
        ("- a\n- list\n", "must be a mapping"),
        (None, "cannot read the plan file"),
    ],
)
def test_unreadable_plans_exit_2(tmp_path, capsys, text, message):
    path = tmp_path / "missing.yaml" if text is None else write(tmp_path, text)
    assert main(["plan", "validate", str(path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.stack
async def test_start_with_an_invalid_plan_starts_nothing(tmp_path, client, capsys):
    path = write(tmp_path, edited(lambda d: d["environments"][1].update(region="")))
    workflow_id = "must-not-exist-" + tmp_path.name
    # `start` validates before connecting; run it off the event loop as the CLI would run.
    import asyncio

    code = await asyncio.to_thread(main, ["start", str(path), "--id", workflow_id])
    assert code == 2
    assert "environments[1].region" in capsys.readouterr().err
    found = [w async for w in client.list_workflows(f'WorkflowId="{workflow_id}"')]
    assert found == []


def test_plan_error_lists_every_problem():
    with pytest.raises(PlanError) as error:
        parse_plan(
            edited(lambda d: (d["environments"][0].update(region=""), d["environments"][1].update(provider="N!")))
        )
    assert len(error.value.problems) == 2


def test_data_that_contains_itself_is_refused_not_recursed():
    """Plans built in code (the demo, tests, other tools) get the same depth bound as files."""
    data = example()
    data["workloads"]["datasets"][0]["path"] = data["workloads"]["datasets"]
    with pytest.raises(PlanError, match=r"workloads\.datasets\[0\]\.path\[0\]\.path.*nested deeper than 32 levels"):
        parse_plan(data)
