"""OTLP decoders: the shared examples, and messages built like the Collector's Kafka exporter.

The Kafka exporter (``otlp_proto`` encoding) writes the serialized ``ExportTraceServiceRequest`` /
``ExportLogsServiceRequest`` as the message value; the tests build exactly that with the
opentelemetry-proto classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from detector.decoders import get_decoder
from detector.decoders.otlp import decode_json, decode_proto, decode_proto_logs, decode_proto_traces
from detector.errors import DecodeError, PartialDecode
from detector.records import AUTH_FAILURE, DENIED, ERROR, OK, REQUEST, SPAN, UNAUTHENTICATED
from detector.spans import SpanJoiner

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
CLIENT_SPAN = bytes.fromhex("1111111111111111")
SERVER_SPAN = bytes.fromhex("2222222222222222")
T0 = 1_700_000_000_000_000_000


def _set(kv: Any, key: str, value: object) -> None:
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = str(value)


def _resource(rs: Any, **attrs: object) -> None:
    for k, v in attrs.items():
        _set(rs.resource.attributes.add(), k.replace("_", "."), v)


def two_cluster_traces() -> ExportTraceServiceRequest:
    """frontend@east calls payments@west: a CLIENT span and its SERVER span."""
    req = ExportTraceServiceRequest()
    east = req.resource_spans.add()
    _resource(
        east,
        service_name="frontend",
        k8s_cluster_name="east",
        k8s_namespace_name="shop",
        k8s_pod_name="frontend-6b7f9c8d5-q2w4z",
    )
    c = east.scope_spans.add().spans.add()
    c.trace_id, c.span_id = TRACE, CLIENT_SPAN
    c.kind = Span.SPAN_KIND_CLIENT
    c.start_time_unix_nano, c.end_time_unix_nano = T0, T0 + 30_000_000
    for k, v in {
        "server.address": "payments.pay.svc.cluster.local",
        "server.port": 8443,
        "http.request.method": "POST",
        "http.response.status_code": 403,
    }.items():
        _set(c.attributes.add(), k, v)
    west = req.resource_spans.add()
    _resource(west, service_name="payments", k8s_cluster_name="west", k8s_namespace_name="pay")
    s = west.scope_spans.add().spans.add()
    s.trace_id, s.span_id, s.parent_span_id = TRACE, SERVER_SPAN, CLIENT_SPAN
    s.kind = Span.SPAN_KIND_SERVER
    s.start_time_unix_nano, s.end_time_unix_nano = T0 + 2_000_000, T0 + 27_000_000
    for k, v in {
        "http.request.method": "POST",
        "url.path": "/v1/charge?id=9",
        "http.response.status_code": 403,
        "client.address": "10.1.2.3",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/frontend",
        "request_size": 120,
        "response_size": "19",
    }.items():
        _set(s.attributes.add(), k, v)
    s.status.code = Status.STATUS_CODE_ERROR
    return req


def test_registered() -> None:
    assert get_decoder("otlp_proto") is decode_proto
    assert get_decoder("otlp_json") is decode_json
    assert get_decoder("otlp_proto_traces") is decode_proto_traces
    assert get_decoder("otlp_proto_logs") is decode_proto_logs


def test_shared_examples_same_ids_in_json_and_protobuf(fixtures_dir: Path) -> None:
    otel = fixtures_dir / "otel"
    [j] = decode_json((otel / "otlp-proto-examples_trace.json").read_bytes(), "f", 1)
    binary = (otel / "otlp-proto-pr570_trace.protobuf-bin").read_bytes()
    [p] = decode_proto(binary, "f", 1)
    assert decode_proto_traces(binary, "f", 1) == [p]
    for r in (j, p):
        assert r.trace_id == "5b8efff798038103d269b633813fc60c"  # hex, lower case
        assert r.span_id == "eee19b7ec3c1b174"
        assert r.parent_span_id == "eee19b7ec3c1b173"
        assert r.kind == REQUEST  # SERVER span
        assert r.dst_service == "my.service"
        assert r.ts == 1544712660.0 and r.duration_ms == 1000.0
        assert (r.source, r.offset) == ("f", 1)
    assert j == p
    # The example log's body is not an access log: valid OTLP, nothing for us, no error.
    assert decode_json((otel / "otlp-proto-examples_logs.json").read_bytes()) == []


def test_json_trace_ids_are_not_base64() -> None:
    # json_format would read "5B8E…" as base64; we must keep the hex.
    data = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "EEE19B7EC3C1B174",
                                "kind": "SPAN_KIND_SERVER",
                                "startTimeUnixNano": 1544712660000000000,
                                "endTimeUnixNano": "1544712660500000000",
                                "attributes": [
                                    {"key": "http.status_code", "value": {"intValue": "503"}}
                                ],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    [r] = decode_json(orjson.dumps(data))
    assert r.trace_id == "5b8efff798038103d269b633813fc60c"
    assert r.status == 503 and r.outcome == ERROR and r.duration_ms == 500.0


def test_two_clusters_proto_and_join() -> None:
    data = two_cluster_traces().SerializeToString()
    recs = decode_proto(data, "otlp_spans/0", 42)
    client = next(r for r in recs if r.kind == SPAN)
    server = next(r for r in recs if r.kind == REQUEST)
    assert (client.src_cluster, client.src_namespace, client.src_workload) == (
        "east",
        "shop",
        "frontend",
    )
    assert (client.dst_service, client.dst_namespace, client.dst_port) == ("payments", "pay", 8443)
    assert (server.dst_cluster, server.dst_namespace, server.dst_service) == (
        "west",
        "pay",
        "payments",
    )
    assert server.src_ip == "10.1.2.3" and server.route == "/v1/charge"
    assert server.outcome == DENIED and server.status == 403
    assert (server.bytes_in, server.bytes_out) == (120, 19)
    assert server.parent_span_id == client.span_id == "1111111111111111"
    assert client.parent_span_id is None
    j = SpanJoiner(ttl_s=30)
    out = [x for r in recs for x in j.add(r)]
    assert j.joined == 1
    [edge] = out
    assert edge.kind == REQUEST
    assert (edge.src_cluster, edge.src_namespace, edge.src_workload) == ("east", "shop", "frontend")
    assert edge.src_principal == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert (edge.dst_cluster, edge.dst_service) == ("west", "payments")
    assert edge.outcome == DENIED and edge.duration_ms == pytest.approx(25.0)
    assert edge.ts == T0 / 1e9 and edge.source == "otlp_spans/0" and edge.offset == 42


def test_envoy_span_tags_and_grpc() -> None:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _resource(rs, service_name="reviews.default")
    sp = rs.scope_spans.add().spans.add()
    sp.trace_id, sp.span_id = TRACE, CLIENT_SPAN
    sp.kind = Span.SPAN_KIND_CLIENT
    sp.start_time_unix_nano = T0
    for k, v in {
        "istio.cluster_id": "east",
        "istio.namespace": "default",
        "upstream_cluster": "outbound|9080||ratings.default.svc.cluster.local",
        "http.url": "http://ratings:9080/ratings/0?x=1",
        "http.method": "GET",
        "rpc.grpc.status_code": 16,
        "node_id": "sidecar~10.0.0.5~reviews-v1-abc.default~default.svc.cluster.local",
        "peer.address": "10.0.0.9:9080",
    }.items():
        _set(sp.attributes.add(), k, v)
    [r] = decode_proto(req.SerializeToString())
    assert r.kind == SPAN
    assert (r.src_cluster, r.src_namespace, r.src_workload) == (
        "east",
        "default",
        "reviews.default",
    )
    assert (r.dst_service, r.dst_namespace, r.dst_port) == ("ratings", "default", 9080)
    assert r.route == "/ratings/0" and r.method == "GET"
    assert r.outcome == UNAUTHENTICATED and r.detail == "grpc_status=16"
    assert r.duration_ms is None  # no end time


def test_internal_spans_skipped_and_bad_ids_reported() -> None:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    ok = spans.add()
    ok.trace_id, ok.span_id, ok.kind, ok.start_time_unix_nano = TRACE, SERVER_SPAN, 2, T0
    internal = spans.add()
    internal.trace_id, internal.span_id, internal.kind = TRACE, CLIENT_SPAN, 1
    bad = spans.add()
    bad.trace_id, bad.span_id, bad.kind = TRACE[:8], SERVER_SPAN, 2
    bad2 = spans.add()
    bad2.trace_id, bad2.span_id, bad2.kind = TRACE, SERVER_SPAN[:3], 2
    with pytest.raises(PartialDecode) as ei:
        decode_proto(req.SerializeToString())
    assert [r.span_id for r in ei.value.records] == ["2222222222222222"]
    assert sorted(ei.value.problems) == ["bad_span_id", "bad_trace_id"]
    data = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {"traceId": "zz" * 16, "spanId": "ab" * 8, "kind": 2},
                            {
                                "traceId": "",
                                "spanId": "ab" * 8,
                                "kind": 2,
                                "startTimeUnixNano": "5",
                            },
                        ]
                    }
                ]
            }
        ]
    }
    with pytest.raises(PartialDecode) as ej:
        decode_json(orjson.dumps(data))
    assert ej.value.problems == ["bad_trace_id"]
    assert ej.value.records[0].trace_id is None  # empty id -> None


def _logs(body: Any = None, attrs: dict[str, object] | None = None, **res: object) -> bytes:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    _resource(rl, **res)
    lr = rl.scope_logs.add().log_records.add()
    lr.time_unix_nano = T0
    lr.trace_id, lr.span_id = TRACE, SERVER_SPAN
    if isinstance(body, str):
        lr.body.string_value = body
    elif isinstance(body, dict):
        for k, v in body.items():
            _set(lr.body.kvlist_value.values.add(), k, v)
    for k, v in (attrs or {}).items():
        _set(lr.attributes.add(), k, v)
    return req.SerializeToString()


def test_logs_text_body_with_resource_and_labels(fixtures_dir: Path) -> None:
    outbound, inbound = (
        (fixtures_dir / "envoy-istio" / "istio-io_access-log-task_TEXT.log")
        .read_text()
        .splitlines()
    )
    data = _logs(
        inbound,
        {"source_principal": "spiffe://cluster.local/ns/default/sa/sleep"},
        service_name="httpbin",
        k8s_cluster_name="west",
        k8s_namespace_name="foo",
    )
    [r] = decode_proto(data, "otlp_logs/1", 3)
    assert decode_proto_logs(data, "otlp_logs/1", 3) == [r]
    assert r.status == 418 and r.method == "GET"
    assert r.dst_cluster == "west"  # inbound log: the resource is the callee
    assert r.src_principal == "spiffe://cluster.local/ns/default/sa/sleep"  # from a label
    assert r.trace_id == "5b8efff798038103d269b633813fc60c" and r.span_id == "2222222222222222"
    assert (r.source, r.offset) == ("otlp_logs/1", 3)
    [o] = decode_proto(
        _logs(outbound, service_name="sleep", k8s_cluster_name="east", k8s_namespace_name="default")
    )
    assert (o.src_cluster, o.src_namespace, o.src_workload) == ("east", "default", "sleep")
    assert o.dst_cluster is None


def test_logs_json_and_kvlist_bodies() -> None:
    body = {
        "method": "GET",
        "path": "/admin",
        "response_code": 403,
        "response_code_details": "rbac_access_denied_matched_policy[ns[a]-policy[b]-rule[0]]",
        "upstream_cluster": "inbound|8080||",
    }
    for data in (
        _logs(orjson.dumps(body).decode(), k8s_cluster_name="west"),
        _logs(body, k8s_cluster_name="west"),
    ):
        [r] = decode_proto(data)
        assert r.outcome == DENIED and r.kind == AUTH_FAILURE
        assert r.ts == T0 / 1e9  # from time_unix_nano: the body has no start_time
        assert r.dst_cluster == "west"
    # attributes alone (Istio's OTel access-log provider with labels, empty body)
    [a] = decode_proto(_logs(None, {"method": "GET", "path": "/", "response_code": 401}))
    assert a.outcome == UNAUTHENTICATED
    # OTLP/JSON logs with a text body
    line = '[2020-11-25T21:26:18.409Z] "GET /status/500 HTTP/1.1" 500 - via_upstream - "-" 0 135 4 4 "-" "curl" "id-1" "httpbin:8000" "10.44.1.27:80" inbound|8000|| 127.0.0.1:41854 10.44.1.27:80 10.44.1.23:37652 - default'
    data = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "k8s.cluster.name", "value": {"stringValue": "west"}}]
                },
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": "1606339578409000000",
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "body": {"stringValue": line},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    [j] = decode_json(orjson.dumps(data))
    assert j.outcome == ERROR and j.status == 500 and j.dst_cluster == "west"
    assert j.trace_id == "5b8efff798038103d269b633813fc60c"


def test_application_logs_are_skipped() -> None:
    assert decode_proto(_logs("user 42 logged in", service_name="web")) == []
    assert decode_proto(_logs({"msg": "hello"})) == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"\xff\xff\xff\xff", "bad_protobuf"), (b"\x0a\x05\x01", "bad_protobuf")],
)
def test_bad_protobuf(data: bytes, reason: str) -> None:
    for dec in (decode_proto, decode_proto_traces, decode_proto_logs):
        with pytest.raises(DecodeError) as ei:
            dec(data)
        assert ei.value.reason == reason


def test_bad_json() -> None:
    with pytest.raises(DecodeError) as ei:
        decode_json(b"{")
    assert ei.value.reason == "not_json"
    with pytest.raises(DecodeError) as ej:
        decode_json(b'{"hello": []}')
    assert ej.value.reason == "not_otlp"
    assert decode_proto(b"") == []
    assert decode_json(b'{"resourceSpans": []}') == []
    assert OK == "ok"
