"""The Prometheus-server metrics provider against a real Prometheus (Debian's `prometheus`)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from activities.metrics import ScrapeInput, scrape, scrape_endpoints
from skyshift.spec.endpoints import EndpointPair, PrometheusProvider
from starters.load import LoadGenerator
from tests.conftest import ServingPair, free_port

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus (make test installs it)"),
]


@pytest.fixture
def prometheus(tmp_path, serving: ServingPair) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: chat\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{serving.ports['source']}']\n"
        "        labels: {side: source}\n"
        f"      - targets: ['127.0.0.1:{serving.ports['target']}']\n"
        "        labels: {side: target}\n"
    )
    process = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=20)


def pair(serving: ServingPair) -> EndpointPair:
    return EndpointPair(name="chat", source_url=serving.url("source"), target_url=serving.url("target"),
                        source_labels='job="chat",side="source"', target_labels='job="chat",side="target"')  # fmt: skip


def test_prometheus_provider_agrees_with_the_endpoints_own_counters(serving, prometheus):
    load = LoadGenerator(serving.url("router"), rate=100, max_seconds=60).start()
    from activities.traffic import HttpRouter, Weights
    from skyshift.spec.traffic import HttpRouterSpec

    HttpRouter(HttpRouterSpec(admin_url=serving.url("router"))).set_weights(Weights(source=50, target=50))
    time.sleep(4)
    load.stop()
    time.sleep(2.5)  # two scrape intervals: Prometheus has seen the final counters
    provider = PrometheusProvider(kind="prometheus", url=prometheus)
    [snapshot] = scrape_endpoints(ScrapeInput(endpoints=[pair(serving)], provider=provider))
    for side in ("source", "target"):
        through_prometheus, direct = getattr(snapshot, side), scrape(serving.url(side), 5)
        assert through_prometheus.ok, through_prometheus.error
        assert through_prometheus.requests == direct.requests > 50
        assert through_prometheus.latency.count == direct.latency.count
        assert through_prometheus.latency.bounds == direct.latency.bounds


def test_an_unreachable_prometheus_is_an_error_snapshot_not_a_crash(serving):
    provider = PrometheusProvider(kind="prometheus", url=f"http://127.0.0.1:{free_port()}")
    [snapshot] = scrape_endpoints(ScrapeInput(endpoints=[pair(serving)], provider=provider))
    assert not snapshot.source.ok and "URLError" in snapshot.source.error


def test_a_bad_query_in_the_plan_is_reported(serving, prometheus):
    from skyshift.spec.endpoints import PromQueries

    provider = PrometheusProvider(kind="prometheus", url=prometheus, queries=PromQueries(requests="sum(("))
    [snapshot] = scrape_endpoints(ScrapeInput(endpoints=[pair(serving)], provider=provider))
    assert not snapshot.source.ok and "HTTPError" in snapshot.source.error


async def test_a_migration_judged_through_prometheus_rolls_back_a_regression(client, tmp_path, serving, prometheus):
    from starters.operate import start_migration
    from tests.conftest import running_workers
    from tests.helpers import approve_gates
    from tests.test_cutover import plan_for, weights

    plan = plan_for(tmp_path, serving, [{"percent": 50, "duration": "10m"}, {"percent": 100}],
                    cutover={"monitor_interval": "3s"})  # fmt: skip
    endpoints = [pair(serving)]
    workloads = plan.workloads.model_copy(
        update={"endpoints": endpoints, "metrics": PrometheusProvider(kind="prometheus", url=prometheus)}
    )
    plan = plan.model_copy(update={"workloads": workloads})
    load = LoadGenerator(serving.url("router"), rate=150, max_seconds=120).start()
    async with running_workers(client, plan.source, plan.target):
        handle = await start_migration(client, plan)
        await approve_gates(handle, lambda s: s.traffic_percent == 50 and any(v.outcome == "pass" for v in s.verdicts))
        serving.set_faults("target", latency_factor=1.6)
        final = await handle.result()
    load.stop()
    assert final.outcome == "rolled_back" and final.rollback_request.by == "skyshift:analysis"
    assert weights(serving).target == 0
