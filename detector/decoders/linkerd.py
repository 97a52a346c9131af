"""Linkerd proxy HTTP access logs (``config.linkerd.io/access-log: json | apache``).

Contract (see ``detector.decoders``): ``decode(data, source, offset)`` turns one access-log line,
JSON or the apache-like text form, into a one-element list of ``FlowRecord``; anything else raises
``DecodeError`` (``not_access_log``, ``not_json``, ``not_object``, ``bad_timestamp``) and nothing
else is ever raised.

Shapes (Linkerd logs requests on the proxy's inbound side, so the caller is the client):

* JSON: ``{"client.addr": "10.42.0.70:32996", "client.id": "<sa>.<ns>.serviceaccount.identity.
  linkerd.<td>", "host": "webapp:7000", "method": "GET", "uri": "http://webapp:7000/",
  "status": 200, "timestamp": "...Z", "total_ns": "14441135", "request_bytes": "",
  "response_bytes": "19627", "trace_id": "", ...}``. ``*_ns``/``*_bytes`` are strings, empty when
  unknown; ``client.id`` is ``-`` or empty for a caller without mesh identity.
* text: ``<client.addr> <client.id> - [<timestamp>] "<method> <uri> <version>" <status>`` (an
  optional trailing response size is read when present).

Mapping: ``src_principal`` is ``client.id`` as given, and ``src_namespace`` the ``<ns>`` in it;
``src_ip`` from ``client.addr``; ``dst_service``/``dst_port`` (and the namespace of a
``*.svc.cluster.local`` host) from ``host``, else from an absolute ``uri``; ``route`` is the
path of ``uri`` without scheme, authority or query; ``duration_ms`` from ``total_ns``;
``bytes_in``/``bytes_out`` from ``request_bytes``/``response_bytes``; ``trace_id`` as lower-case
hex. ``outcome`` via ``envoy.classify_auth`` (403 -> denied, 401 -> unauthenticated) and such
records have kind ``auth_failure``, as for Envoy.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from detector.decoders.envoy import classify_auth, hex_id, ip_of, parse_ts, split_host
from detector.errors import DecodeError
from detector.records import AUTH_FAILURE, DENIED, REQUEST, UNAUTHENTICATED, FlowRecord

_LINKERD_ID: Final = ".serviceaccount.identity.linkerd."

_TEXT = re.compile(
    r'(?P<addr>\S+) (?P<id>\S+) \S+ \[(?P<ts>[^\]]+)\] "(?P<req>[^"]*)" (?P<status>\d{1,3}|-)'
    r"(?: (?P<bytes>\d+|-))?\s*$"
)


def identity_namespace(identity: str | None) -> str | None:
    """``<sa>.<ns>.serviceaccount.identity.linkerd.<td>`` -> ``<ns>``; None otherwise."""
    if identity is None:
        return None
    i = identity.find(_LINKERD_ID)
    if i <= 0:
        return None
    sa_ns = identity[:i]
    _, dot, ns = sa_ns.rpartition(".")
    return ns if dot and ns else None


def _s(v: Any) -> str | None:
    if v is None or v == "-" or v == "" or not isinstance(v, str | int):
        return None
    return v if isinstance(v, str) else str(v)


def _i(v: Any) -> int | None:
    if type(v) is int:
        return v if v >= 0 else None
    if isinstance(v, str) and v.isdigit() and v.isascii() and len(v) < 19:
        return int(v)
    return None


def _path_of(uri: str | None) -> tuple[str | None, str | None]:
    """(authority, path without query) of a request target, absolute or origin form."""
    if uri is None:
        return None, None
    authority = None
    if "://" in uri:
        rest = uri.split("://", 1)[1]
        slash = rest.find("/")
        authority, uri = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    q = uri.find("?")
    if q >= 0:
        uri = uri[:q]
    return authority or None, uri or None


def _record(
    ts_s: Any,
    client_addr: str | None,
    client_id: str | None,
    host: str | None,
    method: str | None,
    uri: str | None,
    status: int | None,
    req_bytes: int | None,
    resp_bytes: int | None,
    total_ns: int | None,
    trace: str | None,
    source: str | None,
    offset: int | None,
) -> FlowRecord:
    if not isinstance(ts_s, str):
        raise DecodeError("bad_timestamp")
    try:
        ts = parse_ts(ts_s)
    except ValueError:
        raise DecodeError("bad_timestamp") from None
    uri_authority, route = _path_of(uri)
    svc, ns, port = split_host(host or uri_authority)
    outcome = classify_auth(status)
    return FlowRecord(
        ts,
        AUTH_FAILURE if outcome in (DENIED, UNAUTHENTICATED) else REQUEST,
        src_principal=client_id,
        src_namespace=identity_namespace(client_id),
        src_ip=ip_of(client_addr),
        dst_namespace=ns,
        dst_service=svc,
        dst_port=port,
        method=method,
        route=route,
        status=status,
        outcome=outcome,
        bytes_in=req_bytes or 0,
        bytes_out=resp_bytes or 0,
        duration_ms=total_ns / 1e6 if total_ns is not None else None,
        trace_id=hex_id(trace),
        source=source,
        offset=offset,
    )


def decode(data: bytes, source: str | None = None, offset: int | None = None) -> list[FlowRecord]:
    """One Linkerd access-log line (JSON or apache-like text) -> one record."""
    if data[:1] == b"{":
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise DecodeError("not_json") from None
        if type(obj) is not dict:
            raise DecodeError("not_object")
        g = obj.get
        if "timestamp" not in obj or ("client.addr" not in obj and "uri" not in obj):
            raise DecodeError("not_access_log")
        return [
            _record(
                g("timestamp"),
                _s(g("client.addr")),
                _s(g("client.id")),
                _s(g("host")),
                _s(g("method")),
                _s(g("uri")),
                _i(g("status")),
                _i(g("request_bytes")),
                _i(g("response_bytes")),
                _i(g("total_ns")),
                _s(g("trace_id")),
                source,
                offset,
            )
        ]
    m = _TEXT.match(data.decode("utf-8", "replace").rstrip("\r\n"))
    if m is None:
        raise DecodeError("not_access_log")
    parts = m["req"].split(" ")
    method = parts[0] if parts[0] not in ("", "-") else None
    uri = parts[1] if len(parts) > 1 and parts[1] not in ("", "-") else None
    return [
        _record(
            m["ts"],
            _s(m["addr"]),
            _s(m["id"]),
            None,
            method,
            uri,
            _i(m["status"]),
            None,
            _i(m["bytes"]),
            None,
            None,
            source,
            offset,
        )
    ]
