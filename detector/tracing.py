"""OpenTelemetry traces of the detector's own work (never of the telemetry it reads).

Contract:
* ``tracer()`` is the detector's tracer. Without ``configure`` it is OpenTelemetry's no-op
  tracer, so instrumented code costs almost nothing when tracing is off.
* ``configure(endpoint, service_name)`` installs an SDK tracer provider with a batching OTLP/HTTP
  exporter (``endpoint`` like ``http://otel-collector:4318/v1/traces``); ``configure_exporter``
  takes any span exporter (tests use the in-memory one).
* Spans: ``detector.score_window`` per window time scored (attributes: window start, edge
  windows, anomalies, findings, actions) and ``detector.deliver`` per webhook delivery attempt
  (endpoint name, message kind, HTTP status, outcome). Attributes are bounded: never a
  principal, address or finding id.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

_NAME = "detector"


def tracer() -> trace.Tracer:
    return trace.get_tracer(_NAME)


def configure_exporter(exporter: Any, service_name: str = "mesh-detector") -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def configure(endpoint: str, service_name: str = "mesh-detector") -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return configure_exporter(OTLPSpanExporter(endpoint=endpoint), service_name)
