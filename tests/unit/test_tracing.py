"""Traces of our own work: a span per window time scored, with bounded attributes."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from detector.detection import DetectionStage
from detector.findings import IncidentTracker
from detector.flows import EdgeWindow
from detector.scoring import Scorer
from detector.tracing import configure_exporter


def window(t: float) -> EdgeWindow:
    return EdgeWindow(
        window_start=t, window_end=t + 60, src_principal="spiffe://td/ns/a/sa/x",
        src_cluster="eu", dst_namespace="shop", dst_service="cart", dst_cluster="eu",
        requests=5, connections=0, api_calls=0, ok=5, errors=0, denied=0, unauthenticated=0,
        bytes_in=10, bytes_out=100, latency_p50_ms=1.0, latency_p90_ms=2.0, latency_p99_ms=3.0,
    )


async def test_a_span_per_window_time_scored() -> None:
    exporter = InMemorySpanExporter()
    provider = configure_exporter(exporter)
    stage = DetectionStage(Scorer(models=[]), IncidentTracker(), [])
    await stage.emit([window(0.0), window(60.0), window(60.0)])
    provider.force_flush()
    spans = [s for s in exporter.get_finished_spans() if s.name == "detector.score_window"]
    assert [s.attributes["detector.edge_windows"] for s in spans] == [1, 2]
    assert all("principal" not in k for s in spans for k in s.attributes)
