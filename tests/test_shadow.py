"""Shadow inference: the same requests to the source twice and the target once, judged against the noise floor.

Real pieces only: torch endpoints over HTTP on loopback threads, request samples in moto's S3, the
`run_shadow` activity under the SDK's ActivityEnvironment (heartbeats and cancellation as a worker
delivers them), and the router mirroring live traffic from the load generator.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities.shadow import ShadowSpec
from activities.shadow.compare import STRUCTURAL, compare, levenshtein
from activities.shadow.judge import (
    FieldSamples,
    ShadowThresholds,
    judge_fields,
    measure_outputs,
    shadow_verdict,
)
from activities.shadow.mirror import MirrorClient, MirrorSettings
from activities.shadow.runner import (
    MirrorInput,
    RunShadowInput,
    ShadowResult,
    comparison_table,
    run_shadow,
    set_mirror,
)
from activities.stores import StoreSpec, open_store
from skyshift import demo_model
from skyshift.spec.endpoints import EndpointPair
from skyshift.spec.traffic import HttpRouterSpec, Route53RouterSpec
from starters.load import LoadGenerator
from tests.conftest import free_port
from workers import endpoint
from workers.router import Mirror, Router

JSON = {"kind": "json", "ignore": ["served_by"]}


class Deployments:
    """Endpoints on loopback threads, each with its own noise seed, all closed at the end of the test."""

    def __init__(self) -> None:
        self.servers: list[ThreadingHTTPServer] = []

    def __call__(self, env: str, model=None, service_ms: float = 3.0, **faults: float) -> str:
        port = free_port()
        server = endpoint.serve(env, "127.0.0.1", port, model or endpoint.tiny_model(), service_ms,
                                endpoint.Faults(**faults), seed=len(self.servers) + 1)  # fmt: skip
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{port}"

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def deploy() -> Iterator[Deployments]:
    deployments = Deployments()
    yield deployments
    deployments.close()


@pytest.fixture(scope="module")
def source_bucket(s3_endpoint: str) -> str:
    from activities.stores.s3 import S3Store

    name = f"shadow-{uuid.uuid4().hex[:10]}"
    S3Store(StoreSpec(url=f"s3://{name}")).ensure_bucket()
    return name


@pytest.fixture
def sample_store(source_bucket: str) -> Callable[[int], StoreSpec]:
    """The source environment's storage holding `count` seeded request bodies at shadow/requests.jsonl."""

    def make(count: int) -> StoreSpec:
        store = StoreSpec(url=f"s3://{source_bucket}/ml")
        open_store(store).put_bytes("shadow/requests.jsonl", demo_model.request_sample(count, seed=7))
        return store

    return make


def shadow(source: str, target: str, router: str | None = None, store: StoreSpec | None = None,
           **spec) -> ShadowResult:  # fmt: skip
    spec = {"requests": "shadow/requests.jsonl", "comparator": JSON, "min_requests": 50, **spec}
    pair = EndpointPair(name="chat", source_url=source, target_url=target, shadow=ShadowSpec(**spec))
    request = RunShadowInput(endpoint=pair, store=store, router=HttpRouterSpec(admin_url=router) if router else None)
    return ActivityEnvironment().run(run_shadow, request)


def outcomes(result: ShadowResult) -> dict[str, str]:
    return {check.metric: check.outcome for check in result.verdict.checks}


