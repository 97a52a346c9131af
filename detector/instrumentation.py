"""Our own observability: Prometheus metrics of the detector's work (not our input telemetry).

Contract:
* Names follow ``detector_<noun>_<unit>``; labels are bounded (source name from config, format,
  outcome, reason, cluster): never a principal, address or finding id.
* ``Metrics`` owns its registry, so tests and several pipelines in one process do not collide;
  ``Metrics.default()`` is the process-wide one the service exposes on ``/metrics``.
* Updated per batch or per closed window, never per record (the hot path stays lean).
  Cumulative counts kept elsewhere (``DetectionStage`` finding/action counts, ``WebhookSink``
  endpoint stats) are exported as deltas since the previous export (``sync_counts``).
* ``detector_blind{cluster}`` is 1 when a cluster that sent data has been silent (no closed
  window involving it) for ``BLIND_SILENCE_S`` of wall clock, or its newest event is more than
  ``BLIND_LAG_S`` behind the wall clock beyond the windowing delay; 0 otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

# "Blind detector" bounds (wall-clock seconds, no config): a cluster that has appeared in a
# closed window is blind when no closed window involved it for BLIND_SILENCE_S, or when its newest
# closed window's last event is older than BLIND_LAG_S plus the windowing delay itself
# (window_s + allowed_lateness_s: a window cannot close earlier than that).
BLIND_SILENCE_S = 300.0
BLIND_LAG_S = 300.0
# Cluster values that name no real cluster (never reported as blind or last-seen).
_NOT_CLUSTERS = frozenset({"", "unknown", "overflow"})


DELIVERY_OUTCOMES = ("delivered", "retried", "dead", "released")
OUTBOX_STATES = ("pending", "inflight", "delivered", "dead")


def finding_labels(f: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """Bounded labels of one OCSF finding: type, severity, category, activity."""
    unmapped = f.get("unmapped") or {}
    return (
        str(unmapped.get("finding_type", "unknown")),
        str(f.get("severity", "unknown")).lower(),
        str(unmapped.get("category", "unknown")),
        str(f.get("activity_name", "unknown")).lower(),
    )


def count_labels(items: Iterable[tuple[Any, ...]], into: dict[Any, int]) -> None:
    for key in items:
        into[key] = into.get(key, 0) + 1


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
        # -- scale-out: shared scoring (``detector.exchange``) --------------------------------
        self.shared_pending = Gauge(
            "detector_shared_windows_pending",
            "Edge windows read from the window log, waiting until every internal partition "
            "closed their window time (scale-out)",
            registry=r,
        )
        self.shared_scored_before = Gauge(
            "detector_shared_scored_before_seconds",
            "Window times before this (epoch seconds) were scored by every replica's baselines "
            "(scale-out)",
            registry=r,
        )
        self.span_joins = Counter(
            "detector_span_joins", "Client/server span halves, by result", ["result"], registry=r
        )
        # -- detection, response, delivery (updated per finding batch / metrics refresh) ------
        self.findings = Counter(
            "detector_findings",
            "Finding events emitted, by finding type, OCSF severity, category and activity",
            ["finding_type", "severity", "category", "activity"],
            registry=r,
        )
        self.actions = Counter(
            "detector_actions",
            "Remediation action records emitted, by kind and state",
            ["kind", "state"],
            registry=r,
        )
        self.deliveries = Counter(
            "detector_deliveries",
            "Webhook delivery attempts by endpoint name (sink) and outcome",
            ["sink", "outcome"],
            registry=r,
        )
        self.outbox_messages = Gauge(
            "detector_outbox_messages",
            "Webhook outbox rows by state (pending, inflight, delivered, dead)",
            ["state"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "detector_consumer_lag_messages",
            "Kafka messages behind the high watermark, summed over owned partitions, by topic",
            ["topic"],
            registry=r,
        )
        self.model_age = Gauge(
            "detector_model_age_seconds",
            "Wall clock minus the loaded model's last training event time",
            registry=r,
        )
        self.cluster_last_event = Gauge(
            "detector_cluster_last_event_seconds",
            "Newest event time (epoch seconds) of a closed window involving the cluster",
            ["cluster"],
            registry=r,
        )
        self.blind = Gauge(
            "detector_blind",
            "1 when a cluster that sent data went silent or fell behind (see BLIND_*), else 0",
            ["cluster"],
            registry=r,
        )
        self.model_age.set(float("nan"))  # no model loaded (yet): no value, not "fresh"
        self._seen_findings: dict[tuple[str, str, str, str], int] = {}
        self._seen_actions: dict[tuple[str, str], int] = {}
        self._seen_deliveries: dict[tuple[str, str], int] = {}
        self._cluster_wall: dict[str, float] = {}
        self._cluster_event: dict[str, float] = {}

    @classmethod
    def default(cls) -> Metrics:
        if cls._default is None:
            cls._default = cls()
        return cls._default

    # -- helpers (called per finding batch or per periodic refresh, never per record) ---------

    def sync_counts(
        self, counter: Counter, seen: dict[Any, int], totals: Mapping[Any, int]
    ) -> None:
        """Increase ``counter`` by what cumulative ``totals`` gained since the last call."""
        for key, n in totals.items():
            prev = seen.get(key, 0)
            if n > prev:
                labels = key if isinstance(key, tuple) else (key,)
                counter.labels(*labels).inc(n - prev)
            seen[key] = max(n, prev)

    def observe_findings(self, totals: Mapping[tuple[str, str, str, str], int]) -> None:
        self.sync_counts(self.findings, self._seen_findings, totals)

    def observe_actions(self, totals: Mapping[tuple[str, str], int]) -> None:
        self.sync_counts(self.actions, self._seen_actions, totals)

    def observe_deliveries(self, stats: Mapping[str, Mapping[str, int]]) -> None:
        """``WebhookSink.stats()``: per endpoint name, cumulative counts by outcome."""
        totals = {
            (sink, outcome): n
            for sink, per in stats.items()
            for outcome, n in per.items()
            if outcome in DELIVERY_OUTCOMES
        }
        self.sync_counts(self.deliveries, self._seen_deliveries, totals)

    def set_outbox(self, counts: Mapping[str, int]) -> None:
        for state in OUTBOX_STATES:
            self.outbox_messages.labels(state).set(counts.get(state, 0))

    def set_consumer_lag(self, per_stream: Mapping[str, int]) -> None:
        """Per-partition lag (stream ``topic[partition]``) summed by topic."""
        per_topic: dict[str, int] = {}
        for stream, n in per_stream.items():
            topic = stream.rsplit("[", 1)[0]
            per_topic[topic] = per_topic.get(topic, 0) + n
        for topic, n in per_topic.items():
            self.consumer_lag.labels(topic).set(n)

    def observe_clusters(self, newest_event: Mapping[str, float], wall: float) -> None:
        """Clusters seen in a batch of closed windows, with their newest event time."""
        for cluster, ts in newest_event.items():
            if cluster in _NOT_CLUSTERS:
                continue
            self._cluster_wall[cluster] = wall
            if ts > self._cluster_event.get(cluster, float("-inf")):
                self._cluster_event[cluster] = ts
                self.cluster_last_event.labels(cluster).set(ts)

    def update_blind(self, wall: float, windowing_delay_s: float) -> None:
        for cluster, seen in self._cluster_wall.items():
            silent = wall - seen > BLIND_SILENCE_S
            behind = wall - self._cluster_event[cluster] > BLIND_LAG_S + windowing_delay_s
            self.blind.labels(cluster).set(1 if silent or behind else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
