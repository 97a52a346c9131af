"""Our own observability: Prometheus metrics of the detector's work (not our input telemetry).

Contract:
* Names follow ``detector_<noun>_<unit>``; labels are bounded (source name from config, format,
  outcome, reason, cluster): never a principal, address or finding id.
* ``Metrics`` owns its registry, so tests and several pipelines in one process do not collide;
  ``Metrics.default()`` is the process-wide one the service exposes on ``/metrics``.
* Updated per batch or per closed window, never per record (the hot path stays lean).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    _default: Metrics | None = None

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.records = Counter(
            "detector_records",
            "Input units decoded into records, by source and format",
            ["source", "format"],
            registry=r,
        )
        self.flow_records = Counter(
            "detector_flow_records",
            "Records aggregated into closed windows, by outcome and kind",
            ["src_cluster", "dst_cluster", "outcome"],
            registry=r,
        )
        self.bad_records = Counter(
            "detector_bad_records",
            "Input units rejected, by reason",
            ["source", "reason"],
            registry=r,
        )
        self.late_records = Counter(
            "detector_late_records",
            "Records whose window had already closed (not merged)",
            ["source"],
            registry=r,
        )
        self.overflow_records = Counter(
            "detector_overflow_records",
            "Records folded into the overflow edge (edge bound hit)",
            registry=r,
        )
        self.windows_closed = Counter(
            "detector_windows_closed", "Event-time windows closed", registry=r
        )
        self.edge_windows = Counter(
            "detector_edge_windows", "Edge windows emitted to scoring", registry=r
        )
        self.edges_tracked = Gauge(
            "detector_edges_tracked", "Distinct edges currently tracked", registry=r
        )
        self.open_edges = Gauge(
            "detector_open_edge_windows", "Edge accumulators in open windows", registry=r
        )
        self.watermark = Gauge(
            "detector_watermark_seconds", "Event-time watermark (epoch seconds)", registry=r
        )
        self.window_lag = Gauge(
            "detector_window_lag_seconds",
            "Wall clock minus the end of the newest closed window",
            registry=r,
        )
        self.queue_depth = Gauge(
            "detector_queue_batches", "Batches waiting between sources and the core", registry=r
        )
        self.span_joins = Counter(
            "detector_span_joins", "Client/server span halves, by result", ["result"], registry=r
        )

    @classmethod
    def default(cls) -> Metrics:
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
