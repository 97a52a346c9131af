"""Kafka -> decode -> resolve -> (join) -> aggregate, end to end against a real broker.

What is pinned here:
* Istio JSON access-log lines on a per-cluster topic become edge windows with the topic's cluster
  as the callee's cluster, every record counted once.
* Offsets are committed only past closed windows: a run that crashes mid-stream (no drain, no
  final commit) followed by a second run in the same group accounts for every record exactly once
  (the first run's closed windows plus everything the second run sees), when the crash leaves no
  batch straddling a closed and an open window.
* OTLP traces (client and server halves in separate messages, as two collectors send them) are
  joined into one caller -> callee edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from detector.flows import EdgeWindow
from detector.pipeline import CallbackSink, Pipeline, PipelineSettings, PipelineStats
from detector.sources import Batch
from detector.sources.kafka import KafkaSettings, KafkaSource

if TYPE_CHECKING:
    from conftest import KafkaHelper  # tests/integration/conftest.py (fixture ``kafka``)

pytestmark = pytest.mark.kafka

T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z, a window boundary for 60 s windows
TD = "spiffe://cluster.local"


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def istio_json(ts: float, caller_sa: str, caller_ns: str, service: str, ns: str, i: int) -> bytes:
    """One inbound Istio (>= 1.9) JSON access-log line, as the callee's sidecar writes it."""
    start = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    fqdn = f"{service}.{ns}.svc.cluster.local"
    return orjson.dumps(
        {
            "start_time": start.replace("+00:00", "Z"),
            "method": "GET",
            "path": f"/v1/items/{i}",
            "protocol": "HTTP/1.1",
            "response_code": 200 if i % 10 else 503,
            "response_flags": "-",
            "response_code_details": "via_upstream",
            "connection_termination_details": None,
            "upstream_transport_failure_reason": None,
            "bytes_received": 0,
            "bytes_sent": 100 + i % 50,
            "duration": 3 + i % 7,
            "upstream_service_time": "2",
            "x_forwarded_for": None,
            "user_agent": "Go-http-client/1.1",
            "request_id": str(uuid.UUID(int=i)),
            "authority": f"{fqdn}:8080",
            "upstream_host": "10.1.2.3:8080",
            "upstream_cluster": "inbound|8080||",
            "upstream_local_address": "127.0.0.6:41235",
            "downstream_local_address": "10.1.2.3:8080",
            "downstream_remote_address": "10.2.0.7:51234",
            "requested_server_name": f"outbound_.8080_._.{fqdn}",
            "route_name": "default",
            "downstream_peer_uri_san": f"{TD}/ns/{caller_ns}/sa/{caller_sa}",
        }
    )


EDGES = [("frontend", "web", "customers", "shop"), ("billing", "pay", "orders", "shop")]


def lines_for_window(window: int, n: int, start_i: int) -> list[bytes]:
    """``n`` lines spread over 60 s window number ``window``, alternating between ``EDGES``."""
    out = []
    for k in range(n):
        sa, sns, svc, ns = EDGES[k % len(EDGES)]
        ts = T0 + window * 60 + (k * 59.0 / n)
        out.append(istio_json(ts, sa, sns, svc, ns, start_i + k))
    return out


def kafka_settings(bootstrap: str, group: str, topics: list[dict[str, Any]]) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=[bootstrap],
        group_id=group,
        topics=topics,
        auto_offset_reset="earliest",
        connect_timeout_s=20,
        session_timeout_ms=4000,
        heartbeat_interval_ms=300,
        poll_timeout_ms=200,
    )


