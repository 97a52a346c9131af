"""Rendering simulated events in the formats the real systems write, and ``write_files``.

Contract:
* Every function returns one unit (``bytes``, no trailing newline) exactly as the real system
  writes it; decoders are tested against these and against real fixtures alike.
* Istio/Envoy access logs (server-side, inbound lines; the client-side line only for mTLS
  failures, which only the caller's proxy sees): the 24 keys of Istio's default JSON format
  (``EnvoyJSONLogFormatIstio``, Istio >= 1.9, typed values with ``null`` for unset) followed by
  four custom keys a mesh operator adds for identity (Telemetry API / meshConfig
  ``accessLogFormat``): ``downstream_peer_uri_san`` (%DOWNSTREAM_PEER_URI_SAN%, the caller's
  SPIFFE id on inbound lines), ``upstream_peer_uri_san`` (%UPSTREAM_PEER_URI_SAN%),
  ``source_cluster`` and ``destination_cluster`` (Istio peer-metadata labels). The text form is
  Istio's >= 1.9 default text format, rendered from the same fields (so it has no identity).
* ``envoy_fields`` is the reference rendering; the fast path in ``traffic`` uses templates made
  from it (``fast_template``), so both agree byte for byte.
* Kubernetes audit events are ``audit.k8s.io/v1`` ``Event`` objects at level Metadata; Hubble
  flows are ``{"flow": …, "node_name": "<cluster>/<node>", "time": …}``; OTLP traces are a
  serialized ``ExportTraceServiceRequest`` holding the client and the server span of one hop.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, cast

import orjson

from detector.simulation.topology import ApiAction, ApiClient, Edge, Route, Workload

ISTIO_JSON_KEYS: Final = (
    "start_time", "method", "path", "protocol", "response_code", "response_flags",
    "response_code_details", "connection_termination_details",
    "upstream_transport_failure_reason", "bytes_received", "bytes_sent", "duration",
    "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority",
    "upstream_host", "upstream_cluster", "upstream_local_address", "downstream_local_address",
    "downstream_remote_address", "requested_server_name", "route_name",
)  # fmt: skip
CUSTOM_KEYS: Final = (
    "downstream_peer_uri_san", "upstream_peer_uri_san", "source_cluster", "destination_cluster",
)  # fmt: skip

TLS_REASON: Final = "TLS_error:_268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
_UF_BODY: Final = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
_TLS_BODY: Final = (
    "upstream connect error or disconnect/reset before headers. retried and the latest reset "
    "reason: remote connection failure, transport failure reason: " + TLS_REASON
)


@dataclass(slots=True)
class Req:
    """Per-request values of one access-log line (strings already rendered)."""

    start: str  # "2024-05-06T10:11:12.345Z"
    path: str
    code: int
    bytes_in: int
    bytes_out: int
    duration: int
    ust: int | None  # upstream service time (ms); None when no upstream answered
    xff: str | None
    request_id: str
    dst_ip: str
    local_port: int  # inbound passthrough: the sidecar connects to the app from 127.0.0.6:<p>
    src_ip: str
    src_port: int
    flags: str = "-"
    details: str = "via_upstream"


def authority(e: Edge) -> str:
    d = e.dst
    if e.xff:
        return "shop.example.com" if d.name != "bff-mobile" else "m.shop.example.com"
    if d.namespace == e.src.namespace and d.cluster == e.src.cluster:
        return f"{d.name}:{d.svc.port}"
    return f"{d.name}.{d.namespace}.svc.cluster.local:{d.svc.port}"


def fqdn(w: Workload) -> str:
    return f"{w.name}.{w.namespace}.svc.cluster.local"


def service_vip(w: Workload) -> str:
    # ClusterIPs come from a per-cluster service range, 172.{20+i}.0.0/16.
    h = sum(map(ord, w.key))
    base = {"prod-eu": 20, "prod-us": 21}.get(w.cluster, 22)
    return f"172.{base}.{h % 251}.{(h * 7) % 249 + 2}"


def route_path(route: Route | None, ident: int) -> str:
    if route is None:
        return "/"
    return route.template.replace("{id}", str(ident))


def envoy_fields(e: Edge, route: Route | None, r: Req) -> dict[str, Any]:
    """The inbound (server-side) access-log fields of one request, in Istio's key order."""
    d = e.dst
    port = d.svc.port
    grpc = d.svc.grpc
    nr = r.flags == "NR"  # TLS handshake never happened: no HTTP fields, no peer identity
    upstream_ok = r.ust is not None or r.details == "via_upstream"
    local_reply = r.details.startswith(("rbac_", "jwt_authn"))
    return {
        "start_time": r.start,
        "method": None if nr else (route.method if route else "GET"),
        "path": None if nr else r.path,
        "protocol": None if nr else ("HTTP/2" if grpc else "HTTP/1.1"),
        "response_code": r.code,
        "response_flags": r.flags,
        "response_code_details": r.details,
        "connection_termination_details": None,
        "upstream_transport_failure_reason": None,
        "bytes_received": r.bytes_in,
        "bytes_sent": r.bytes_out,
        "duration": r.duration,
        "upstream_service_time": None if r.ust is None else str(r.ust),
        "x_forwarded_for": r.xff,
        "user_agent": None if nr else (e.src.svc.user_agent if not e.xff else _BROWSER),
        "request_id": None if nr else r.request_id,
        "authority": None if nr else authority(e),
        "upstream_host": (f"{r.dst_ip}:{port}" if upstream_ok or not local_reply else None)
        if not nr
        else None,
        "upstream_cluster": None if nr else f"inbound|{port}||",
        "upstream_local_address": f"127.0.0.6:{r.local_port}" if upstream_ok and not nr else None,
        "downstream_local_address": f"{r.dst_ip}:{port}",
        "downstream_remote_address": f"{r.src_ip}:{r.src_port}",
        "requested_server_name": None if nr else f"outbound_.{port}_._.{fqdn(d)}",
        "route_name": None if nr else "default",
        "downstream_peer_uri_san": None if nr else e.src.principal,
        "upstream_peer_uri_san": None,  # inbound: the upstream is the local app, plaintext
        "source_cluster": None if nr else (e.src_cluster_label or e.src.cluster),
        "destination_cluster": d.cluster,
    }