def counted(url: str) -> dict[str, float]:
    """An endpoint's user requests, and skyshift's comparison traffic by origin (counted apart)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {"user": 0.0, "sample": 0.0, "mirror": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "skyshift_requests_total":
                found["user"] += sample.value
            elif sample.name == "skyshift_shadow_requests_total":
                found[sample.labels["origin"]] += sample.value
    return found


# -- verdicts ----------------------------------------------------------------------------------


def test_identical_models_pass_and_the_result_stays_small(deploy, sample_store):
    result = shadow(deploy("source"), deploy("target"), store=sample_store(60))
    assert result.verdict.outcome == "pass", result.verdict.summary
    assert result.compared == result.from_sample == 60
    assert {f.field for f in result.fields} == {"labels[0]", *(f"outputs[0][{i}]" for i in range(4))}
    assert all(f.target_max == 0 and not f.differs for f in result.fields)
    payload = pydantic_data_converter.payload_converter.to_payloads([result])[0]
    assert len(payload.data) < 16_000, "no bodies in workflow history"
    decoded = pydantic_data_converter.payload_converter.from_payloads([payload], [ShadowResult])[0]
    assert decoded == result


def test_nondeterministic_but_equivalent_outputs_pass(deploy, sample_store):
    """Noise at the source's own level: the target differs on most requests, and so does the source."""
    source, target = deploy("source", output_noise=0.01), deploy("target", output_noise=0.01)
    result = shadow(source, target, store=sample_store(100), concurrency=1)
    assert result.verdict.outcome == "pass", result.verdict.summary
    numeric = [f for f in result.fields if f.field.startswith("outputs")]
    assert all(f.floor_max > 0.01 and f.target_max > 0.01 for f in numeric), "the noise was real on both sides"
    assert all(f.exceeded > 0 and f.reverse > 0 for f in numeric), "chance pushed both ways"


@pytest.mark.parametrize(("perturb", "noise"), [(0.02, 0.0), (0.05, 0.002)], ids=["quiet-source", "noisy-source"])
def test_outputs_drifting_above_the_floor_fail_while_latency_is_equal(deploy, sample_store, perturb, noise):
    source = deploy("source", output_noise=noise)
    target = deploy("target", endpoint.drift(endpoint.tiny_model(), perturb), output_noise=noise)
    result = shadow(source, target, store=sample_store(80))
    assert result.verdict.outcome == "fail"
    checks = outcomes(result)
    failing = sorted(metric for metric, outcome in checks.items() if outcome == "fail")
    assert failing and all(metric.startswith("chat.output.") for metric in failing), result.verdict.summary
    assert any(metric.startswith("chat.output.outputs[0][") for metric in failing)
    assert checks["chat.latency"] == "pass" and checks["chat.errors"] == "pass"
    worst = result.fields[0]
    assert worst.differs and worst.target_max > 1.2 * (worst.floor_max or 0) + 0.0003
    assert worst.field in result.verdict.summary and f"{worst.target_max:.3g}" in result.verdict.summary
    assert result.examples and result.examples[0].startswith("line-")


def test_a_different_dtype_is_caught(deploy, sample_store):
    """bfloat16 rounding moves every logit by ~1e-3. (On this CPU bfloat16 is also ~12x slower per
    inference, so latency is not asserted here.)"""
    target = deploy("target", endpoint.drift(endpoint.tiny_model(), dtype="bfloat16"))
    result = shadow(deploy("source"), target, store=sample_store(60))
    differing = [f for f in result.fields if f.differs]
    assert result.verdict.outcome == "fail" and {f.field for f in differing} >= {"outputs[0][0]", "outputs[0][1]"}
    assert all(f.quiet and 0.0003 < f.target_max < 0.01 for f in differing)


def test_logits_comparator_names_the_positions_that_moved(deploy, sample_store):
    target = deploy("target", endpoint.drift(endpoint.tiny_model(), perturb=0.1))
    result = shadow(deploy("source"), target, store=sample_store(60), comparator={"kind": "logits", "top_k": 2})
    assert result.verdict.outcome == "fail"
    differs = {f.field for f in result.fields if f.differs}
    assert {"max_abs_diff", "kl_divergence"} <= differs
    assert result.positions and result.positions[0].position.startswith("[0][")
    assert result.positions[0].floor_max == 0 and result.positions[0].target_max > 0.0003
    table = comparison_table(result)
    assert table[0][0] == "field" and any(row[0] == "max_abs_diff" and row[-1] == "DIFFERS" for row in table)