class Run:
    """One pipeline run over one KafkaSource, in a task, with what it emitted and consumed."""

    def __init__(self, source: KafkaSource, settings: PipelineSettings) -> None:
        self.source = source
        self.windows: list[EdgeWindow] = []
        self.units = 0
        self.next_offset: dict[str, int] = {}
        self.commits: list[dict[str, int]] = []
        real_commit = source.commit

        async def commit(positions: Any) -> None:  # record what the pipeline asks to commit
            self.commits.append(dict(positions))
            await real_commit(positions)

        source.commit = commit  # type: ignore[method-assign]
        self.pipeline = Pipeline(
            settings, sinks=[CallbackSink(self.windows.extend)], on_progress=self._progress
        )
        self.task: asyncio.Task[PipelineStats] = asyncio.create_task(self.pipeline.run([source]))

    def _progress(self, batch: Batch) -> None:
        self.units += len(batch.units)
        if batch.offsets:
            self.next_offset[batch.stream] = batch.offsets[-1] + 1

    async def wait_for(self, cond: Callable[[], bool], timeout_s: float = 40.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if self.task.done():
                self.task.result()  # raises what stopped it
                raise AssertionError("pipeline ended early")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout_s}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> PipelineStats:
        """Graceful: stop fetching, flush every open window, commit."""
        self.pipeline.stop()
        return await asyncio.wait_for(self.task, timeout=30)

    async def crash(self) -> None:
        """Abrupt: no flush, no final commit (the consumer is still closed, as on SIGKILL the
        broker would expire it)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=30)


def requests_by_window(windows: list[EdgeWindow]) -> Counter[float]:
    c: Counter[float] = Counter()
    for w in windows:
        c[w.window_start] += w.requests
    return c


async def test_istio_json_via_kafka_end_to_end(kafka: KafkaHelper) -> None:
    topic = await kafka.create_topic(unique_name("istio-east"), partitions=2)
    lines = [ln for w in range(3) for ln in lines_for_window(w, 100, w * 100)]
    await kafka.produce(topic, lines, partitions=[0, 1])
    src = KafkaSource(
        kafka_settings(
            kafka.bootstrap,
            unique_name("g"),
            [{"name": topic, "format": "envoy_json", "cluster": "east"}],
        )
    )
    run = Run(src, PipelineSettings(window_s=60, allowed_lateness_s=5, idle_stream_s=600))
    await run.wait_for(lambda: run.units == 300)
    # Windows 0 and 1 closed while streaming (the watermark passed them); 2 closes at the drain.
    await run.wait_for(lambda: len(requests_by_window(run.windows)) >= 2, timeout_s=10)
    assert set(requests_by_window(run.windows)) == {T0, T0 + 60}
    stats = await run.stop()
    assert stats.units == 300 and stats.records == 300 and stats.bad_units == 0
    assert requests_by_window(run.windows) == {T0: 100, T0 + 60: 100, T0 + 120: 100}
    edges = Counter()
    for w in run.windows:
        assert w.dst_cluster == "east"  # the topic's static attribute
        assert w.src_principal.startswith(TD)
        edges[(w.src_principal, w.dst_service, w.dst_namespace)] += w.requests
    assert edges == {
        (f"{TD}/ns/web/sa/frontend", "customers", "shop"): 150,
        (f"{TD}/ns/pay/sa/billing", "orders", "shop"): 150,
    }
    assert sum(w.errors for w in run.windows) == 30  # every tenth line is a 503
    # The final commit covers everything that was consumed.
    assert run.commits and run.commits[-1] == {f"{topic}[0]": 150, f"{topic}[1]": 150}


async def test_commits_only_past_closed_windows_and_restart_counts_each_record_once(
    kafka: KafkaHelper,
) -> None:
    topic = await kafka.create_topic(unique_name("istio-west"), partitions=2)
    group = unique_name("g")
    topics = [{"name": topic, "format": "envoy_json", "cluster": "west"}]
    settings = PipelineSettings(window_s=60, allowed_lateness_s=0, idle_stream_s=600)
    per_window = 80

    first = Run(KafkaSource(kafka_settings(kafka.bootstrap, group, topics)), settings)
    # Feed one window at a time and wait until it is consumed, so no fetched batch straddles two
    # windows: then "past closed windows" is an exact offset, and the accounting below is exact.
    produced = 0
    for w in range(3):
        await kafka.produce(topic, lines_for_window(w, per_window, produced), partitions=[0, 1])
        produced += per_window
        await first.wait_for(lambda n=produced: first.units == n)  # type: ignore[misc]
    # Window 2's data moved the watermark into window 2: windows 0 and 1 are closed.
    await first.wait_for(lambda: len(requests_by_window(first.windows)) == 2, timeout_s=10)
    await first.wait_for(lambda: bool(first.commits), timeout_s=10)
    committed = first.commits[-1]
    # Window 2 is open: nothing of it is committed (each partition holds 40 lines per window).
    assert committed == {f"{topic}[0]": 80, f"{topic}[1]": 80}
    await first.crash()
    assert requests_by_window(first.windows) == {T0: per_window, T0 + 60: per_window}

    # More data arrives while the detector is down.
    await kafka.produce(topic, lines_for_window(3, per_window, produced), partitions=[0, 1])
    produced += per_window

    second = Run(KafkaSource(kafka_settings(kafka.bootstrap, group, topics)), settings)
    await second.wait_for(lambda: second.units == 2 * per_window)
    await asyncio.sleep(0.5)  # a replay of already-closed windows would show up now
    stats = await second.stop()
    assert stats.units == 2 * per_window  # resumed exactly at the commit: nothing replayed
    assert requests_by_window(second.windows) == {T0 + 120: per_window, T0 + 180: per_window}
    total = requests_by_window(first.windows) + requests_by_window(second.windows)
    assert sum(total.values()) == produced  # every record exactly once
    assert second.commits[-1] == {f"{topic}[0]": 160, f"{topic}[1]": 160}


def _kv(k: str, v: str) -> KeyValue:
    return KeyValue(key=k, value=AnyValue(string_value=v))


def _spans_message(service: str, cluster: str, ns: str, spans: list[Span]) -> bytes:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[
                        _kv("service.name", service),
                        _kv("k8s.cluster.name", cluster),
                        _kv("k8s.namespace.name", ns),
                    ]
                ),
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    ).SerializeToString()


async def test_otlp_traces_via_kafka_are_joined_into_edges(kafka: KafkaHelper) -> None:
    topic = await kafka.create_topic(unique_name("otlp_spans"), partitions=1)
    start_ns = int(T0 * 1e9)
    n = 20
    client_spans, server_spans = [], []
    for i in range(n):
        trace_id = (i + 1).to_bytes(16, "big")
        client_id = (1000 + i).to_bytes(8, "big")
        t = start_ns + i * 1_000_000_000
        client_spans.append(
            Span(
                trace_id=trace_id,
                span_id=client_id,
                name="GET",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=t,
                end_time_unix_nano=t + 9_000_000,
                attributes=[
                    _kv("http.request.method", "GET"),
                    _kv("server.address", "payments.pay.svc.cluster.local"),
                    _kv("url.full", f"http://payments.pay.svc.cluster.local/v1/charges/{i}"),
                ],
            )
        )
        server_spans.append(
            Span(
                trace_id=trace_id,
                span_id=(2000 + i).to_bytes(8, "big"),
                parent_span_id=client_id,
                name="GET /v1/charges/{id}",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=t + 1_000_000,
                end_time_unix_nano=t + 8_000_000,
                attributes=[
                    _kv("http.request.method", "GET"),
                    _kv("url.path", f"/v1/charges/{i}"),
                    KeyValue(key="http.response.status_code", value=AnyValue(int_value=200)),
                ],
            )
        )
    # The callee's collector (cluster west) happens to export before the caller's (east).
    messages = [
        _spans_message("payments", "west", "pay", server_spans[:10]),
        _spans_message("checkout", "east", "shop", client_spans[:10]),
        _spans_message("checkout", "east", "shop", client_spans[10:]),
        _spans_message("payments", "west", "pay", server_spans[10:]),
    ]
    await kafka.produce(topic, messages, partition=0, key=None)
    src = KafkaSource(
        kafka_settings(kafka.bootstrap, unique_name("g"), [{"name": topic, "format": "otlp_proto"}])
    )
    run = Run(src, PipelineSettings(window_s=60, allowed_lateness_s=5, idle_stream_s=600))
    await run.wait_for(lambda: run.units == len(messages))
    stats = await run.stop()
    assert stats.bad_units == 0
    assert len(run.windows) == 1, [w.edge for w in run.windows]
    w = run.windows[0]
    assert (w.src_cluster, w.dst_service, w.dst_namespace, w.dst_cluster) == (
        "east",
        "payments",
        "pay",
        "west",
    )
    assert w.src_principal == "shop/checkout"  # no mTLS identity in spans: namespace/workload
    assert w.requests == n and w.ok == n
    assert run.pipeline.joiner is not None and run.pipeline.joiner.joined == n