def envoy_outbound_tls_fields(e: Edge, route: Route | None, r: Req) -> dict[str, Any]:
    """The client-side line of a request whose mTLS handshake to the server failed."""
    d = e.dst
    port = d.svc.port
    return {
        "start_time": r.start,
        "method": route.method if route else "GET",
        "path": r.path,
        "protocol": "HTTP/2" if d.svc.grpc else "HTTP/1.1",
        "response_code": 503,
        "response_flags": "UF,URX",
        "response_code_details": "upstream_reset_before_response_started"
        f"{{remote_connection_failure,{TLS_REASON}}}",
        "connection_termination_details": None,
        "upstream_transport_failure_reason": TLS_REASON,
        "bytes_received": 0,
        "bytes_sent": len(_TLS_BODY),
        "duration": r.duration,
        "upstream_service_time": None,
        "x_forwarded_for": None,
        "user_agent": e.src.svc.user_agent,
        "request_id": r.request_id,
        "authority": authority(e),
        "upstream_host": f"{r.dst_ip}:{port}",
        "upstream_cluster": f"outbound|{port}||{fqdn(d)}",
        "upstream_local_address": None,
        "downstream_local_address": f"{service_vip(d)}:{port}",
        "downstream_remote_address": f"{r.src_ip}:{r.src_port}",
        "requested_server_name": None,
        "route_name": "default",
        "downstream_peer_uri_san": None,  # the app talks plaintext to its own sidecar
        "upstream_peer_uri_san": None,  # handshake failed: no peer certificate
        "source_cluster": e.src_cluster_label or e.src.cluster,
        "destination_cluster": d.cluster,
    }


_BROWSER: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


def _t(v: object) -> str:
    return "-" if v is None else str(v)


def text_from_fields(f: dict[str, Any]) -> str:
    """Istio's >= 1.9 default text format (``EnvoyTextLogFormat``) from the same fields."""
    return (
        f'[{f["start_time"]}] "{_t(f["method"])} {_t(f["path"])} {_t(f["protocol"])}" '
        f"{f['response_code']} {f['response_flags']} {_t(f['response_code_details'])} "
        f"{_t(f['connection_termination_details'])} "
        f'"{_t(f["upstream_transport_failure_reason"])}" {f["bytes_received"]} '
        f"{f['bytes_sent']} {f['duration']} {_t(f['upstream_service_time'])} "
        f'"{_t(f["x_forwarded_for"])}" "{_t(f["user_agent"])}" "{_t(f["request_id"])}" '
        f'"{_t(f["authority"])}" "{_t(f["upstream_host"])}" {_t(f["upstream_cluster"])} '
        f"{_t(f['upstream_local_address'])} {_t(f['downstream_local_address'])} "
        f"{_t(f['downstream_remote_address'])} {_t(f['requested_server_name'])} "
        f"{_t(f['route_name'])}"
    )


