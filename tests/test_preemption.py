"""Preemption watchers against skyshift's fake metadata servers, over real HTTP on 127.0.0.1.

One suite for every provider (like the stores' conformance suite): a notice scheduled while the
watcher runs is returned on its first look after the notice appears (GCP: the pending long-poll
returns on the change); the provider's tokens and headers are required; injected timeouts, errors
and slow answers are silence, never a notice, and cause no recovery.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from temporalio.client import Client
from temporalio.worker import Worker

from activities.preemption import WatcherConfig, open_watcher
from activities.preemption.recovery import RecoveryEvidence, decide_recovery
from activities.preemption.watch import (
    WatchPreemptionInput,
    acknowledge_preemption,
    watch_preemption,
)
from starters import fake_metadata
from starters.fake_metadata import FakeMetadataServer, KubeApiNode
from tests.preemption_workflows import WatchBesideRunWorkflow, WatchOnceWorkflow
from workflows.plan import PlanError, parse_plan

PROVIDERS = list(fake_metadata.PROVIDERS)
#: The path each provider's notice is read from (AWS also reads the rebalance path in the same look).
NOTICE_PATH = {
    "aws": "/latest/meta-data/spot/instance-action",
    "gcp": "/computeMetadata/v1/instance/preempted",
    "azure": "/metadata/scheduledevents",
    "k8s-label": "/api/v1/nodes/gpu-node-1",
}


@pytest.fixture(params=PROVIDERS)
def provider(request) -> str:
    return request.param


@pytest.fixture
def fake(provider: str) -> Iterator[FakeMetadataServer]:
    server = fake_metadata.start(provider)
    yield server
    server.shutdown()
    server.server_close()


def config_for(server: FakeMetadataServer, tmp_path: Path, **overrides) -> WatcherConfig:
    extra: dict = {}
    if isinstance(server, KubeApiNode):
        token = tmp_path / "token"
        token.write_text(server.token)
        extra = {"node_name": server.node, "token_file": str(token)}
    return WatcherConfig(provider=server.provider, address=server.url, **extra, **overrides)


def admin(server: FakeMetadataServer, method: str, path: str, body: dict | None = None) -> dict:
    response = requests.request(method, server.url + path, json=body or {}, timeout=5)
    response.raise_for_status()
    return response.json()


def looks_at_notice_path(server: FakeMetadataServer, provider: str) -> list:
    return [s for s in server.log if s.path == NOTICE_PATH[provider]]


def watch_worker(client: Client, queue: str) -> Worker:
    return Worker(
        client,
        task_queue=queue,
        workflows=[WatchBesideRunWorkflow, WatchOnceWorkflow],
        activities=[watch_preemption, acknowledge_preemption],
    )


async def run_watch(client: Client, request: WatchPreemptionInput, *, via_signal: bool = False):
    queue = f"preempt-{uuid.uuid4().hex[:8]}"
    async with watch_worker(client, queue):
        if via_signal:
            return await client.execute_workflow(
                WatchBesideRunWorkflow.run, request, id=f"watch-{uuid.uuid4().hex[:8]}", task_queue=queue
            )
        return await client.execute_workflow(
            WatchOnceWorkflow.run, request, id=f"watch-{uuid.uuid4().hex[:8]}", task_queue=queue
        )


async def until(server: FakeMetadataServer, predicate, watching: asyncio.Task) -> None:
    """Wait for an event on the fake server; a watch that failed first fails the test with its own error."""
    waiting = asyncio.ensure_future(asyncio.to_thread(server.wait_for, predicate))
    await asyncio.wait({waiting, watching}, return_when=asyncio.FIRST_COMPLETED)
    if watching.done() and not waiting.done():
        watching.result()
    assert await waiting, "the event never came"


def test_no_notice_reads_as_none_and_the_provider_headers_are_required(fake, provider, tmp_path) -> None:
    watcher = open_watcher(config_for(fake, tmp_path))
    observation = watcher.observe()
    assert observation.reachable and observation.notice is None and not observation.gone
    # The same request without the provider's token/header is refused the way the provider refuses it.
    refused = {"aws": 401, "gcp": 403, "azure": 400, "k8s-label": 401}[provider]
    query = "?api-version=2020-07-01" if provider == "azure" else ""
    assert requests.get(fake.url + NOTICE_PATH[provider] + query, timeout=5).status_code == refused


def test_aws_tokens_need_a_ttl_and_a_401_gets_one_fresh_token(tmp_path) -> None:
    server = fake_metadata.start("aws")
    try:
        assert requests.put(server.url + "/latest/api/token", timeout=5).status_code == 400, "no TTL header"
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": "21600", "X-Forwarded-For": "10.0.0.1"}
        assert requests.put(server.url + "/latest/api/token", headers=headers, timeout=5).status_code == 403
        watcher = open_watcher(config_for(server, tmp_path))
        assert watcher.observe().reachable
        server.tokens.clear()  # the metadata service forgot every token (as after its restart)
        assert watcher.observe().reachable, "a 401 gets one fresh token, not a failure"
        assert [(s.method, s.status) for s in server.log].count(("PUT", 200)) == 2
    finally:
        server.shutdown()
        server.server_close()


async def test_a_notice_mid_run_is_returned_on_the_first_look_after_it_appears(client, fake, provider, tmp_path):
    # GCP long-polls with a timeout far beyond the test: only the change itself can end the look.
    interval = 3600 if provider == "gcp" else 0.2
    request = WatchPreemptionInput(environment="spot", watcher=config_for(fake, tmp_path, poll_interval_s=interval))
    watching = asyncio.create_task(run_watch(client, request))
    # Mid-run: the watcher has already had an answer (and, for GCP, has sent its long-poll) before the notice.
    if provider == "gcp":
        mid_run = lambda server: len([a for a in server.arrived if a[1] == NOTICE_PATH[provider]]) >= 2  # noqa: E731
    else:
        mid_run = lambda server: len(looks_at_notice_path(server, provider)) >= 1  # noqa: E731
    await until(fake, mid_run, watching)
    effective = admin(fake, "POST", "/-/notice", {"in_s": 0})["effective_epoch"]
    result = await asyncio.wait_for(watching, timeout=120)
    assert result.notice is not None and result.notice.provider == provider and result.notice.kind == "preempt"
    after = [s for s in looks_at_notice_path(fake, provider) if s.at >= effective]
    assert len(after) == 1 and after[0].notice, "returned on the first answer that carried the notice"
    before = [s for s in looks_at_notice_path(fake, provider) if s.at < effective]
    assert before and not any(s.notice for s in before)
    assert result.unreachable == 0
    if provider in ("aws", "azure"):
        assert result.notice.deadline is not None and result.notice.deadline > result.notice.seen_at


async def test_the_watcher_wakes_a_workflow_busy_elsewhere_by_signal(client, tmp_path) -> None:
    server = fake_metadata.start("aws")
    try:
        admin(server, "POST", "/-/notice", {"in_s": 0, "kind": "rebalance"})
        admin(server, "POST", "/-/notice", {"in_s": 0, "kind": "terminate"})
        request = WatchPreemptionInput(
            environment="aws-spot", watcher=config_for(server, tmp_path, poll_interval_s=0.2), kinds=["preempt"]
        )
        signal = await run_watch(client, request, via_signal=True)
    finally:
        server.shutdown()
        server.server_close()
    assert signal.environment == "aws-spot"
    assert signal.notice.kind == "preempt" and signal.notice.detail["action"] == "terminate"


@pytest.mark.parametrize("fault", ["timeout", "500", "reset", "slow"])
def test_twenty_five_injected_failures_are_silence_and_recover_nothing(fake, provider, tmp_path, fault) -> None:
    if fault == "slow":
        admin(fake, "PUT", "/-/faults", {"delay_s": 0.3})
    else:
        admin(fake, "PUT", "/-/faults", {"fail_next": 25, "fail_with": fault, "hang_s": 1.0})
    watcher = open_watcher(config_for(fake, tmp_path, request_timeout_s=0.1))
    evidence = RecoveryEvidence(heartbeat_timed_out=True)  # worst case: the job's own status is late too
    recoveries = 0
    for _ in range(25):
        observation = watcher.observe()
        assert not observation.reachable and observation.notice is None, observation
        evidence = evidence.with_observation(observation)
        recoveries += decide_recovery(evidence).recover
    assert recoveries == 0 and evidence.unreachable_looks == 25
    if fault != "slow":
        assert watcher.observe().reachable, "after the injected failures the next look reads normally"


async def test_the_activity_counts_failed_looks_and_returns_no_notice(client, tmp_path) -> None:
    server = fake_metadata.start("azure")
    try:
        admin(server, "PUT", "/-/faults", {"fail_next": 25, "fail_with": "503"})
        config = config_for(server, tmp_path, poll_interval_s=0.01, request_timeout_s=0.5)
        request = WatchPreemptionInput(environment="az", watcher=config, max_duration_s=60)
        watching = asyncio.create_task(run_watch(client, request))
        await until(server, lambda server: len(server.log) >= 26, watching)
        admin(server, "POST", "/-/notice", {"in_s": 0})
        result = await asyncio.wait_for(watching, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert result.unreachable == 25 and result.notice is not None and result.notice.kind == "preempt"
    assert "HTTP 503" in (result.last_error or "")


def test_azure_events_are_acknowledged_by_event_id(tmp_path) -> None:
    server = fake_metadata.start("azure")
    try:
        admin(server, "POST", "/-/notice", {"in_s": 0, "lead_s": 45})
        watcher = open_watcher(config_for(server, tmp_path))
        notice = watcher.observe().notice
        assert notice is not None and notice.detail["EventType"] == "Preempt"
        assert (notice.deadline - notice.seen_at) <= timedelta(seconds=45)
        assert watcher.acknowledge(notice)
        assert server.acknowledged == [notice.detail["EventId"]]
        assert watcher.observe().notice.detail["EventStatus"] == "Started"
    finally:
        server.shutdown()
        server.server_close()


def test_a_deleted_node_confirms_a_missed_heartbeat(tmp_path) -> None:
    server = fake_metadata.start("k8s-label")
    try:
        watcher = open_watcher(config_for(server, tmp_path))
        evidence = RecoveryEvidence(heartbeat_timed_out=True).with_observation(watcher.observe())
        assert not decide_recovery(evidence).recover, "the node is there: a late heartbeat alone waits"
        admin(server, "DELETE", "/-/node")
        evidence = evidence.with_observation(watcher.observe())
        assert decide_recovery(evidence).trigger == "heartbeat_and_gone"
    finally:
        server.shutdown()
        server.server_close()


def test_the_address_comes_from_the_plan_then_skyshift_then_the_provider_variable(monkeypatch) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1/")
    assert open_watcher(WatcherConfig(provider="aws")).address == "http://127.0.0.1:1"
    monkeypatch.setenv("SKYSHIFT_PREEMPTION_ADDRESS", "127.0.0.1:2")
    assert open_watcher(WatcherConfig(provider="aws")).address == "http://127.0.0.1:2"
    assert open_watcher(WatcherConfig(provider="aws", address="http://127.0.0.1:3")).address == "http://127.0.0.1:3"
    monkeypatch.delenv("SKYSHIFT_PREEMPTION_ADDRESS")
    monkeypatch.delenv("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    assert open_watcher(WatcherConfig(provider="aws")).address == "http://169.254.169.254"
    with pytest.raises(ValueError, match="NODE_NAME"):
        open_watcher(WatcherConfig(provider="k8s-label"))


def test_plan_fields_name_what_is_wrong(tmp_path) -> None:
    from tests.helpers import plan_data

    data = plan_data("pre", f"file://{tmp_path}/a", f"file://{tmp_path}/b")
    data["environments"][0] |= {"preemption": "aws", "preemption_address": "http://127.0.0.1:8169"}
    job = {"name": "train", "code": "jobs/train", "command": ["python", "train.py"], "fallback": ["dst-pre"]}
    data["workloads"] = {**data["workloads"], "jobs": [job]}
    plan = parse_plan(data)
    assert plan.environments[0].preemption == "aws" and plan.workloads.jobs[0].fallback == ["dst-pre"]
    assert plan.environments[1].preemption == "none"

    bad = {**data, "environments": [data["environments"][0] | {"preemption": "ibm"}, data["environments"][1]]}
    with pytest.raises(PlanError, match=r"environments\[0\]\.preemption: Input should be 'aws'"):
        parse_plan(bad)
    bad = {**data, "environments": [data["environments"][0] | {"preemption_address": "http://u:p@x"},
                                    data["environments"][1]]}  # fmt: skip
    with pytest.raises(PlanError, match=r"environments\[0\]\.preemption_address: .*must not carry credentials"):
        parse_plan(bad)
    for fallback, message in ((["nowhere"], "'nowhere' is not one of the environments"),
                              (["dst-pre", "dst-pre"], "repeated: dst-pre")):  # fmt: skip
        bad = {**data, "workloads": {**data["workloads"], "jobs": [job | {"fallback": fallback}]}}
        with pytest.raises(PlanError, match=rf"workloads\.jobs\[0\]\.fallback: .*{message}"):
            parse_plan(bad)


async def test_a_watcher_that_cannot_be_opened_fails_once_naming_what_is_missing(client, monkeypatch) -> None:
    from temporalio.client import WorkflowFailureError

    monkeypatch.delenv("NODE_NAME", raising=False)
    request = WatchPreemptionInput(environment="cw", watcher=WatcherConfig(provider="k8s-label"))
    with pytest.raises(WorkflowFailureError) as failure:
        await run_watch(client, request)
    cause = failure.value.cause.cause
    assert "NODE_NAME" in str(cause) and cause.non_retryable


async def test_cancelling_the_watch_stops_the_watcher(client, tmp_path) -> None:
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import WorkflowFailureError

    server = fake_metadata.start("aws")
    queue = f"preempt-{uuid.uuid4().hex[:8]}"
    try:
        request = WatchPreemptionInput(environment="aws", watcher=config_for(server, tmp_path, poll_interval_s=0.2))
        async with watch_worker(client, queue):
            handle = await client.start_workflow(
                WatchOnceWorkflow.run, request, id=f"watch-{uuid.uuid4().hex[:8]}", task_queue=queue
            )
            assert await asyncio.to_thread(server.wait_for, lambda s: len(looks_at_notice_path(s, "aws")) >= 2)
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await handle.result()  # returns once the activity itself acknowledged the cancellation
            with server.cond:
                looks_at_close = len(looks_at_notice_path(server, "aws"))
        events = [e.event_type async for e in handle.fetch_history_events()]
    finally:
        server.shutdown()
        server.server_close()
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED in events
    assert len(looks_at_notice_path(server, "aws")) <= looks_at_close + 1, "at most the look in flight, then quiet"