def test_target_failing_two_percent_of_requests_fails_on_errors(deploy, sample_store):
    result = shadow(deploy("source"), deploy("target", error_rate=0.02), store=sample_store(200))
    checks = outcomes(result)
    assert result.verdict.outcome == "fail" and checks["chat.errors"] == "fail", checks
    assert result.arms["target"].errors == 4 and result.arms["source"].errors == 0
    assert all(o == "pass" for m, o in checks.items() if m.startswith("chat.output.")), "its answers were right"
    assert "HTTP 500" in result.verdict.summary


def test_fewer_requests_than_the_minimum_is_inconclusive_never_pass(deploy, sample_store):
    result = shadow(deploy("source"), deploy("target"), store=sample_store(20), min_requests=50)
    assert result.verdict.outcome == "inconclusive"
    assert "20 of 20 requests" in result.verdict.summary and "needs >= 50" in result.verdict.summary


def test_a_source_noisier_than_the_plan_allows_is_inconclusive(deploy, sample_store):
    source, target = deploy("source", output_noise=0.01), deploy("target", output_noise=0.01)
    result = shadow(source, target, store=sample_store(60), max_source_disagreement=0.001)
    checks = outcomes(result)
    assert result.verdict.outcome == "inconclusive" and checks["chat.noise_floor"] == "inconclusive", checks
    assert all(o == "inconclusive" for m, o in checks.items() if m.startswith("chat.output.outputs"))
    assert "cannot be told from noise" in result.verdict.summary


def test_bad_samples_are_named_by_file_and_line(deploy, s3_bucket):
    store = StoreSpec(url=f"s3://{s3_bucket}/ml")
    with pytest.raises(ApplicationError, match=r"shadow/requests.jsonl does not exist") as missing:
        shadow(deploy("source"), deploy("target"), store=store)
    assert missing.value.non_retryable
    open_store(store).put_bytes("shadow/requests.jsonl", b'{"inputs": [[0]]}\n\n{"inputs": [[0]]\n')
    with pytest.raises(ApplicationError, match=r"line 3 is not JSON"):
        shadow(deploy("source"), deploy("target"), store=store)


def test_cancel_stops_sending_the_sample(deploy, sample_store):
    target = deploy("target", latency_factor=20)  # 60 ms an answer: the sample would take seconds
    pair = EndpointPair(name="chat", source_url=deploy("source"), target_url=target,
                        shadow=ShadowSpec(requests="shadow/requests.jsonl", concurrency=2))  # fmt: skip
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: env.cancel()
    with pytest.raises(CancelledError):
        env.run(run_shadow, RunShadowInput(endpoint=pair, store=sample_store(200)))
    assert counted(target)["sample"] <= 4, "at most the requests in flight when the cancel came"


def test_the_floor_judgement_holds_its_false_alarm_rate():
    """200 seeded runs of a 5-field endpoint whose target is as noisy as its source: at the plan's 98%,
    about 2% of runs may fail by chance (Bonferroni over the fields); 3% leaves room for sampling."""
    rng = np.random.default_rng(11)
    spec = ShadowSpec(requests="r.jsonl")
    failed = 0
    for _ in range(200):
        fields = {}
        for name in "abcde":
            truth = rng.normal(size=100)
            first, again, target = (truth + 0.01 * rng.normal(size=100) for _ in range(3))
            fields[name] = FieldSamples(target=list(abs(target - first)), floor=list(abs(again - first)),
                                        ids=["r"] * 100)  # fmt: skip
        failed += any(f.differs for f in judge_fields(fields, spec, confidence=0.98))
    assert failed / 200 <= 0.03


def test_a_response_of_many_fields_makes_a_short_verdict():
    spec = ShadowSpec(requests="r.jsonl")
    fields = {f"logits[{i}]": FieldSamples(target=[0.01 * (i < 12)] * 60, floor=[0.0] * 60, ids=["line-1"] * 60)
              for i in range(40)}  # fmt: skip
    judged = judge_fields(fields, spec, confidence=0.98)
    measured = measure_outputs("chat", judged, spec)
    result = shadow_verdict("chat", measured, spec, ShadowThresholds())
    assert len(result.checks) == 11 and result.outcome == "fail"
    assert result.checks[-1].metric == "chat.output.(+30 fields)" and "2 more fields beyond the floor" in (
        result.checks[-1].detail
    )