def render_fields(fields: dict[str, Any], fmt: str) -> bytes:
    if fmt == "envoy_text":
        return text_from_fields(fields).encode()
    return orjson.dumps(fields)


# Fast path: one %-template per (edge, route, format). Arguments, in this order:
# start, [id], code, bytes_in, bytes_out, duration, ust, xff fragment, request_id, dst_ip,
# local_port, dst_ip, src_ip, src_port.
FAST_ARGS: Final = ("T", "I", "C", "BI", "BO", "D", "U", "X", "R", "H", "L", "H", "SI", "SP")
_SENT = re.compile(r"@@([A-Z]+)@@")
_JSON_INT: Final = ("C", "BI", "BO", "D")  # bare numbers in JSON; the rest sit inside strings


def fast_template(e: Edge, route: Route | None, fmt: str) -> tuple[str, bool]:
    """A %-template for ok/app-error lines of ``e``/``route``; returns (template, has_id)."""
    path = route.template.replace("{id}", "@@I@@") if route else "/"
    req = Req("@@T@@", path, 0, 0, 0, 0, 0, "@@X@@", "@@R@@", "@@H@@", 0, "@@SI@@", 0)
    f = envoy_fields(e, route, req)
    f["response_code"] = "@@C@@"
    f["bytes_received"] = "@@BI@@"
    f["bytes_sent"] = "@@BO@@"
    f["duration"] = "@@D@@"
    f["upstream_service_time"] = "@@U@@"
    f["upstream_local_address"] = "127.0.0.6:@@L@@"
    f["downstream_remote_address"] = "@@SI@@:@@SP@@"
    s = render_fields(f, fmt).decode()
    s = s.replace("%", "%%")
    s = s.replace('"@@X@@"', "@@X@@")  # xff is passed as a ready fragment: null / "-" / "ip"
    if fmt != "envoy_text":
        for k in _JSON_INT:
            s = s.replace(f'"@@{k}@@"', f"@@{k}@@")
    order = _SENT.findall(s)
    has_id = "I" in order
    expect = [a for a in FAST_ARGS if has_id or a != "I"]
    if order != expect:  # a route or name containing a sentinel-like text would break this
        raise AssertionError(f"template arguments {order} != {expect}")
    return _SENT.sub("%s", s), has_id


def xff_fragment(xff: str | None, fmt: str) -> str:
    if xff is None:
        return '"-"' if fmt == "envoy_text" else "null"
    return f'"{xff}"'


# Kubernetes audit events.

_VERB_METHOD: Final = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST",
                       "update": "PUT", "patch": "PATCH", "delete": "DELETE"}  # fmt: skip


def request_uri(a: ApiAction) -> str:
    base = f"/apis/{a.group}/v1" if a.group else "/api/v1"
    ns = f"/namespaces/{a.namespace}" if a.namespace else ""
    name = f"/{a.name}" if a.name else ""
    q = "?limit=500" if a.verb == "list" else ""
    return f"{base}{ns}/{a.resource}{name}{q}"


def audit_event(
    c: ApiClient, a: ApiAction, start: str, end: str, audit_id: str, outcome: str
) -> bytes:
    """One audit.k8s.io/v1 Event; outcome is ``allow``, ``forbid`` or ``unauth``."""
    ev: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "requestURI": request_uri(a),
        "verb": a.verb,
    }
    if outcome == "unauth":
        # Failed authentication is audited by the authn filter before the request is resolved:
        # stage ResponseStarted, no user, no objectRef.
        ev["stage"] = "ResponseStarted"
        ev["user"] = {}
        ev["sourceIPs"] = [c.ip]
        ev["userAgent"] = c.user_agent
        ev["responseStatus"] = {
            "metadata": {},
            "status": "Failure",
            "message": "Authentication failed, attempted: bearer",
            "reason": "Unauthorized",
            "code": 401,
        }
        ev["requestReceivedTimestamp"] = start
        ev["stageTimestamp"] = start
        return orjson.dumps(ev)
    ev["user"] = {"username": c.username, "groups": list(c.groups)}
    ev["sourceIPs"] = [c.ip]
    ev["userAgent"] = c.user_agent
    obj: dict[str, Any] = {"resource": a.resource}
    if a.namespace:
        obj["namespace"] = a.namespace
    if a.name:
        obj["name"] = a.name
    if a.group:
        obj["apiGroup"] = a.group
    obj["apiVersion"] = "v1"
    ev["objectRef"] = obj
    if outcome == "forbid":
        where = f' in the namespace "{a.namespace}"' if a.namespace else " at the cluster scope"
        ev["responseStatus"] = {
            "metadata": {},
            "status": "Failure",
            "message": f'{a.resource} is forbidden: User "{c.username}" cannot {a.verb} '
            f'resource "{a.resource}" in API group "{a.group}"{where}',
            "reason": "Forbidden",
            "details": {"kind": a.resource},
            "code": 403,
        }
        ann = {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}
    else:
        ev["responseStatus"] = {"metadata": {}, "code": 201 if a.verb == "create" else 200}
        ann = {
            "authorization.k8s.io/decision": "allow",
            "authorization.k8s.io/reason": f'RBAC: allowed by ClusterRoleBinding "{_binding(c)}" '
            f'of ClusterRole "{_binding(c)}" to {_subject(c)}',
        }
    ev["requestReceivedTimestamp"] = start
    ev["stageTimestamp"] = end
    ev["annotations"] = ann
    return orjson.dumps(ev)


