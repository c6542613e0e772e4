"""Telemetry a real operator would scrape and trace: Prometheus (Debian's) and an OTLP receiver, no mocks.

skyshift's counters go through the Temporal runtime's meter and its Prometheus exporter; the worker
process exports spans over OTLP/HTTP, configured only by the standard OTEL_* variables.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from skyshift import metrics
from skyshift.telemetry import TelemetryConfigError, prometheus_runtime, tracing_settings
from tests.conftest import free_port
from tests.helpers import suffix

pytestmark = pytest.mark.stack


@activity.defn
def move_bytes(n: int) -> int:
    metrics.bytes_sent(n, source="src-env", target="dst-env")
    metrics.chunks_reused(3)
    metrics.objects_verified(2)
    return n


@workflow.defn(sandboxed=False)
class CountingWorkflow:
    """Records a verdict and a rollback, then needs two more workflow tasks: each one replays it all."""

    @workflow.run
    async def run(self, n: int) -> None:
        await workflow.execute_activity(move_bytes, n, start_to_close_timeout=timedelta(seconds=30))
        metrics.verdict("fail", subject="cutover:25pct")
        metrics.rollback("skyshift:analysis")
        await workflow.sleep(0.1)
        await workflow.execute_activity(move_bytes, 0, start_to_close_timeout=timedelta(seconds=30))


@pytest.fixture
def prometheus_for(tmp_path) -> Iterator:
    """Start Debian's Prometheus scraping the given port every second; yield its query function."""
    if shutil.which("prometheus") is None:
        pytest.skip("needs Debian's prometheus (make test installs it)")
    processes = []

    def start(target_port: int):
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: skyshift-worker\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        command = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def query(promql: str) -> dict[str, float]:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    results = json.load(response)["data"]["result"]
            except OSError:
                return {}
            return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in results}

        return query

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


async def test_skyshift_counters_reach_prometheus_once_each_despite_replays(client, prometheus_for):
    port = free_port()
    runtime = prometheus_runtime(port, host="127.0.0.1")
    metered = await Client.connect(client.service_client.config.target_host, runtime=runtime,
                                   data_converter=pydantic_data_converter)  # fmt: skip
    queue = f"metrics-{suffix()}"
    # No workflow cache: every workflow task replays the history from the start, so a counter
    # that is not replay-safe would count the verdict and the rollback three times.
    with ThreadPoolExecutor(2) as executor:
        worker = Worker(metered, task_queue=queue, workflows=[CountingWorkflow], activities=[move_bytes],
                        activity_executor=executor, workflow_runner=UnsandboxedWorkflowRunner(),
                        max_cached_workflows=0)  # fmt: skip
        async with worker:
            await metered.execute_workflow(CountingWorkflow.run, 123_456, id=f"count-{suffix()}", task_queue=queue)
            query = prometheus_for(port)
            verdicts = await asyncio.to_thread(
                wait_for, lambda: query("skyshift_verdicts_total"), "skyshift_verdicts_total in Prometheus"
            )
            sent = query("skyshift_bytes_sent_total")
            rollbacks = query("skyshift_rollbacks_total")
            reused, verified = query("skyshift_chunks_reused_total"), query("skyshift_objects_verified_total")
            sdk = query(f'temporal_activity_execution_latency_count{{task_queue="{queue}"}}')

    [(labels, count)] = verdicts.items()
    assert count == 1 and json.loads(labels)["outcome"] == "fail" and json.loads(labels)["subject"] == "cutover"
    [(labels, value)] = sent.items()
    assert value == 123_456 and json.loads(labels)["source"] == "src-env" and json.loads(labels)["target"] == "dst-env"
    assert list(rollbacks.values()) == [1] and '"trigger": "analysis"' in next(iter(rollbacks))
    assert sum(reused.values()) == 6 and sum(verified.values()) == 4  # two activity runs, 3 and 2 each
    assert sdk and sum(sdk.values()) == 2, "the SDK's own worker metrics share the endpoint"


def test_metrics_outside_a_worker_are_a_no_op():
    metrics.bytes_sent(10, source="a", target="b")  # a unit test calling an activity's function: must not raise
    metrics.verdict("pass", subject="poc")


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
    ],
)
def test_tracing_follows_the_standard_variables(monkeypatch, environment, expected):
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = tracing_settings("skyshift-test")
    assert (settings.exporter if settings else None) == expected


def test_an_unusable_exporter_is_named(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_EXPORTER=zipkin"):
        tracing_settings("skyshift-test")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(TelemetryConfigError, match="http/protobuf"):
        tracing_settings("skyshift-test")


def read_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


class OtlpReceiver:
    """A local OTLP/HTTP trace receiver: decodes what exporters POST to /v1/traces."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[tuple[str, str]] = []  # (service.name, span name)
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.arrived:
                    for resource_spans in request.resource_spans:
                        service = next((a.value.string_value for a in resource_spans.resource.attributes
                                        if a.key == "service.name"), "")  # fmt: skip
                        for scope in resource_spans.scope_spans:
                            receiver.spans += [(service, span.name) for span in scope.spans]
                    receiver.arrived.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


async def test_worker_exports_spans_over_otlp_and_serves_metrics(client, tmp_path):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from prometheus_client.parser import text_string_to_metric_families

    from workflows.sync import DatasetSyncWorkflow, SyncInput

    receiver = OtlpReceiver()
    env, metrics_port = f"otel-{suffix()}", free_port()
    environment = {
        **os.environ,
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "skyshift-test-worker",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    command = [sys.executable, "-m", "workers.main", "--env", env, "--metrics-port", str(metrics_port)]
    worker = await asyncio.to_thread(subprocess.Popen, command, env=environment, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = await asyncio.to_thread(worker.stderr.readline)
            assert line, "the worker exited before serving"
        source, target = tmp_path / "src", tmp_path / "dst"
        for i in range(3):
            (source / "data").mkdir(parents=True, exist_ok=True)
            (source / "data" / f"part-{i}.bin").write_bytes(os.urandom(20_000))
        target.mkdir()
        queue = f"skyshift.{env}"
        local = f"otel-workflow-{suffix()}"
        async with Worker(client, task_queue=local, workflows=[DatasetSyncWorkflow]):
            result = await client.execute_workflow(
                DatasetSyncWorkflow.run,
                SyncInput(source={"url": f"file://{source}"}, target={"url": f"file://{target}"},
                          source_queue=queue, target_queue=queue),
                id=f"otel-sync-{suffix()}", task_queue=local,
            )  # fmt: skip
        assert result.totals.objects_changed == 3
        text = await asyncio.to_thread(read_url, f"http://127.0.0.1:{metrics_port}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        # The transfer's activities (fingerprinting at the source, applying at the target), as the worker counted them.
        executed = {s.labels["activity_type"] for s in families["temporal_activity_execution_latency"].samples}
        assert len(executed) >= 2, executed
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 60)
    expected = {f"RunActivity:{name}" for name in executed}

    def exported() -> set[str]:
        return {name for service, name in receiver.spans if service == "skyshift-test-worker"}

    with receiver.arrived:
        receiver.arrived.wait_for(lambda: expected <= exported(), timeout=10)
    assert expected <= exported(), f"every activity the worker ran is a span: {receiver.spans}"
    receiver.server.shutdown()


def test_metrics_table_names_every_counter():
    assert set(metrics.METRICS) == {
        "skyshift_bytes_sent", "skyshift_chunks_reused", "skyshift_objects_verified", "skyshift_verdicts",
        "skyshift_rollbacks", "skyshift_sync_passes", "skyshift_sync_pass_bytes",
    }  # fmt: skip
    dashboard = json.loads((Path(__file__).parent.parent / "deploy" / "grafana" / "skyshift-workers.json").read_text())
    queried = json.dumps(dashboard)
    for name in metrics.METRICS:
        assert f"{name}_total" in queried, f"the Grafana dashboard does not chart {name}"
