"""OTLP decoders: logs and traces, protobuf (``otlp_proto``) and JSON (``otlp_json``).

Contract: the decoder contract of ``detector.decoders`` (one unit = one Kafka message value, as
the OpenTelemetry Collector's Kafka exporter writes it: the serialized ``Export*ServiceRequest``).

* ``decode_proto_traces`` / ``decode_json`` (``resourceSpans``): every span becomes one record.
  SERVER (and CONSUMER) spans become kind ``request``: caller -> this service, the callee named by
  the resource (``service.name``, ``k8s.cluster.name`` / ``istio.cluster_id``,
  ``k8s.namespace.name``) and the caller by whatever the attributes say (``client.address``,
  ``peer.address``, Istio ``source_*`` labels). CLIENT (and PRODUCER) spans become kind ``span``
  (``records.SPAN``): this service as the caller, the callee from ``server.address`` /
  ``peer.service`` / ``net.peer.name`` / Envoy ``upstream_cluster``; ``spans.SpanJoiner`` pairs
  them with their server halves. INTERNAL / unspecified spans are not calls between services and
  are skipped.
* ``decode_proto_logs`` / ``decode_json`` (``resourceLogs``): every log record whose body (text,
  JSON text, or a ``kvlistValue`` map) or attributes hold an access log is decoded by the
  access-log decoders (``envoy_text``, ``envoy_json``, ``linkerd``, through ``get_decoder``),
  then filled from the log record (ids, time) and the resource attributes. Log records that are
  not access logs (application logs sharing the pipeline) are skipped silently: they are valid
  OTLP, just not ours, and dead-lettering them would drown real problems.
* ``decode_proto``: one message that is either; told apart by parsing as traces and checking that
  spans carry 16-byte trace ids and 8-byte span ids, else as logs.
* Ids are lower-case hex; an empty id is ``None``; an id of the wrong length is a problem
  (``bad_trace_id`` / ``bad_span_id``): the item is dropped and reported through
  ``PartialDecode``. OTLP/JSON ids are hex strings (any case) and are parsed here with orjson:
  ``google.protobuf.json_format`` would read them as base64 and silently return wrong ids.
* int64 values arrive as JSON strings (``"intValue": "123"``) or numbers; both are accepted.
* Malformed protobuf -> ``DecodeError("bad_protobuf")``, bad JSON -> ``DecodeError("not_json")``,
  valid JSON of another shape -> ``DecodeError("not_otlp")``; nothing else is ever raised.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import orjson
from google.protobuf.message import DecodeError as _PbDecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from detector.decoders.hubble import workload_from_pod
from detector.errors import DecodeError, PartialDecode
from detector.records import (
    DENIED,
    ERROR,
    OK,
    REQUEST,
    SPAN,
    UNAUTHENTICATED,
    FlowRecord,
    outcome_for_status,
)

# Span kinds (opentelemetry.proto.trace.v1.Span.SpanKind).
_KIND_INTERNAL: Final = 1
_KIND_SERVER: Final = 2
_KIND_CLIENT: Final = 3
_KIND_PRODUCER: Final = 4
_KIND_CONSUMER: Final = 5
_KIND_NAMES: Final = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_ERROR: Final = 2
_STATUS_NAMES: Final = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}

# gRPC codes that mean the server failed (the OTel semantic conventions' list for server spans);
# 16 and 7 are the auth failures we care most about.
_GRPC_SERVER_ERRORS: Final = frozenset({2, 4, 12, 13, 14, 15})
_GRPC_UNAUTHENTICATED: Final = 16
_GRPC_PERMISSION_DENIED: Final = 7

Attrs = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Small helpers shared by the proto and JSON paths


def _int(v: Any) -> int | None:
    """An integer from an int, a numeric string (OTLP/JSON int64) or a float; else None."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return int(float(v))
        except (TypeError, ValueError, OverflowError):
            return None


def _str(v: Any) -> str | None:
    if v is None or v == "" or v == "-":
        return None
    return v if isinstance(v, str) else str(v)