def _binding(c: ApiClient) -> str:
    return c.username.rsplit(":", 1)[-1]


def _subject(c: ApiClient) -> str:
    if c.username.startswith("system:serviceaccount:"):
        _, _, ns, name = c.username.split(":", 3)
        return f'ServiceAccount "{name}/{ns}"'
    return f'User "{c.username}"'


# Hubble.


def _endpoint(w: Workload | None, ip: str, cluster: str, ident: int) -> dict[str, Any]:
    if w is None:
        return {"identity": 2, "labels": ["reserved:world"]}
    labels = [
        f"k8s:app={w.name}",
        f"k8s:io.cilium.k8s.policy.cluster={w.cluster}",
        f"k8s:io.cilium.k8s.policy.serviceaccount={w.sa}",
        f"k8s:io.kubernetes.pod.namespace={w.namespace}",
    ]
    pod = w.pods[w.ips.index(ip)] if ip in w.ips else w.pods[0]
    return {
        "ID": 1000 + ident % 3000,
        "identity": 10000 + ident % 50000,
        "cluster_name": w.cluster,
        "namespace": w.namespace,
        "labels": labels,
        "pod_name": pod,
        "workloads": [{"name": w.name, "kind": "Deployment"}],
    }


def hubble_flow(
    e: Edge, time_ns: str, src_ip: str, src_port: int, dst_ip: str, dropped: bool
) -> bytes:
    """An L3/L4 ingress flow of the request's connection, observed on the server's node."""
    node = f"{e.dst.cluster}/{e.dst.cluster}-worker-{sum(map(ord, dst_ip)) % 6}"
    flow: dict[str, Any] = {
        "time": time_ns,
        "verdict": "DROPPED" if dropped else "FORWARDED",
        "IP": {"source": src_ip, "destination": dst_ip, "ipVersion": "IPv4"},
        "l4": {"TCP": {"source_port": src_port, "destination_port": e.dst.svc.port,
                       "flags": {"SYN": True}}},
        "source": _endpoint(e.src, src_ip, e.src.cluster, sum(map(ord, e.src.key))),
        "destination": _endpoint(e.dst, dst_ip, e.dst.cluster, sum(map(ord, e.dst.key))),
        "Type": "L3_L4",
        "node_name": node,
        "event_type": {"type": 1 if dropped else 4},
        "traffic_direction": "INGRESS",
    }  # fmt: skip
    if dropped:
        flow["drop_reason"] = 133
        flow["drop_reason_desc"] = "POLICY_DENIED"
    else:
        flow["trace_observation_point"] = "TO_ENDPOINT"
        flow["is_reply"] = False
    flow["Summary"] = "TCP Flags: SYN"
    return orjson.dumps({"flow": flow, "node_name": node, "time": time_ns})


# OTLP traces.


