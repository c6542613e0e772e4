"""Hostile plan files are refused cleanly: exit 2, the file or field named, no traceback, and it returns.

Each row is a file an operator (or an attacker, or a broken generator) could hand to `skyshift plan
validate` or `skyshift start`: not a regular file, too large, not UTF-8, too deep, repeated keys,
infinite numbers, durations and thresholds out of range, URLs and paths with '..', '.' or '//'.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from starters.cli import main
from starters.demo import demo_plan
from starters.plans import MAX_PLAN_BYTES, load_plan
from tests.helpers import plan_data
from workflows.plan import MAX_DEPTH, MAX_NODES, parse_plan

EXAMPLE = Path(__file__).parent.parent / "examples" / "plan.yaml"
EXAMPLE_TEXT = EXAMPLE.read_text()


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_TEXT)


def edited(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = copy.deepcopy(example())
    change(data)
    return data


def yaml_file(data: Any) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        return path

    return make


def raw(content: str | bytes, name: str = "plan.yaml") -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return make


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    os.mkfifo(path)
    return path


def sparse(size: int) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / "plan.yaml"
        with path.open("wb") as file:
            file.truncate(size)  # a hole: 50 MB on paper, no disk written
        return path

    return make


def replace_line(old: str, new: str) -> str:
    assert old in EXAMPLE_TEXT, old
    return EXAMPLE_TEXT.replace(old, new, 1)


def env(index: int, **fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["environments"][index].update(fields)


def compute(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["environments"][1]["compute"].update(fields)


def storage(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["environments"][0]["storage"].update(fields)


def cutover(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["cutover"].update(fields)


def thresholds(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["thresholds"].update(fields)


def top(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d.update(fields)


def router(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["workloads"]["router"].update(fields)


def endpoint(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["workloads"]["endpoints"][0].update(fields)


def dataset_path(path: str) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["workloads"]["datasets"][0].update(path=path)


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


DEEP_YAML = "name: " + "[" * 10_000 + "]" * 10_000 + "\n"
DEEP_JSON = '{"name": ' + "[" * 10_000 + "]" * 10_000 + "}"
ALIAS_BOMB = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(9)
)
LATIN1 = replace_line("region: eu-north1", "region: région-nord").encode("latin-1")
BINARY = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)
REPEATED_YAML = replace_line("decommission: {delete_source: false}", "decommission:\n  delete_source: false")
REPEATED_YAML += "  delete_source: true\n"
REPEATED_JSON = json.dumps(example())[:-1] + ', "decommission": {"delete_source": true}}'

#: (id, make the file in tmp_path, what the error must say)
HOSTILE: list[tuple[str, Callable[[Path], Path], str]] = [
    # what the file is
    ("fifo", fifo, "it is a FIFO"),
    ("dev-zero", lambda _: Path("/dev/zero"), "it is a character device"),
    ("directory", lambda tmp_path: tmp_path, "it is a directory"),
    ("50 MB", sparse(50 << 20), f"a plan may be at most {MAX_PLAN_BYTES:,}"),
    ("just over the cap", sparse(MAX_PLAN_BYTES + 1), f"a plan may be at most {MAX_PLAN_BYTES:,}"),
    ("missing", lambda tmp_path: tmp_path / "absent.yaml", "cannot read the plan file: No such file"),
    # what the text is
    ("binary", raw(BINARY), "not UTF-8 text: byte 0x89 at line 1 (offset 0)"),
    ("stray byte", raw(b"name: x\n" + b"\x80" * 64), "not UTF-8 text: byte 0x80 at line 2"),
    ("utf-16", raw(EXAMPLE_TEXT.encode("utf-16")), "UTF-16"),
    ("latin-1", raw(LATIN1), "not UTF-8 text: byte 0xe9"),
    ("nul bytes", raw(b"\x00" * 100), "not valid YAML: unacceptable character"),
    ("5000-digit integer", raw("name: " + "9" * 5000), "not valid YAML: Exceeds the limit"),
    ("two documents", raw(EXAMPLE_TEXT + "---\n" + EXAMPLE_TEXT), "not valid YAML: expected a single document"),
    ("empty", raw(""), "must be a mapping of fields, not NoneType"),
    # how big and deep it is
    ("deep yaml", raw(DEEP_YAML), f"nested deeper than {MAX_DEPTH} levels"),
    ("deep json", raw(DEEP_JSON, "plan.json"), f"nested deeper than {MAX_DEPTH} levels"),
    ("deep json that parses", raw(json.dumps({**example(), "x": nested(40)}), "plan.json"), "x[0][0]"),
    ("alias bomb", raw(ALIAS_BOMB), f"more than {MAX_NODES:,} values"),
    ("alias into itself", raw("name: &a [x, *a]\n"), "name[1]: an alias refers to a node that contains it"),
    ("too many values", raw("name: [" + ", ".join(["1"] * (MAX_NODES + 5)) + "]\n"), f"more than {MAX_NODES:,}"),
    # repeated keys: the last one would silently win
    ("repeated yaml key", raw(REPEATED_YAML), "decommission.delete_source: key repeated at line"),
    ("repeated json key", raw(REPEATED_JSON, "plan.json"), "decommission: key repeated"),
    ("repeated key in a list item", raw(replace_line("region: us-east-1", "region: us-east-1\n    region: x")),
     "environments[0].region: key repeated"),
    ("repeated top-level key", raw(EXAMPLE_TEXT + "egress_budget_usd: 1e9\n"), "egress_budget_usd: key repeated"),
    # numbers that are not numbers
    ("infinite price", yaml_file(edited(compute(price_per_gpu_hour=float("inf")))),
     "environments[1].compute.price_per_gpu_hour: inf is not a finite number"),
    ("1e309 price", raw(replace_line("price_per_gpu_hour: 2.95", "price_per_gpu_hour: 1e309")),
     "environments[1].compute.price_per_gpu_hour: Input should be a finite number"),
    ("nan budget", raw(replace_line("egress_budget_usd: 2500", "egress_budget_usd: .nan")),
     "egress_budget_usd: nan is not a finite number"),
    ("infinite bandwidth", raw(replace_line("bandwidth_gbps: 25", "bandwidth_gbps: .inf")),
     "environments[0].bandwidth_gbps: inf is not a finite number"),
    ("json Infinity", raw(json.dumps(edited(env(0, egress_per_gb_usd=float("inf")))), "plan.json"),
     "environments[0].egress_per_gb_usd: inf is not a finite number"),
    ("json 1e400", raw(json.dumps(example()).replace('"egress_budget_usd": 2500', '"egress_budget_usd": 1e400'),
                       "plan.json"), "egress_budget_usd: inf is not a finite number"),
    ("json NaN in an embedded model", raw(json.dumps(edited(endpoint(source_labels=float("nan")))), "plan.json"),
     "workloads.endpoints[0].source_labels: nan is not a finite number"),
    ("infinite latency threshold", raw(replace_line("latency_increase_pct: 15", "latency_increase_pct: 1e309")),
     "thresholds.latency_increase_pct: Input should be a finite number"),
    ("huge integer", raw(replace_line("gpu_count: 8, price_per_gpu_hour: 2.95", "gpu_count: 1" + "0" * 30)),
     "environments[1].compute.gpu_count: 1000000000000000000000000000000 is out of range"),
    ("finite but absurd price", yaml_file(edited(compute(price_per_gpu_hour=1e300))),
     "environments[1].compute.price_per_gpu_hour: Input should be less than or equal to 10000"),
    ("bandwidth that underflows", yaml_file(edited(env(0, bandwidth_gbps=1e-300))),
     "environments[0].bandwidth_gbps: Input should be greater than or equal to 0.001"),
    ("budget above a billion", yaml_file(edited(top(egress_budget_usd=1e12))), "egress_budget_usd"),
    # thresholds that could never fail
    ("latency threshold that never fails", yaml_file(edited(thresholds(latency_increase_pct=5000))),
     "thresholds.latency_increase_pct: Input should be less than or equal to 1000"),
    ("error rate above 100 pp", yaml_file(edited(thresholds(error_rate_increase_pp=150))),
     "thresholds.error_rate_increase_pp"),
    ("min samples nobody reaches", yaml_file(edited(thresholds(min_samples=10**12))),
     "thresholds.min_samples"),
    # durations
    ("99999999999d stage", yaml_file(edited(lambda d: d["cutover"]["stages"][0].update(duration="99999999999d"))),
     "cutover.stages[0].duration: '99999999999d' is out of range"),
    ("1e20 seconds soak", yaml_file(edited(top(soak_period=1e20))), "soak_period: 1e+20 is out of range"),
    ("infinite soak", raw(replace_line("soak_period: 7d", "soak_period: .inf")), "soak_period: inf is not a finite"),
    ("ISO duration too long", yaml_file(edited(top(soak_period="P99999999999D"))), "soak_period"),
    ("400 days, ISO 8601", yaml_file(edited(top(soak_period="P400D"))), "soak_period: must be at most 365 days"),
    ("negative deadline", yaml_file(edited(cutover(inconclusive_deadline=-60))),
     "cutover.inconclusive_deadline: must not be negative"),
    ("negative stage", yaml_file(edited(lambda d: d["cutover"]["stages"][1].update(duration=-1))),
     "cutover.stages[1].duration: must not be negative"),
    ("zero monitor interval", yaml_file(edited(cutover(monitor_interval="0s"))),
     "cutover.monitor_interval: must be at least 1 s"),
    ("millisecond monitor interval", yaml_file(edited(cutover(monitor_interval="1ms"))), "cutover.monitor_interval"),
    # storage URLs
    ("s3 url with ..", yaml_file(edited(storage(url="s3://bucket/../x"))),
     "environments[0].storage.url: url 's3://bucket/../x' has a '.', '..' or empty"),
    ("s3 url with .", yaml_file(edited(storage(url="s3://bucket/a/./b"))), "environments[0].storage.url"),
    ("s3 url with //", yaml_file(edited(storage(url="s3://bucket/a//b"))), "environments[0].storage.url"),
    ("file url with ..", yaml_file(edited(storage(url="file:///data/../etc"))), "environments[0].storage.url"),
    ("url with a query", yaml_file(edited(storage(url="s3://bucket/x?versionId=1"))), "must not contain '?'"),
    ("upper-case bucket", yaml_file(edited(storage(url="s3://My_Bucket/x"))), "is not a valid s3 bucket name"),
    ("bucket as an IP", yaml_file(edited(storage(url="s3://192.168.5.4/x"))), "is not a valid s3 bucket name"),
    ("reserved s3 prefix", yaml_file(edited(storage(url="s3://xn--bucket/x"))), "reserved 'xn--'"),
    ("google in a gcs bucket", yaml_file(edited(storage(url="gs://my-google-data/x"))), "reserved 'google'"),
    ("storage endpoint with ..", yaml_file(edited(storage(endpoint="http://minio:9000/a/../b"))),
     "environments[0].storage.endpoint: 'http://minio:9000/a/../b' has a '.', '..' or empty path segment"),
    ("storage endpoint bad port", yaml_file(edited(storage(endpoint="http://minio:99999"))),
     "environments[0].storage.endpoint: 'http://minio:99999' is not a URL"),
    # endpoint, router and metrics URLs
    ("endpoint url with ..", yaml_file(edited(endpoint(target_url="http://chat:8000/v1/../admin"))),
     "workloads.endpoints[0].target_url"),
    ("endpoint url with %2e%2e", yaml_file(edited(endpoint(target_url="http://chat:8000/%2e%2e/admin"))),
     "workloads.endpoints[0].target_url"),
    ("endpoint url with //", yaml_file(edited(endpoint(source_url="http://chat:8000//v1"))),
     "workloads.endpoints[0].source_url"),
    ("endpoint url with credentials", yaml_file(edited(endpoint(source_url="http://admin:secret@chat:8000"))),
     "workloads.endpoints[0].source_url: 'http://admin:secret@chat:8000' must not carry credentials"),
    ("router url with a query", yaml_file(edited(router(admin_url="http://r:9000/?a=1"))),
     "workloads.router.admin_url: 'http://r:9000/?a=1' must not have a query"),
    ("router url with ./", yaml_file(edited(router(admin_url="http://r:9000/./x"))),
     "workloads.router.admin_url"),
    ("prometheus url with ..", yaml_file(edited(lambda d: d["workloads"].update(
        metrics={"kind": "prometheus", "url": "http://prom:9090/../api"}))), "workloads.metrics.url"),
    # workload paths
    ("path with ..", yaml_file(edited(dataset_path("datasets/../../other"))), "workloads.datasets[0].path"),
    ("path with .", yaml_file(edited(dataset_path("a/./b"))), "workloads.datasets[0].path: 'a/./b' has a '.' or empty"),
    ("path with //", yaml_file(edited(dataset_path("a//b"))), "workloads.datasets[0].path: 'a//b' has a '.' or empty"),
    ("absolute path", yaml_file(edited(dataset_path("/etc/passwd"))), "workloads.datasets[0].path"),
    ("empty path", yaml_file(edited(dataset_path(""))), "workloads.datasets[0].path: must name a prefix"),
    ("path with a newline", yaml_file(edited(dataset_path("a\nb"))), "control characters"),
    # what gets printed
    ("terminal escape in a key", yaml_file(edited(lambda d: d["decommission"].update({"\x1b[2Jx": 1}))),
     "decommission['\\x1b[2Jx']: Extra inputs are not permitted"),
    ("a thousand problems", yaml_file(edited(lambda d: d.update({f"extra{i}": i for i in range(1000)}))),
     "... and 950 more problems"),
]  # fmt: skip


@pytest.fixture
def unblock_fifo(tmp_path):
    """If reading ever blocked on a FIFO again, open its write end so the read sees EOF: the test then
    fails on the message instead of hanging the suite."""
    done = threading.Event()

    def rescue() -> None:
        if not done.wait(30) and (tmp_path / "plan.yaml").is_fifo():
            os.close(os.open(tmp_path / "plan.yaml", os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    yield
    done.set()
    thread.join()


@pytest.mark.parametrize("command", ["plan validate", "start"])
@pytest.mark.parametrize(("make", "message"), [(m, e) for _, m, e in HOSTILE], ids=[i for i, _, _ in HOSTILE])
def test_hostile_plan_is_refused_cleanly(tmp_path, capsys, monkeypatch, unblock_fifo, command, make, message):
    # `start` must refuse before it connects: with no server at this address a connection attempt
    # would exit 1, not 2.
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:9")
    path = make(tmp_path)
    code = main([*command.split(), str(path)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert message in err, err
    assert err.startswith(f"{path}: invalid plan\n"), "the file is named first"
    assert "Traceback" not in err and "\x1b" not in err and out == ""
    assert len(err) < 8000, "output is bounded"


def test_the_last_repeated_key_does_not_win(tmp_path):
    """The finding behind the repeated-key rule: `delete_source: false` then `true` was read as true."""
    path = raw(REPEATED_YAML)(tmp_path)
    lines = REPEATED_YAML.splitlines()
    first, repeated = (index + 1 for index, line in enumerate(lines) if line.strip().startswith("delete_source:"))
    expected = rf"decommission\.delete_source: key repeated at line {repeated} \(first at line {first}\)"
    with pytest.raises(ValueError, match=expected):
        load_plan(path)


ANCHORED = replace_line("compute: {gpu_type: A100", "compute: &gpus {gpu_type: A100").replace(
    "compute: {gpu_type: H100-80GB, gpu_count: 8,", "compute: {<<: *gpus, gpu_type: H100-80GB,"
)
VALID: list[tuple[str, Callable[[Path], Path]]] = [
    ("example", lambda _: EXAMPLE),
    ("example as json", raw(json.dumps(example()), "plan.json")),
    ("utf-8 with a byte-order mark", raw(b"\xef\xbb\xbf" + EXAMPLE_TEXT.encode())),
    ("anchors and a merge key", raw(ANCHORED)),
    ("trailing slashes", yaml_file(edited(lambda d: (storage(url="s3://acme-ml-prod/llama-ft/")(d),
                                                     dataset_path("datasets/corpus-v3/")(d))))),
    ("365 days and a dotted gcs bucket", yaml_file(edited(lambda d: (d.update(soak_period="365d"),
                                                                     storage(url="gs://data.acme.example/ml")(d))))),
]  # fmt: skip


@pytest.mark.parametrize("make", [m for _, m in VALID], ids=[i for i, _ in VALID])
def test_plans_at_the_edges_stay_valid(tmp_path, capsys, make):
    path = make(tmp_path)
    assert main(["plan", "validate", str(path)]) == 0, capsys.readouterr().err
    plan = load_plan(path)
    assert plan.environments[1].compute.gpu_type == "H100-80GB" and plan.environments[1].compute.gpu_count == 8
    assert not plan.environments[0].storage.url.endswith("/")
    assert plan.workloads.datasets[0].path == "datasets/corpus-v3"


def test_the_demo_and_test_plans_stay_valid():
    ports = {"source": 8001, "target": 8002, "router": 8003}
    plan = parse_plan(demo_plan(ports, "file:///tmp/skyshift/demo.key"), source="demo plan")
    assert plan.decommission.delete_source and plan.workloads.router is not None
    assert plan.workloads.jobs and plan.workloads.checkpoints[1].encryption is not None
    plan = parse_plan(plan_data("t1", "file:///tmp/skyshift/src", "s3://dst-0123456789/ml"))
    assert plan.cutover.monitor_interval.total_seconds() == 1