# -- comparators -------------------------------------------------------------------------------


def test_json_comparator_reports_every_leaf_by_path():
    spec = ShadowSpec(requests="r.jsonl", comparator={"kind": "json", "ignore": ["meta", "scores[*].id"]})
    source = {"scores": [{"id": 1, "p": 0.5}, {"id": 2, "p": 0.25}], "label": "cat", "meta": {"host": "a"}}
    target = {"scores": [{"id": 9, "p": 0.5005}, {"id": 2}], "label": "dog", "meta": {"host": "b"}, "extra": 1}
    found = compare(spec.comparator, source, target)
    assert found.differences["scores[0].p"] == pytest.approx(0.0005)
    assert found.relative["scores[0].p"] == pytest.approx(0.0005 / 0.5005)
    assert found.differences["label"] == 1.0
    assert found.differences["scores[1].p"] == STRUCTURAL and found.differences["extra"] == STRUCTURAL
    assert not any(k.startswith("meta") or k.endswith(".id") for k in found.differences)


def test_logits_comparator_measures_kl_and_top_k():
    spec = ShadowSpec(requests="r.jsonl", comparator="logits")
    same = compare(spec.comparator, {"outputs": [[2.0, 1.0, 0.0]]}, {"outputs": [[2.0, 1.0, 0.0]]})
    assert same.differences == {"max_abs_diff": 0.0, "kl_divergence": 0.0, "top1_disagreement": 0.0}
    swapped = compare(spec.comparator, {"outputs": [[2.0, 1.0, 0.0]]}, {"outputs": [[1.0, 2.0, 0.0]]})
    assert swapped.differences["top1_disagreement"] == 1.0 and swapped.differences["max_abs_diff"] == 1.0
    assert swapped.differences["kl_divergence"] > 0.1
    reshaped = compare(spec.comparator, {"outputs": [[2.0, 1.0, 0.0]]}, {"outputs": [2.0, 1.0]})
    assert set(reshaped.differences.values()) == {STRUCTURAL}


def test_text_comparator_uses_normalized_edit_distance():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("é", "e") == 1
    spec = ShadowSpec(requests="r.jsonl", comparator={"kind": "text", "path": "choices[0].text"})
    found = compare(spec.comparator, {"choices": [{"text": "kitten"}]}, {"choices": [{"text": "sitting"}]})
    assert found.differences == {"exact_mismatch": 1.0, "edit_distance": pytest.approx(3 / 7)}


def test_shadow_spec_is_validated_up_front():
    assert ShadowSpec(requests="a.jsonl", comparator="text").comparator.kind == "text"
    with pytest.raises(ValueError, match=r"requests .* or mirror_percent"):
        ShadowSpec()
    with pytest.raises(ValueError, match="inside the source storage"):
        ShadowSpec(requests="../secrets.jsonl")
    with pytest.raises(ValueError, match="comparator"):
        ShadowSpec(requests="a.jsonl", comparator="bytes")
    pair = EndpointPair.model_validate(
        {"name": "chat", "source_url": "http://a", "target_url": "http://b",
         "shadow": {"mirror_percent": 5, "comparator": {"kind": "logits", "top_k": 5}}}
    )  # fmt: skip
    assert pair.shadow.comparator.top_k == 5
    converter = pydantic_data_converter.payload_converter
    request = RunShadowInput(endpoint=pair, router=HttpRouterSpec(admin_url="http://r"))
    assert converter.from_payloads(converter.to_payloads([request]), [RunShadowInput]) == [request]


# -- mirroring live traffic --------------------------------------------------------------------


class BlackHole:
    """A target that reads each request and answers nothing until released, then hangs up."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    def _hold(self, connection: socket.socket) -> None:
        connection.recv(65536)
        self.release.wait()
        connection.close()

    def close(self) -> None:
        self.release.set()
        self.sock.close()


def router_in_thread(source: str, target: str, mirror: Callable[[Router], Mirror] | None = None):
    router = Router({"source": source, "target": target}, None)
    if mirror:
        router.mirror = mirror(router)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), router.handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return router, server, f"http://127.0.0.1:{server.server_address[1]}"


def test_a_hanging_mirror_target_never_fails_or_holds_up_clients(deploy):
    hole = BlackHole()
    router, server, url = router_in_thread(
        deploy("source"), hole.url, lambda r: Mirror(r.forward, workers=2, backlog=3, timeout=30)
    )
    try:
        MirrorClient(url).configure(MirrorSettings(percent=50))
        load = LoadGenerator(url, rate=400, threads=4, max_requests=100).start()
        counts = load.wait()
        during = MirrorClient(url).status().counters
        answers = load.answered()
        # Every client was answered while every mirror copy was still waiting on the target.
        assert counts.get("ok") == 100 and load.failures == 0, counts
        assert answers == {"sent": 100, "served_by_source": 100}, "one answer each, never a mirror's"
        assert during.eligible == 100 and during.mirrored + during.dropped == 50 and during.completed == 0
        assert during.mirrored == 5 and during.dropped == 45, "copies beyond the pool's bound are dropped"
        hole.release.set()
        router.mirror.pool.shutdown(wait=True)
        after = MirrorClient(url).status().counters
        assert after.completed == after.target_failed == 5 and after.source_failed == 0
    finally:
        server.shutdown()
        server.server_close()
        hole.close()


def test_mirrored_live_traffic_is_compared_and_never_reaches_clients(deploy):
    source, target = deploy("source"), deploy("target")
    _, server, url = router_in_thread(source, target)
    bodies = demo_model.request_sample(40, seed=3).splitlines()
    load = LoadGenerator(url, rate=200, threads=4, max_seconds=60, bodies=bodies).start()
    try:
        result = shadow(source, target, router=url, requests=None, mirror_percent=50, min_requests=40)
        assert MirrorClient(url).status().settings.percent == 0, "mirroring ends with the shadow run"
    finally:
        counts = load.stop()
        server.shutdown()
        server.server_close()
    assert result.verdict.outcome == "pass", result.verdict.summary
    assert result.from_mirror >= 40 and result.from_sample == 0 and result.mirror.mirrored >= 40
    answers = load.answered()
    assert load.failures == 0 and counts["ok"] == answers["sent"] == answers["served_by_source"], (counts, answers)
    assert "shadow_marked" not in answers and "served_by_target" not in answers
    on_target, on_source = counted(target), counted(source)
    assert on_target["user"] == 0, "the target served no user: its metrics stay clean for the cutover"
    assert on_target["mirror"] >= 40 and on_source["mirror"] >= 40 and on_source["user"] == answers["sent"]


def test_router_rejects_an_invalid_mirror_share(deploy):
    _, server, url = router_in_thread(deploy("source"), deploy("target"))
    try:
        request = urllib.request.Request(f"{url}/-/mirror", data=json.dumps({"percent": 150}).encode(), method="PUT")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=5)
        assert error.value.code == 400 and b"percent" in error.value.read()
    finally:
        server.shutdown()
        server.server_close()


def test_set_mirror_is_an_idempotent_undo_and_needs_the_http_router(deploy):
    _, server, url = router_in_thread(deploy("source"), deploy("target"))
    try:
        for percent in (30, 0, 0):
            ActivityEnvironment().run(set_mirror, MirrorInput(router=HttpRouterSpec(admin_url=url), percent=percent))
            assert MirrorClient(url).status().settings.percent == percent
    finally:
        server.shutdown()
        server.server_close()
    route53 = Route53RouterSpec(kind="route53", hosted_zone_id="Z1", record_name="api.example.com",
                                source_value="a", target_value="b")  # fmt: skip
    with pytest.raises(ApplicationError, match=r"needs skyshift's http router .* not route53"):
        ActivityEnvironment().run(set_mirror, MirrorInput(router=route53, percent=5))