def otlp_trace(
    e: Edge, route: Route | None, path: str, code: int, start_ns: int, dur_ns: int,
    trace_id: bytes, client_span: bytes, server_span: bytes, dst_ip: str,
) -> bytes:  # fmt: skip
    """An ExportTraceServiceRequest with the client span (caller) and server span (callee)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    def kv(k: str, v: str | int) -> KeyValue:
        if isinstance(v, int):
            return KeyValue(key=k, value=AnyValue(int_value=v))
        return KeyValue(key=k, value=AnyValue(string_value=v))

    def res(w: Workload) -> Resource:
        return Resource(attributes=[
            kv("service.name", w.name), kv("k8s.namespace.name", w.namespace),
            kv("k8s.cluster.name", w.cluster), kv("k8s.pod.name", w.pods[0]),
            kv("k8s.deployment.name", w.name),
        ])  # fmt: skip

    method = route.method if route else "GET"
    name = f"{e.dst.name}.{e.dst.namespace}.svc.cluster.local:{e.dst.svc.port}/*"
    status = Status(code=Status.STATUS_CODE_ERROR if code >= 500 else Status.STATUS_CODE_UNSET)
    common = [
        kv("http.method", method), kv("http.url", f"http://{authority(e)}{path}"),
        kv("http.status_code", code), kv("upstream_cluster",
                                          f"outbound|{e.dst.svc.port}||{fqdn(e.dst)}"),
    ]  # fmt: skip
    client = Span(
        trace_id=trace_id, span_id=client_span, name=name, kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + dur_ns + 400_000,
        attributes=[*common, kv("istio.cluster_id", e.src.cluster),
                    kv("peer.address", dst_ip)], status=status,
    )  # fmt: skip
    server = Span(
        trace_id=trace_id, span_id=server_span, parent_span_id=client_span, name=name,
        kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=start_ns + 200_000,
        end_time_unix_nano=start_ns + 200_000 + dur_ns,
        attributes=[*common, kv("istio.cluster_id", e.dst.cluster)], status=status,
    )  # fmt: skip
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

    req = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=res(e.src), scope_spans=[
            ScopeSpans(scope=InstrumentationScope(name="envoy"), spans=[client])]),
        ResourceSpans(resource=res(e.dst), scope_spans=[
            ScopeSpans(scope=InstrumentationScope(name="envoy"), spans=[server])]),
    ])  # fmt: skip
    return bytes(req.SerializeToString())


# Files.

EXTENSIONS: Final = {
    "envoy_json": ".jsonl", "envoy_text": ".log", "k8s_audit": ".jsonl", "hubble": ".jsonl",
    "otlp_proto_traces": ".otlp.b64",
}  # fmt: skip


def write_files(
    out_dir: str | Path,
    *,
    train_start: float,
    train_s: float = 86_400.0,
    test_s: float = 43_200.0,
    seed: int = 7,
    scenarios: Sequence[Any] | None = None,
    gz: bool = False,
    formats: Iterable[str] = ("envoy_json", "envoy_text", "k8s_audit"),
    **options: Any,
) -> dict[str, Any]:
    """Write a training span and a test span (with scenarios) as one file per cluster+format.

    Layout: ``out_dir/{train,test}/<cluster>.<fmt><ext>[.gz]`` and ``out_dir/test/labels.jsonl``
    (when scenarios are on; ``None`` means ``default_scenarios`` for the test span, ``[]`` none).
    OTLP protobuf units are binary, so they are written one base64 line each (``.otlp.b64``).
    Returns a manifest (paths, record counts per file, spans), also written as ``manifest.json``.
    """
    import base64

    from detector.simulation.scenarios import default_scenarios, labels_jsonl
    from detector.simulation.traffic import SimOptions, Simulator

    out = Path(out_dir)
    test_start = train_start + train_s
    if scenarios is None:
        scenarios = default_scenarios(test_start, test_s)
    fmts = tuple(formats)
    manifest: dict[str, Any] = {"seed": seed, "formats": list(fmts), "spans": {}, "files": {}}
    for span, start, end, scen in (
        ("train", train_start, test_start, ()),
        ("test", test_start, test_start + test_s, tuple(scenarios)),
    ):
        d = out / span
        d.mkdir(parents=True, exist_ok=True)
        sim = Simulator(SimOptions(seed=seed, formats=fmts, scenarios=scen, **options))
        handles: dict[tuple[str, str], IO[bytes]] = {}
        paths: dict[tuple[str, str], str] = {}
        counts: dict[str, int] = {}
        try:
            for fmt, cluster, _ts, unit in sim.records(start, end):
                fh = handles.get((cluster, fmt))
                if fh is None:
                    path = d / f"{cluster}.{fmt}{EXTENSIONS.get(fmt, '.log')}"
                    if gz:
                        path = path.with_name(path.name + ".gz")
                        fh = cast(IO[bytes], gzip.open(path, "wb", compresslevel=3))  # noqa: SIM115
                    else:
                        fh = open(path, "wb")  # noqa: SIM115 - closed in finally
                    handles[(cluster, fmt)] = fh
                    paths[(cluster, fmt)] = str(path)
                    counts[str(path)] = 0
                if fmt.startswith("otlp_proto"):
                    unit = base64.b64encode(unit)
                fh.write(unit)
                fh.write(b"\n")
                counts[paths[(cluster, fmt)]] += 1
        finally:
            for fh in handles.values():
                fh.close()
        manifest["spans"][span] = {"start": start, "end": end}
        manifest["files"].update(counts)
        if scen:
            (d / "labels.jsonl").write_bytes(labels_jsonl(scen))
            manifest["labels"] = str(d / "labels.jsonl")
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest
