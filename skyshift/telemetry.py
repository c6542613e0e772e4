"""Telemetry for skyshift processes: OpenTelemetry traces from the standard `OTEL_*` variables, Prometheus metrics.

Traces go through Temporal's OpenTelemetry plugin, so every workflow, activity (each transfer range is one
`fingerprint_range`/`apply_range` activity) and client call is a span, parented across processes by the
headers Temporal carries. Nothing here invents configuration: the OpenTelemetry SDK's own variables
decide where spans go.

| variable | effect |
|---|---|
| `OTEL_TRACES_EXPORTER` | `otlp` (OTLP over HTTP/protobuf), `console` (JSON lines on stderr), `none` |
| `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | collector address; setting one implies `otlp` |
| `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION` | read by the OTLP exporter itself |
| `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource every span carries |
| `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_*` | batching, read by the SDK's batch processor |
| `OTEL_SDK_DISABLED=true` | no tracing at all |

With none of these set, no tracer provider is installed and the plugin is not added: an unconfigured
process pays nothing and does not try to reach a collector that is not there.

Metrics: `prometheus_runtime(port)` builds the Temporal SDK runtime whose Prometheus exporter serves
`/metrics`; the SDK's worker metrics (task latencies, slots, polls) and skyshift's own counters
(`skyshift.metrics`, recorded through the same runtime's meter) share that endpoint.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

#: The exporters `OTEL_TRACES_EXPORTER` may name, as the OpenTelemetry specification spells them.
EXPORTERS = ("otlp", "console", "none")


class TelemetryConfigError(ValueError):
    """A telemetry variable names something this process cannot do (exit 2)."""


@dataclass(frozen=True)
class TracingSettings:
    exporter: str  # one of EXPORTERS
    service_name: str


def tracing_settings(default_service: str) -> TracingSettings | None:
    """What the environment asks for, or None when tracing is not configured."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        exporter = "otlp"
    if not exporter or exporter == "none":
        return None
    if exporter not in EXPORTERS:
        raise TelemetryConfigError(f"OTEL_TRACES_EXPORTER={exporter}: skyshift exports traces as one of {EXPORTERS}")
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if exporter == "otlp" and protocol not in (None, "", "http/protobuf"):
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: skyshift ships the OTLP http/protobuf exporter; "
            "point it at the collector's HTTP port (4318) or unset the protocol"
        )
    return TracingSettings(exporter=exporter, service_name=os.environ.get("OTEL_SERVICE_NAME") or default_service)


_provider = None


def configure_tracing(default_service: str = "skyshift"):
    """Install a replay-safe tracer provider as the global one (once per process); None if not configured.

    Returns the provider so a process can `force_flush()` it before exiting. The provider comes from
    `temporalio.contrib.opentelemetry.create_tracer_provider`, which the plugin needs to keep spans
    from workflow replays out of the trace.
    """
    global _provider
    settings = tracing_settings(default_service)
    if settings is None:
        return None
    if _provider is not None:
        return _provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from temporalio.contrib.opentelemetry import create_tracer_provider

    if settings.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TelemetryConfigError(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install opentelemetry-exporter-otlp-proto-http"
            ) from None
        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_* itself
    else:
        exporter = ConsoleSpanExporter(out=sys.stderr)
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; the service name falls back to this process kind.
    provider = create_tracer_provider(resource=Resource.create({SERVICE_NAME: settings.service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def client_plugins(default_service: str = "skyshift") -> list:
    """The Temporal client plugins for tracing: the OpenTelemetry plugin when tracing is configured.

    `add_temporal_spans=True`: a span per workflow run, activity execution, signal, query and update
    (`RunActivity:apply_range`, ...), not only the spans code opens itself.
    """
    if configure_tracing(default_service) is None:
        return []
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

    return [OpenTelemetryPlugin(add_temporal_spans=True)]


def prometheus_runtime(port: int, host: str = "0.0.0.0") -> Runtime:
    """A Temporal runtime whose Prometheus exporter serves http://HOST:PORT/metrics.

    Counters get the OpenMetrics `_total` suffix and durations are in seconds, as Prometheus
    conventions (and the Grafana dashboard in deploy/grafana/) expect.
    """
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=f"{host}:{port}", counters_total_suffix=True, durations_as_seconds=True
            )
        )
    )