def _first(attrs: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        v = attrs.get(k)
        if v is not None and v != "" and v != "-":
            return v
    return None


def _strip_port(addr: str | None) -> str | None:
    """``10.0.0.1:8080`` -> ``10.0.0.1``, ``[a::b]:80`` -> ``a::b``; bare IPv6 kept as is."""
    if not addr:
        return None
    if addr.startswith("["):
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    if addr.count(":") == 1:
        return addr.split(":", 1)[0] or None
    return addr


def _split_host(host: str | None) -> tuple[str | None, str | None, int | None]:
    """(service, namespace, port) from a peer name: ``reviews.default.svc.cluster.local:9080``."""
    if not host:
        return None, None, None
    port: int | None = None
    if host.count(":") == 1 and not host.startswith("["):
        host, _, p = host.partition(":")
        port = _int(p)
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc" and not parts[0].isdigit():
        return parts[0], parts[1], port
    return host or None, None, port


def _upstream_cluster(uc: str | None) -> tuple[str | None, str | None, int | None, str | None]:
    """Istio cluster names: ``outbound|9080||reviews.default.svc.cluster.local``.

    Returns (service, namespace, port, direction); direction is ``inbound``/``outbound``/None.
    """
    if not uc or "|" not in uc:
        return None, None, None, None
    parts = uc.split("|")
    direction = parts[0] if parts[0] in ("inbound", "outbound") else None
    port = _int(parts[1]) if len(parts) > 1 else None
    svc = ns = None
    if len(parts) > 3 and parts[3]:
        svc, ns, _ = _split_host(parts[3])
    return svc, ns, port, direction


def _hex_id(raw: Any, length: int) -> tuple[str | None, bool]:
    """A lower-case hex id of ``length`` chars from bytes (proto) or a hex string (JSON).

    Returns (id, ok); an empty id is (None, True), a wrong one (None, False).
    """
    if not raw:
        return None, True
    if isinstance(raw, bytes):
        if len(raw) * 2 != length:
            return None, False
        if not any(raw):
            return None, True  # all-zero ids are "invalid/absent" per W3C trace context
        return raw.hex(), True
    if not isinstance(raw, str) or len(raw) != length:
        return None, False
    s = raw.lower()
    try:
        if int(s, 16) == 0:
            return None, True
    except ValueError:
        return None, False
    return s, True


def _status_code(v: Any) -> int:
    if isinstance(v, str):
        return _STATUS_NAMES.get(v, 0)
    return _int(v) or 0


def _span_kind(v: Any) -> int:
    if isinstance(v, str):
        return _KIND_NAMES.get(v, 0)
    return _int(v) or 0


# ---------------------------------------------------------------------------------------------
# Attribute values: protobuf AnyValue / OTLP/JSON AnyValue -> plain Python


def _pb_value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "int_value":
        return v.int_value
    if which == "bool_value":
        return v.bool_value
    if which == "double_value":
        return v.double_value
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    if which == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if which == "bytes_value":
        return v.bytes_value
    return None


def _pb_attrs(kvs: Iterable[Any]) -> Attrs:
    return {kv.key: _pb_value(kv.value) for kv in kvs}


def _json_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return None
    for k, x in v.items():
        if k == "stringValue" or k == "string_value":
            return x
        if k == "intValue" or k == "int_value":
            return _int(x)
        if k == "boolValue" or k == "bool_value":
            return bool(x)
        if k == "doubleValue" or k == "double_value":
            try:
                return float(x)
            except (TypeError, ValueError):
                return None
        if k == "kvlistValue" or k == "kvlist_value":
            return _json_attrs(x.get("values") if isinstance(x, dict) else None)
        if k == "arrayValue" or k == "array_value":
            vals = x.get("values") if isinstance(x, dict) else None
            return [_json_value(y) for y in vals] if isinstance(vals, list) else []
        if k == "bytesValue" or k == "bytes_value":
            try:
                return base64.b64decode(x) if isinstance(x, str) else None
            except ValueError:
                return None
    return None


def _json_attrs(kvs: Any) -> Attrs:
    if not isinstance(kvs, list):
        return {}
    out: Attrs = {}
    for kv in kvs:
        if isinstance(kv, dict):
            key = kv.get("key")
            if isinstance(key, str):
                out[key] = _json_value(kv.get("value"))
    return out


def _get(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    """OTLP/JSON uses lowerCamelCase; accept the proto field name too (some encoders emit it)."""
    v = d.get(camel)
    return d.get(snake) if v is None else v


def _list(d: Mapping[str, Any], camel: str, snake: str) -> list[Any]:
    v = _get(d, camel, snake)
    return v if isinstance(v, list) else []


def _dict(d: Mapping[str, Any], camel: str, snake: str) -> dict[str, Any]:
    v = _get(d, camel, snake)
    return v if isinstance(v, dict) else {}


# ---------------------------------------------------------------------------------------------
# Resource: who emitted this (the proxy's / service's pod)


class _Resource:
    """The resource attributes we use, read once per ResourceSpans/ResourceLogs."""

    __slots__ = ("cluster", "namespace", "service", "workload")

    def __init__(self, attrs: Attrs) -> None:
        self.cluster = _str(_first(attrs, "k8s.cluster.name", "istio.cluster_id", "cluster_id"))
        self.namespace = _str(_first(attrs, "k8s.namespace.name", "service.namespace"))
        self.service = _str(attrs.get("service.name"))
        if self.service is not None and self.service.startswith("unknown_service"):
            self.service = None  # the SDK default when nothing was configured
        pod = _str(attrs.get("k8s.pod.name"))
        self.workload = _str(
            _first(
                attrs,
                "k8s.deployment.name",
                "k8s.statefulset.name",
                "k8s.daemonset.name",
                "k8s.job.name",
            )
        ) or (workload_from_pod(pod) if pod else None)


# ---------------------------------------------------------------------------------------------
# Spans -> records


def _http_status(attrs: Attrs) -> int | None:
    return _int(_first(attrs, "http.response.status_code", "http.status_code", "response_code"))


def _span_record(
    res: _Resource,
    kind: int,
    start_ns: int,
    end_ns: int,
    attrs: Attrs,
    status_code: int,
    trace_id: str | None,
    span_id: str | None,
    parent_id: str | None,
    source: str | None,
    offset: int | None,
) -> FlowRecord | None:
    """One span as a record, or None for spans that are not calls between services."""
    if kind in (_KIND_SERVER, _KIND_CONSUMER):
        rkind = REQUEST
    elif kind in (_KIND_CLIENT, _KIND_PRODUCER):
        rkind = SPAN
    else:
        return None

    status = _http_status(attrs)
    outcome = outcome_for_status(status) if status is not None else OK
    detail: str | None = None
    grpc = _int(attrs.get("rpc.grpc.status_code"))
    if grpc is not None and grpc != 0 and outcome == OK:
        if grpc == _GRPC_UNAUTHENTICATED:
            outcome = UNAUTHENTICATED
        elif grpc == _GRPC_PERMISSION_DENIED:
            outcome = DENIED
        elif grpc in _GRPC_SERVER_ERRORS:
            outcome = ERROR
        detail = f"grpc_status={grpc}"
    if status_code == _STATUS_ERROR and outcome == OK:
        outcome = ERROR

    method = _str(_first(attrs, "http.request.method", "http.method", "rpc.method"))
    route = _str(_first(attrs, "url.path", "http.target", "http.route", "http.url", "url.full"))
    if route is not None and "://" in route:
        # a full URL (Envoy's http.url): keep the path only, the host is the service
        rest = route.split("://", 1)[1]
        slash = rest.find("/")
        route = rest[slash:] if slash >= 0 else "/"
    if route is not None and "?" in route:
        route = route.split("?", 1)[0]

    uc_svc, uc_ns, uc_port, _direction = _upstream_cluster(_str(attrs.get("upstream_cluster")))
    # Envoy's tags are from the proxy's point of view: request_size is what the caller sent.
    bytes_in = (
        _int(_first(attrs, "request_size", "http.request.body.size", "http.request_content_length"))
        or 0
    )
    bytes_out = (
        _int(
            _first(
                attrs, "response_size", "http.response.body.size", "http.response_content_length"
            )
        )
        or 0
    )
    duration = (end_ns - start_ns) / 1e6 if start_ns and end_ns and end_ns >= start_ns else None
    ts = (start_ns or end_ns) / 1e9
    request_id = _str(
        _first(attrs, "guid:x-request-id", "http.request.header.x-request-id", "x-request-id")
    )

    if rkind == REQUEST:
        peer = _str(
            _first(
                attrs,
                "client.address",
                "net.sock.peer.addr",
                "net.peer.ip",
                "peer.address",
                "downstream_remote_address",
            )
        )
        return FlowRecord(
            ts=ts,
            kind=REQUEST,
            src_principal=_str(
                _first(attrs, "source_principal", "downstream_peer_uri_san", "source.principal")
            ),
            src_cluster=_str(_first(attrs, "source_cluster", "source.cluster")),
            src_namespace=_str(_first(attrs, "source_namespace", "source.namespace")),
            src_workload=_str(_first(attrs, "source_workload", "source.workload", "source_app")),
            src_ip=_strip_port(peer),
            dst_cluster=res.cluster
            or _str(_first(attrs, "istio.cluster_id", "destination_cluster")),
            dst_namespace=res.namespace
            or _str(_first(attrs, "istio.namespace", "destination_namespace"))
            or uc_ns,
            dst_service=res.service
            or _str(_first(attrs, "istio.canonical_service", "destination_service_name"))
            or uc_svc,
            dst_port=_int(_first(attrs, "server.port", "net.host.port")) or uc_port,
            method=method,
            route=route,
            status=status,
            outcome=outcome,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration_ms=duration,
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent_id,
            request_id=request_id,
            detail=detail,
            source=source,
            offset=offset,
        )
    # A client span: this service calls someone.
    peer_name = _str(
        _first(attrs, "server.address", "peer.service", "net.peer.name", "rpc.service")
    )
    svc, ns, port = _split_host(peer_name)
    if svc is None:
        svc, ns, port = uc_svc, uc_ns, uc_port
    if svc is None:
        addr = _str(
            _first(
                attrs, "peer.address", "net.sock.peer.addr", "net.peer.ip", "server.socket.address"
            )
        )
        svc = _strip_port(addr)
    return FlowRecord(
        ts=ts,
        kind=SPAN,
        src_cluster=res.cluster or _str(attrs.get("istio.cluster_id")),
        src_namespace=res.namespace or _str(attrs.get("istio.namespace")),
        src_workload=res.workload or res.service or _str(attrs.get("istio.canonical_service")),
        dst_cluster=_str(_first(attrs, "destination_cluster", "destination.cluster")),
        dst_namespace=ns or _str(_first(attrs, "destination_namespace")) or uc_ns,
        dst_service=svc,
        dst_port=_int(_first(attrs, "server.port", "net.peer.port")) or port or uc_port,
        method=method,
        route=route,
        status=status,
        outcome=outcome,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        duration_ms=duration,
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_id,
        request_id=request_id,
        detail=detail,
        source=source,
        offset=offset,
    )


def _ids(
    trace_raw: Any, span_raw: Any, parent_raw: Any, problems: list[str]
) -> tuple[str | None, str | None, str | None] | None:
    tid, ok_t = _hex_id(trace_raw, 32)
    sid, ok_s = _hex_id(span_raw, 16)
    pid, ok_p = _hex_id(parent_raw, 16)
    if not ok_t:
        problems.append("bad_trace_id")
        return None
    if not (ok_s and ok_p):
        problems.append("bad_span_id")
        return None
    return tid, sid, pid


def _finish(records: list[FlowRecord], problems: list[str]) -> list[FlowRecord]:
    if problems:
        raise PartialDecode(records, problems)
    return records


def _traces_from_pb(
    msg: ExportTraceServiceRequest, source: str | None, offset: int | None
) -> list[FlowRecord]:
    records: list[FlowRecord] = []
    problems: list[str] = []
    for rs in msg.resource_spans:
        res = _Resource(_pb_attrs(rs.resource.attributes))
        for ss in rs.scope_spans:
            for sp in ss.spans:
                ids = _ids(sp.trace_id, sp.span_id, sp.parent_span_id, problems)
                if ids is None:
                    continue
                rec = _span_record(
                    res, sp.kind, sp.start_time_unix_nano, sp.end_time_unix_nano,
                    _pb_attrs(sp.attributes), sp.status.code, *ids, source, offset,
                )  # fmt: skip
                if rec is not None:
                    records.append(rec)
    return _finish(records, problems)


def _traces_from_json(
    obj: dict[str, Any], source: str | None, offset: int | None
) -> list[FlowRecord]:
    records: list[FlowRecord] = []
    problems: list[str] = []
    for rs in _list(obj, "resourceSpans", "resource_spans"):
        if not isinstance(rs, dict):
            problems.append("bad_field")
            continue
        res = _Resource(_json_attrs(_dict(rs, "resource", "resource").get("attributes")))
        scopes = _list(rs, "scopeSpans", "scope_spans") or _list(
            rs, "instrumentationLibrarySpans", "instrumentation_library_spans"
        )
        for ss in scopes:
            if not isinstance(ss, dict):
                problems.append("bad_field")
                continue
            for sp in _list(ss, "spans", "spans"):
                if not isinstance(sp, dict):
                    problems.append("bad_field")
                    continue
                ids = _ids(_get(sp, "traceId", "trace_id"), _get(sp, "spanId", "span_id"),
                           _get(sp, "parentSpanId", "parent_span_id"), problems)  # fmt: skip
                if ids is None:
                    continue
                st = _get(sp, "status", "status")
                rec = _span_record(
                    res,
                    _span_kind(sp.get("kind")),
                    _int(_get(sp, "startTimeUnixNano", "start_time_unix_nano")) or 0,
                    _int(_get(sp, "endTimeUnixNano", "end_time_unix_nano")) or 0,
                    _json_attrs(sp.get("attributes")),
                    _status_code(st.get("code")) if isinstance(st, dict) else 0,
                    *ids,
                    source,
                    offset,
                )
                if rec is not None:
                    records.append(rec)
    return _finish(records, problems)


# ---------------------------------------------------------------------------------------------
# Logs -> records (the access-log decoders do the real work)

# Attribute keys that say "this map is an access log" (Envoy command operators, Istio labels).
_ACCESS_LOG_KEYS: Final = frozenset(
    {
        "response_code",
        "upstream_cluster",
        "downstream_remote_address",
        "authority",
        "path",
        "method",
        "response_flags",
        "status",
        "client.id",
        "bytes_received",
        "bytes_sent",
        "upstream_host",
        "downstream_local_address",
        "response_code_details",
        "total_ns",
    }
)

# Istio telemetry labels (OTel access-log attributes) -> record fields they fill when missing.
_LABELS: Final = (
    ("source_principal", "src_principal"),
    ("source_cluster", "src_cluster"),
    ("source_namespace", "src_namespace"),
    ("source_workload", "src_workload"),
    ("destination_cluster", "dst_cluster"),
    ("destination_namespace", "dst_namespace"),
    ("destination_service_name", "dst_service"),
    ("request_id", "request_id"),
    ("x_request_id", "request_id"),
)


def _body_format(body: bytes) -> str | None:
    from detector.decoders.sniff import sniff  # lazy: sniff imports get_decoder users

    fmt = sniff(body)
    return fmt if fmt in ("envoy_text", "envoy_json", "linkerd") else None


def _decode_body(
    body: Any, attrs: Attrs, time_ns: int, source: str | None, offset: int | None
) -> tuple[list[FlowRecord], bool]:
    """Access-log records from one log record's body/attributes; (records, was_json_object)."""
    from detector.decoders import get_decoder

    obj: dict[str, Any] | None = None
    if isinstance(body, dict):
        obj = body
    elif isinstance(body, str) and body.lstrip().startswith("{"):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        obj = parsed if isinstance(parsed, dict) else None
    elif isinstance(body, bytes):
        body = body.decode("utf-8", "replace")

    if obj is not None or (not body and attrs and not _ACCESS_LOG_KEYS.isdisjoint(attrs)):
        # A JSON access log: labels in the attributes become extra keys (body keys win).
        merged = dict(attrs)
        if obj is not None:
            merged.update(obj)
        if _ACCESS_LOG_KEYS.isdisjoint(merged):
            return [], True  # a structured application log, not an access log
        if time_ns and merged.get("start_time") in (None, "", "-"):
            # the access-log decoders need a time; the log record's is the next best
            merged["start_time"] = time_ns
        data = orjson.dumps(merged, default=str)
        fmt = "linkerd" if "client.id" in merged or "total_ns" in merged else "envoy_json"
        return get_decoder(fmt)(data, source, offset), True
    if isinstance(body, str) and body:
        data = body.encode()
        fmt_text = _body_format(data)
        if fmt_text is None:
            return [], False
        return get_decoder(fmt_text)(data, source, offset), False
    return [], False


def _log_records(
    res: _Resource,
    body: Any,
    attrs: Attrs,
    time_ns: int,
    trace_raw: Any,
    span_raw: Any,
    source: str | None,
    offset: int | None,
    problems: list[str],
    out: list[FlowRecord],
) -> None:
    try:
        recs, was_json = _decode_body(body, attrs, time_ns, source, offset)
    except PartialDecode as e:
        recs, was_json = e.records, False
        problems.extend(e.problems)
    except DecodeError:
        # Not an access log (an application log on the same topic): skipped on purpose.
        return
    if not recs:
        return
    tid, ok_t = _hex_id(trace_raw, 32)
    sid, ok_s = _hex_id(span_raw, 16)
    if not ok_t:
        problems.append("bad_trace_id")
    if not ok_s:
        problems.append("bad_span_id")
    inbound = _is_inbound(body, attrs)
    for r in recs:
        upd: dict[str, Any] = {}
        if not was_json:
            for key, field in _LABELS:
                v = attrs.get(key)
                if v not in (None, "", "-") and getattr(r, field) is None:
                    upd[field] = str(v)
        if r.trace_id is None and tid is not None:
            upd["trace_id"] = tid
        if r.span_id is None and sid is not None:
            upd["span_id"] = sid
        if time_ns and r.ts <= 0:
            upd["ts"] = time_ns / 1e9
        cur = r._replace(**upd) if upd else r
        if inbound:
            # The resource is the callee (a server-side log).
            if res.cluster and cur.dst_cluster is None:
                upd["dst_cluster"] = res.cluster
            if res.namespace and cur.dst_namespace is None:
                upd["dst_namespace"] = res.namespace
            if res.service and cur.dst_service is None:
                upd["dst_service"] = res.service
        else:
            if res.cluster and cur.src_cluster is None:
                upd["src_cluster"] = res.cluster
            if res.namespace and cur.src_namespace is None:
                upd["src_namespace"] = res.namespace
            wl = res.workload or res.service
            if wl and cur.src_workload is None:
                upd["src_workload"] = wl
        out.append(r._replace(**upd) if upd else r)


def _is_inbound(body: Any, attrs: Attrs) -> bool:
    """Whether the proxy that logged this was the callee's; unknown counts as inbound.

    Istio names Envoy clusters ``inbound|…`` / ``outbound|…``; when neither appears we assume a
    server-side log, the one that carries the authenticated peer identity.
    """
    uc = attrs.get("upstream_cluster")
    if isinstance(body, dict):
        uc = body.get("upstream_cluster", uc)
    if isinstance(uc, str) and uc:
        return not uc.startswith("outbound")
    if isinstance(body, str):
        return "outbound|" not in body
    return True


def _logs_from_pb(
    msg: ExportLogsServiceRequest, source: str | None, offset: int | None
) -> list[FlowRecord]:
    out: list[FlowRecord] = []
    problems: list[str] = []
    for rl in msg.resource_logs:
        res = _Resource(_pb_attrs(rl.resource.attributes))
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                body = _pb_value(lr.body) if lr.HasField("body") else None
                _log_records(
                    res, body, _pb_attrs(lr.attributes),
                    lr.time_unix_nano or lr.observed_time_unix_nano,
                    lr.trace_id, lr.span_id, source, offset, problems, out,
                )  # fmt: skip
    return _finish(out, problems)


def _logs_from_json(
    obj: dict[str, Any], source: str | None, offset: int | None
) -> list[FlowRecord]:
    out: list[FlowRecord] = []
    problems: list[str] = []
    for rl in _list(obj, "resourceLogs", "resource_logs"):
        if not isinstance(rl, dict):
            problems.append("bad_field")
            continue
        res = _Resource(_json_attrs(_dict(rl, "resource", "resource").get("attributes")))
        for sl in _list(rl, "scopeLogs", "scope_logs"):
            if not isinstance(sl, dict):
                problems.append("bad_field")
                continue
            for lr in _list(sl, "logRecords", "log_records"):
                if not isinstance(lr, dict):
                    problems.append("bad_field")
                    continue
                t = _int(_get(lr, "timeUnixNano", "time_unix_nano")) or _int(
                    _get(lr, "observedTimeUnixNano", "observed_time_unix_nano")
                )
                _log_records(
                    res, _json_value(lr.get("body")), _json_attrs(lr.get("attributes")), t or 0,
                    _get(lr, "traceId", "trace_id"), _get(lr, "spanId", "span_id"),
                    source, offset, problems, out,
                )  # fmt: skip
    return _finish(out, problems)


# ---------------------------------------------------------------------------------------------
# Public decoders


def _parse(cls: Callable[[], Any], data: bytes) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (_PbDecodeError, RuntimeError, ValueError, TypeError) as e:
        raise DecodeError("bad_protobuf", str(e)[:120]) from None
    return msg


def decode_proto_traces(
    data: bytes, source: str | None = None, offset: int | None = None
) -> list[FlowRecord]:
    """A serialized ``ExportTraceServiceRequest`` -> records (see the module docstring)."""
    return _traces_from_pb(_parse(ExportTraceServiceRequest, data), source, offset)


def decode_proto_logs(
    data: bytes, source: str | None = None, offset: int | None = None
) -> list[FlowRecord]:
    """A serialized ``ExportLogsServiceRequest`` -> access-log records."""
    return _logs_from_pb(_parse(ExportLogsServiceRequest, data), source, offset)


def _looks_like_traces(msg: ExportTraceServiceRequest) -> bool:
    """True when some span has a 16-byte trace id and an 8-byte span id.

    A logs message parses as traces only by accident: a LogRecord's fields 1 and 2 are a fixed64
    and a varint, so as a Span they land in unknown fields and the ids stay empty.
    """
    for rs in msg.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                if len(sp.trace_id) == 16 and len(sp.span_id) == 8:
                    return True
    return False


def decode_proto(
    data: bytes, source: str | None = None, offset: int | None = None
) -> list[FlowRecord]:
    """One OTLP protobuf message that is either a traces or a logs export request."""
    traces: ExportTraceServiceRequest | None
    try:
        traces = _parse(ExportTraceServiceRequest, data)
    except DecodeError:
        traces = None
    if traces is not None and _looks_like_traces(traces):
        return _traces_from_pb(traces, source, offset)
    try:
        logs = _parse(ExportLogsServiceRequest, data)
    except DecodeError:
        if traces is None:
            raise
        return _traces_from_pb(traces, source, offset)
    return _logs_from_pb(logs, source, offset)


def decode_json(
    data: bytes, source: str | None = None, offset: int | None = None
) -> list[FlowRecord]:
    """OTLP/JSON logs or traces, told apart by the top key (``resourceLogs``/``resourceSpans``)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DecodeError("not_json") from None
    if not isinstance(obj, dict):
        raise DecodeError("not_otlp")
    if "resourceSpans" in obj or "resource_spans" in obj:
        return _traces_from_json(obj, source, offset)
    if "resourceLogs" in obj or "resource_logs" in obj:
        return _logs_from_json(obj, source, offset)
    raise DecodeError("not_otlp")
