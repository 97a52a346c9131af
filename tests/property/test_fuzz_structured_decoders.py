"""Structured decoders (Hubble, k8s audit, OTLP, the internal scale-out format) on arbitrary input.

They must never raise anything but ``DecodeError``/``PartialDecode``, and what they return must
be valid records.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.decoders.hubble import decode as hubble
from detector.decoders.internal import decode as internal
from detector.decoders.k8s_audit import decode as k8s_audit
from detector.decoders.otlp import decode_json, decode_proto, decode_proto_logs, decode_proto_traces
from detector.errors import DecodeError, PartialDecode
from detector.records import KINDS, OUTCOMES

DECODERS = [
    hubble,
    k8s_audit,
    decode_json,
    decode_proto,
    decode_proto_logs,
    decode_proto_traces,
    internal,
]

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=5)
    ),
    max_leaves=30,
)
# keys the decoders look for, so random documents reach deep code paths
_KEYS = ["flow", "verdict", "l7", "l4", "IP", "source", "destination", "time", "type", "http",
         "code", "stage", "user", "responseStatus", "verb", "auditID", "items", "resourceSpans",
         "resourceLogs", "scopeSpans", "spans", "traceId", "spanId", "kind", "attributes",
         "logRecords", "body", "stringValue", "kvlistValue", "values", "key", "value"]  # fmt: skip
_shaped = st.recursive(
    st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10) | st.sampled_from(_KEYS),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), kids, max_size=6)
    ),
    max_leaves=40,
)


def _otlp_message() -> bytes:
    """A real-shaped traces export: one SERVER span with ids and attributes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "payments"
    sp = rs.scope_spans.add().spans.add()
    sp.trace_id, sp.span_id, sp.parent_span_id = b"\x5b" * 16, b"\x01" * 8, b"\x02" * 8
    sp.kind, sp.start_time_unix_nano, sp.end_time_unix_nano = 2, 1_700_000_000 * 10**9, 1
    a = sp.attributes.add()
    a.key, a.value.int_value = "http.response.status_code", 403
    return req.SerializeToString()


def _check(data: bytes) -> None:
    for dec in DECODERS:
        try:
            recs = dec(data, "fuzz", 1)
        except PartialDecode as e:
            recs = e.records
        except DecodeError:
            continue
        for r in recs:
            assert r.kind in KINDS and r.outcome in OUTCOMES
            assert isinstance(r.ts, float)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_arbitrary_json(doc: object) -> None:
    _check(orjson.dumps(doc))


@settings(max_examples=400, deadline=None)
@given(_shaped)
def test_json_shaped_like_our_formats(doc: object) -> None:
    _check(orjson.dumps(doc))
    _check(orjson.dumps({"flow": doc, "node_name": "c/n"}))
    _check(orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [doc]}]}]}))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_messages(data: st.DataObject) -> None:
    """Flip, cut and splice bytes of a real OTLP message and a real Hubble line."""
    base = data.draw(st.sampled_from([_otlp_message(), _HUBBLE_LINE, _AUDIT_LINE]))
    b = bytearray(base)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, max(0, len(b) - 1)))
        b[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(b)))
    _check(bytes(b[:cut]))
    _check(bytes(b))


_HUBBLE_LINE = (
    b'{"flow":{"time":"2021-10-04T14:28:40.808318870Z","verdict":"FORWARDED","IP":{"source":'
    b'"10.156.1.2","destination":"10.156.2.7"},"l4":{"TCP":{"source_port":9253,"destination_port":'
    b'57468}},"source":{"namespace":"kube-system","pod_name":"node-local-dns-r99x7"},"destination":'
    b'{"namespace":"istio-system","labels":["k8s:io.cilium.k8s.policy.cluster=default"],"pod_name":'
    b'"prometheus-6655946b9f-6xcpf"},"Type":"L7","l7":{"type":"RESPONSE","latency_ns":"999958359",'
    b'"http":{"code":503,"method":"GET","url":"http://10.156.1.2:9253/metrics"}},"is_reply":true},'
    b'"node_name":"gke-x","time":"2021-10-04T14:28:40.808318870Z"}'
)
_AUDIT_LINE = (
    b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a","stage":"ResponseStarted",'
    b'"requestURI":"/api/v1/pods","verb":"list","user":{},"sourceIPs":["10.0.0.1"],'
    b'"responseStatus":{"message":"Authentication failed, attempted: bearer","code":401},'
    b'"requestReceivedTimestamp":"2024-03-05T10:15:30.123456Z"}'
)


def test_seed_lines_decode() -> None:
    assert hubble(_HUBBLE_LINE)[0].status == 503
    assert k8s_audit(_AUDIT_LINE)[0].outcome == "unauthenticated"
    with pytest.raises(DecodeError):
        decode_proto(b"\x0a\xff")
