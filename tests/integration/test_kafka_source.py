"""KafkaSource against a real Kafka-protocol broker (Tansu by default; see conftest.py).

What is pinned here: per-topic formats and static attributes, stream naming, tombstones,
consumer-group partition sharing, resuming exactly at a committed position, which newly
assigned partitions have nothing to read past their commit (``on_caught_up``), commits for
partitions a consumer does not own being dropped, OTLP protobuf messages as the OpenTelemetry
Collector's Kafka exporter writes them, and a readable ``InfrastructureError`` when the broker
cannot be reached. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from pydantic import ValidationError

from detector.errors import InfrastructureError
from detector.sources import Batch, StaticAttrs
from detector.sources.kafka import KafkaSettings, KafkaSource

if TYPE_CHECKING:
    from conftest import KafkaHelper  # tests/integration/conftest.py (fixture ``kafka``)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Fast group membership: Tansu (like Kafka) rebalances on heartbeat rounds.
FAST_GROUP: dict[str, Any] = dict(
    session_timeout_ms=4000, heartbeat_interval_ms=300, poll_timeout_ms=200
)


def settings(bootstrap: str, group: str, topics: list[dict[str, Any]], **kw: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=[bootstrap],
        group_id=group,
        topics=topics,
        auto_offset_reset="earliest",
        connect_timeout_s=20,
        **{**FAST_GROUP, **kw},
    )


class Collector:
    """Runs ``source.batches()`` in a task and keeps every batch, for bounded polling."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source
        self.batches: list[Batch] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for b in self.source.batches():
                self.batches.append(b)
        except BaseException as e:  # surfaced by ``wait_for``
            self.error = e
            raise

    @property
    def units(self) -> list[bytes]:
        return [u for b in self.batches for u in b.units]

    def data(self) -> list[tuple[str, int, bytes]]:
        return [
            (b.stream, o, u) for b in self.batches for o, u in zip(b.offsets, b.units, strict=True)
        ]

    async def wait_for(self, cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if self.error is not None:
                raise self.error
            if self.task.done():
                raise AssertionError("source ended early")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout_s}s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.source.stop()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=5)


# -- settings (no broker) ----------------------------------------------------------------------


def test_settings_validation() -> None:
    base: dict[str, Any] = dict(bootstrap_servers="a:9092, b:9092", topics=[{"name": "t"}])
    s = KafkaSettings(**base)
    assert s.bootstrap_servers == ["a:9092", "b:9092"]
    assert s.topics[0].format == "auto"
    with pytest.raises(ValidationError, match="extra"):
        KafkaSettings(**base, bootstrap_server="x")
    with pytest.raises(ValidationError, match="unknown format"):
        KafkaSettings(bootstrap_servers="a:1", topics=[{"name": "t", "format": "nope"}])
    with pytest.raises(ValidationError, match="needs sasl_mechanism"):
        KafkaSettings(**base, security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="sasl_plain_username"):
        KafkaSettings(**base, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    with pytest.raises(ValidationError, match="not SSL"):
        KafkaSettings(**base, ssl_cafile="/ca.pem")
    with pytest.raises(ValidationError, match="listed twice"):
        KafkaSettings(bootstrap_servers="a:1", topics=[{"name": "t"}, {"name": "t"}])
    ok = KafkaSettings(
        **base,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="u",
        sasl_plain_password="secret",
    )
    assert "secret" not in repr(ok)  # passwords never end up in logs


# -- broker ------------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_two_topics_formats_static_attrs_and_tombstones(kafka: KafkaHelper) -> None:
    east = await kafka.create_topic(unique_name("east"), partitions=2)
    west = await kafka.create_topic(unique_name("west"), partitions=1)
    await kafka.produce(east, [b"e%d" % i for i in range(20)], partitions=[0, 1])
    # A tombstone (key, no value) in the middle.
    await kafka.produce(west, [b"w0", None, b"w2"], partition=0, key=b"k")

    src = KafkaSource(
        settings(
            kafka.bootstrap,
            unique_name("g"),
            [
                {"name": east, "format": "envoy_json", "cluster": "east"},
                {"name": west, "format": "envoy_text", "cluster": "west", "namespace": "shop"},
            ],
        ),
        name="mesh",
    )
    assert src.name == "mesh"
    col = Collector(src)
    try:
        await col.wait_for(lambda: len(col.units) == 22)
        by_stream: dict[str, list[Batch]] = {}
        for b in col.batches:
            by_stream.setdefault(b.stream, []).append(b)
        assert set(by_stream) == {f"{east}[0]", f"{east}[1]", f"{west}[0]"}
        for stream, batches in by_stream.items():
            # Every partition is announced (empty batch) before its first data.
            assert batches[0].units == [] and not batches[0].end
            for b in batches:
                if stream.startswith(east):
                    assert (b.fmt, b.static) == ("envoy_json", StaticAttrs(cluster="east"))
                else:
                    assert b.fmt == "envoy_text"
                    assert b.static == StaticAttrs(cluster="west", namespace="shop")
                assert len(b.units) == len(b.offsets)
        for p in (0, 1):
            data = [(o, u) for s, o, u in col.data() if s == f"{east}[{p}]"]
            assert [o for o, _ in data] == list(range(10))
            assert [u for _, u in data] == [b"e%d" % i for i in range(p, 20, 2)]
        assert [(o, u) for s, o, u in col.data() if s == f"{west}[0]"] == [(0, b"w0"), (2, b"w2")]
        assert src.tombstones == 1
        # Lag needs a highwater from a fetch response; everything is consumed.
        await col.wait_for(lambda: len(src.lag()) == 3, timeout_s=10)
        assert src.lag() == {f"{east}[0]": 0, f"{east}[1]": 0, f"{west}[0]": 0}
    finally:
        await col.close()
    assert col.task.done() and col.error is None  # stop() ended the iterator cleanly


@pytest.mark.kafka
async def test_two_consumers_share_partitions_exactly_once(kafka: KafkaHelper) -> None:
    topic = await kafka.create_topic(unique_name("shared"), partitions=4)
    group = unique_name("g")
    topics = [{"name": topic, "format": "envoy_json"}]
    a = Collector(KafkaSource(settings(kafka.bootstrap, group, topics), name="a"))
    await a.wait_for(lambda: len(a.source.assigned_streams()) == 4)
    b = Collector(KafkaSource(settings(kafka.bootstrap, group, topics), name="b"))
    try:
        # Produce only once the group is stable, so no rebalance replays anything.
        def split() -> bool:
            sa, sb = set(a.source.assigned_streams()), set(b.source.assigned_streams())
            return len(sa) == 2 and len(sb) == 2 and not sa & sb

        await a.wait_for(split, timeout_s=40)
        values = [b"v%03d" % i for i in range(200)]
        await kafka.produce(topic, values, partitions=[0, 1, 2, 3])
        await a.wait_for(lambda: len(a.units) + len(b.units) >= 200)
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would show up now
        assert sorted(a.units + b.units) == values
        streams_a = {s for s, _, _ in a.data()}
        streams_b = {s for s, _, _ in b.data()}
        assert streams_a == set(a.source.assigned_streams())
        assert streams_b == set(b.source.assigned_streams())
        assert not streams_a & streams_b
        # A revoke marker (end=True) reached the first consumer when the second joined.
        assert any(x.end and not x.units for x in a.batches)
        # Commits for partitions the other consumer owns are dropped, not sent.
        before = a.source.commits_dropped
        await a.source.commit({s: 1 for s in streams_b})
        assert a.source.commits_dropped == before + 2
    finally:
        await asyncio.gather(a.close(), b.close())


@pytest.mark.kafka
async def test_restart_resumes_exactly_at_committed_position(kafka: KafkaHelper) -> None:
    topic = await kafka.create_topic(unique_name("resume"), partitions=1)
    stream = f"{topic}[0]"
    group = unique_name("g")
    values = [b"r%03d" % i for i in range(100)]
    await kafka.produce(topic, values, partition=0)
    topics = [{"name": topic, "format": "envoy_json"}]

    first = Collector(KafkaSource(settings(kafka.bootstrap, group, topics, max_poll_records=7)))
    try:
        await first.wait_for(lambda: len(first.units) >= 40)
        await first.source.commit({stream: 37})
        # A stale position (below what was committed) must never move the group backwards.
        await first.source.commit({stream: 12})
        assert first.source.commits_dropped == 1
    finally:
        await first.close()

    second = Collector(KafkaSource(settings(kafka.bootstrap, group, topics)))
    try:
        await second.wait_for(lambda: len(second.units) >= 63)
        await asyncio.sleep(0.5)
        data = second.data()
        assert [o for _, o, _ in data] == list(range(37, 100))
        assert [u for _, _, u in data] == values[37:]
    finally:
        await second.close()


@pytest.mark.kafka
async def test_caught_up_names_only_partitions_with_nothing_past_the_commit(
    kafka: KafkaHelper,
) -> None:
    """A partition fully committed by a previous consumer is reported caught up, at the
    committed offset, once; one with records past the commit is not (its records follow)."""
    topic = await kafka.create_topic(unique_name("caught"), partitions=2)
    group = unique_name("g")
    # several records per produce request: a broker's answer to ListOffsets may be off then
    await kafka.produce(topic, [b"a%02d" % i for i in range(30)], partition=0)
    await kafka.produce(topic, [b"b%02d" % i for i in range(30)], partition=1)
    topics = [{"name": topic, "format": "envoy_json"}]

    first = Collector(KafkaSource(settings(kafka.bootstrap, group, topics)))
    try:
        await first.wait_for(lambda: len(first.units) >= 60)
        await first.source.commit({f"{topic}[0]": 30, f"{topic}[1]": 20})
    finally:
        await first.close()

    source = KafkaSource(settings(kafka.bootstrap, group, topics))
    reported: list[tuple[str, int]] = []
    source.on_caught_up(lambda stream, offset: reported.append((stream, offset)))
    second = Collector(source)
    try:
        await second.wait_for(lambda: len(second.units) >= 10 and bool(reported))
        await asyncio.sleep(1.0)  # more fetches: still reported once
        assert reported == [(f"{topic}[0]", 30)]
        assert [o for _, o, _ in second.data()] == list(range(20, 30))
    finally:
        await second.close()


def _otlp_request(trace_id: bytes, n_spans: int) -> ExportTraceServiceRequest:
    def kv(k: str, v: str) -> KeyValue:
        return KeyValue(key=k, value=AnyValue(string_value=v))

    spans = [
        Span(
            trace_id=trace_id,
            span_id=(i + 1).to_bytes(8, "big"),
            parent_span_id=b"" if i == 0 else (1).to_bytes(8, "big"),
            name=f"GET /v1/items/{i}",
            kind=Span.SPAN_KIND_SERVER if i % 2 else Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=1_700_000_000_000_000_000 + i * 1_000_000,
            end_time_unix_nano=1_700_000_000_000_000_000 + i * 1_000_000 + 5_000_000,
            attributes=[kv("http.request.method", "GET"), kv("istio.cluster_id", "east")],
        )
        for i in range(n_spans)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[kv("service.name", "checkout"), kv("k8s.cluster.name", "east")]
                ),
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )


@pytest.mark.kafka
async def test_otlp_proto_from_collector_kafka_exporter_arrives_intact(kafka: KafkaHelper) -> None:
    # The Collector's Kafka exporter defaults: topic "otlp_spans", otlp_proto encoding, no key.
    topic = await kafka.create_topic("otlp_spans", partitions=1)
    trace_ids = [bytes([i + 1]) * 16 for i in range(5)]
    payloads = [_otlp_request(t, 3).SerializeToString() for t in trace_ids]
    await kafka.produce(topic, payloads, partition=0, key=None)
    src = KafkaSource(
        settings(kafka.bootstrap, unique_name("g"), [{"name": topic, "format": "otlp_proto"}])
    )
    col = Collector(src)
    try:
        # A shared external broker may already hold earlier runs' messages: look for ours.
        await col.wait_for(lambda: sum(u in payloads for u in col.units) == len(payloads))
        ours = [b for b in col.batches if b.units]
        assert all(b.fmt == "otlp_proto" and b.stream == "otlp_spans[0]" for b in ours)
        got = [u for u in col.units if u in payloads]
        assert got == payloads  # intact and in order
        parsed = ExportTraceServiceRequest.FromString(got[0])
        spans = parsed.resource_spans[0].scope_spans[0].spans
        assert spans[0].trace_id == trace_ids[0] and len(spans) == 3
    finally:
        await col.close()


@pytest.mark.kafka
async def test_unreachable_broker_raises_infrastructure_error_in_time() -> None:
    port = free_port()  # nothing listens there
    src = KafkaSource(
        KafkaSettings(
            bootstrap_servers=[f"127.0.0.1:{port}"],
            topics=[{"name": "x"}],
            connect_timeout_s=2,
            request_timeout_ms=1000,
        )
    )
    t0 = time.monotonic()
    with pytest.raises(InfrastructureError) as info:
        async for _ in src.batches():
            pass
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 6, elapsed
    msg = str(info.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "2s" in msg
    await src.stop()  # idempotent after failure


@pytest.mark.kafka
async def test_stop_while_still_connecting_ends_cleanly() -> None:
    src = KafkaSource(
        KafkaSettings(
            bootstrap_servers=[f"127.0.0.1:{free_port()}"],
            topics=[{"name": "x"}],
            connect_timeout_s=30,
            request_timeout_ms=1000,
        )
    )

    async def drain() -> int:
        return len([b async for b in src.batches()])

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    await src.stop()
    assert await asyncio.wait_for(task, timeout=5) == 0  # no error, no batches
    assert time.monotonic() - t0 < 5
