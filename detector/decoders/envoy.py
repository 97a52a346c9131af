"""Envoy and Istio access-log decoders: text (Envoy default, three Istio generations) and JSON.

Contract (see ``detector.decoders``): ``decode_text(data, source, offset)`` and
``decode_json(data, source, offset)`` turn one access-log line into a one-element list of
``FlowRecord``; anything else raises ``DecodeError`` with a bounded reason
(``not_access_log``, ``unknown_layout``, ``not_json``, ``not_object``, ``bad_timestamp``).
They never raise anything else, on any bytes.

Text layouts, tried most specific first because one regex does not fit all:

* Istio >= 1.9: ``... %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%
  %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% ...
  %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%
  %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%``
* Istio 1.3-1.8: ``... %RESPONSE_FLAGS% "%DYNAMIC_METADATA(istio.mixer:status)%"
  "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% ...`` (same tail; ``%ROUTE_NAME%`` is
  optional because early 1.x releases did not log it)
* Istio 1.1-1.2: ``... %RESPONSE_FLAGS% "%DYNAMIC_METADATA(istio.mixer:status)%"
  %BYTES_RECEIVED% ...`` with the five-field tail (no route name)
* Envoy default: ``[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
  %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
  %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
  "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`` (anything after it is ignored)

JSON: any object with ``start_time`` (Istio's 24 default keys, Envoy command-operator names in
lower case, Istio telemetry label names, custom keys are ignored). Values may be typed (numbers,
``null``) or all strings (``"0"``, ``"-"``); ``-``, ``""`` and ``null`` all mean unknown.

Mapping (both encodings):

* ``ts`` from ``start_time`` (ISO-8601, UTC); ``route`` is the path without its query string.
* Direction comes from ``upstream_cluster``: ``outbound|<port>|<subset>|<fqdn>`` is a call FROM
  the workload whose proxy logged it (the destination is the FQDN); ``inbound|<port>|...`` is a
  call INTO it (the destination is named by the inbound cluster's host in old Istio, else by the
  SNI ``outbound_.<port>_.<subset>_.<fqdn>`` the caller used, else by the authority).
  Other clusters (``PassthroughCluster`` ...) use the authority, then the SNI.
* ``src_ip`` is the IP of ``downstream_remote_address``: the local app on outbound lines, the peer
  on inbound lines, so in both cases the caller. Without it (Envoy default format), the last
  ``X-Forwarded-For`` hop, which Envoy appends as the peer it saw.
* ``src_principal``: ``source_principal``, else ``downstream_peer_uri_san`` (the caller's
  certificate: a peer sidecar on inbound, a client on a gateway), else ``upstream_local_uri_san``
  on outbound lines, else the ``URI=`` of ``x_forwarded_client_cert``. A SPIFFE principal
  ``spiffe://<td>/ns/<ns>/sa/<sa>`` also names ``src_namespace``.
* ``kind``: ``connection`` for TCP lines (no method and no protocol), ``auth_failure`` when the
  outcome is ``denied``/``unauthenticated``, else ``request``. ``outcome`` from ``classify_auth``.
* ``detail``: ``response_code_details`` (else connection termination details, else the flags).
"""

from __future__ import annotations

import math
import re
from calendar import timegm
from typing import Any, Final

import orjson

from detector.errors import DecodeError
from detector.records import (
    AUTH_FAILURE,
    CONNECTION,
    DENIED,
    ERROR,
    OK,
    REQUEST,
    UNAUTHENTICATED,
    FlowRecord,
    outcome_for_status,
)

INBOUND: Final = "inbound"
_new_record = tuple.__new__
OUTBOUND: Final = "outbound"

# ---------------------------------------------------------------------------------------------
# Auth-failure classification (shared with the other decoders)

# Flags that mean an L4 connection failed; TCP lines log response code 0 even when all went well,
# so for connections the flags, not the status, say whether it was an error.
_CONN_ERROR_FLAGS: Final = frozenset(
    [
        "UH",
        "UF",
        "UO",
        "NR",
        "URX",
        "NC",
        "UT",
        "LH",
        "UMSDR",
        "SI",
        "OM",
        "DF",
        "DO",
        "UPE",
        "NFCF",
    ]
)


def _has_flag(flags: str | None, flag: str) -> bool:
    return flags is not None and flag in flags and flag in flags.split(",")


def classify_auth(
    status: int | None,
    flags: str | None = None,
    details: str | None = None,
    failure_reason: str | None = None,
) -> str:
    """The outcome of one proxied request or connection (DESIGN.md §4).

    Auth failures are told by the response-code details, not by the flags (a 403 with ``-``
    details is an app's own 403 and still ``denied`` by status):

    * ``rbac_access_denied_matched_policy[...]`` (HTTP 403, or a TCP RBAC close) -> ``denied``
    * ``jwt_authn_access_denied{...}`` (401) -> ``unauthenticated``
    * ``...TLS_error...`` in the details (or a TLS/certificate ``failure_reason``) with flag ``UF``
      -> ``unauthenticated`` (the client side of a failed mTLS handshake)
    * ``filter_chain_not_found`` with flag ``NR`` -> ``unauthenticated`` (plaintext to STRICT)
    * flag ``UAEX`` (ext_authz said no) -> ``denied``

    Otherwise ``outcome_for_status(status)``. ``details`` may be the connection termination
    details for TCP lines; ``flags`` is Envoy's comma-separated short form or None.
    """
    if details is not None and details != "via_upstream":
        if details.startswith("rbac_access_denied"):
            return DENIED
        if details.startswith("jwt_authn_access_denied") or details.startswith("jwt_"):
            return UNAUTHENTICATED
        if details.startswith("ext_authz_denied"):
            return DENIED
        if "filter_chain_not_found" in details and _has_flag(flags, "NR"):
            return UNAUTHENTICATED
        if ("TLS_error" in details or "tls_error" in details) and _has_flag(flags, "UF"):
            return UNAUTHENTICATED
    if flags is not None:
        if _has_flag(flags, "UAEX"):
            return DENIED
        if (
            failure_reason is not None
            and _has_flag(flags, "UF")
            and ("TLS" in failure_reason or "CERTIFICATE" in failure_reason)
        ):
            return UNAUTHENTICATED
    return outcome_for_status(status)


def _connection_outcome(flags: str | None, details: str | None, reason: str | None) -> str:
    """Outcome of a TCP line: status 0 is normal there, so only auth details and flags count."""
    outcome = classify_auth(None, flags, details, reason)
    if outcome != OK or flags is None:
        return outcome
    for f in flags.split(","):
        if f in _CONN_ERROR_FLAGS:
            return ERROR
    return OK


# ---------------------------------------------------------------------------------------------
# Small parsers, cached where the input cardinality is low (clusters, hosts, second timestamps)

_CACHE_MAX: Final = 8192

_sec_cache: dict[str, float] = {}


def parse_ts(s: str) -> float:
    """ISO-8601 / RFC 3339 time -> epoch seconds (UTC). Any number of fraction digits.

    Accepts ``Z``, ``+HH:MM``/``-HH:MM`` or no zone (taken as UTC: Envoy's START_TIME is UTC)
    and a space instead of ``T``. The whole-second part is cached: lines of one second share it.
    Raises ``ValueError`` on anything else.
    """
    # Fast path, Envoy's own shape "2024-05-01T12:00:00.123Z": one cache hit, one float().
    if s[-1:] == "Z" and s[19:20] == ".":
        base = _sec_cache.get(s[:19])
        if base is not None:
            digits = s[20:-1]
            if digits.isdigit() and digits.isascii():
                return base + float("0." + digits)
    if len(s) < 19 or s[4] != "-" or s[7] != "-" or s[13] != ":" or s[16] != ":":
        raise ValueError(s)
    head = s[:19]
    rest = s[19:]
    frac = 0.0
    if rest[:1] == ".":
        i = 1
        n = len(rest)
        while i < n and "0" <= rest[i] <= "9":
            i += 1
        if i == 1:
            raise ValueError(s)
        # Nanoseconds (Linkerd, CRI) exceed a float's precision anyway; 9 digits are plenty.
        frac = int(rest[1 : min(i, 10)]) / 10 ** (min(i, 10) - 1)
        rest = rest[i:]
    if rest in ("Z", "z", "", "+00:00", "-00:00", "+0000"):
        shift = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
        hh, mm = rest[1:3], rest[4:6]
        if not (hh.isdigit() and mm.isdigit() and hh.isascii() and mm.isascii()):
            raise ValueError(s)
        shift = (int(hh) * 3600 + int(mm) * 60) * (1 if rest[0] == "+" else -1)
    else:
        raise ValueError(s)
    base = _sec_cache.get(head)
    if base is None:
        d = head
        if not (
            d[0:4].isdigit()
            and d[5:7].isdigit()
            and d[8:10].isdigit()
            and d[11:13].isdigit()
            and d[14:16].isdigit()
            and d[17:19].isdigit()
            and d.isascii()
            and d[10] in "Tt "
        ):
            raise ValueError(s)
        y, mo, da = int(d[0:4]), int(d[5:7]), int(d[8:10])
        h, mi, se = int(d[11:13]), int(d[14:16]), int(d[17:19])
        if not (1 <= mo <= 12 and 1 <= da <= 31 and h <= 23 and mi <= 59 and se <= 60):
            raise ValueError(s)
        base = float(timegm((y, mo, da, h, mi, se, 0, 0, 0)))
        if len(_sec_cache) >= _CACHE_MAX:
            _sec_cache.clear()
        _sec_cache[head] = base
    return base + frac - shift


def _ts_of(v: object) -> float:
    """``start_time`` as any encoding gives it: ISO string, or epoch s / ms / us / ns number."""
    if type(v) is str:
        try:
            return parse_ts(v)
        except ValueError:
            pass
        try:
            v = float(v)
        except ValueError:
            raise DecodeError("bad_timestamp") from None
    if isinstance(v, int | float) and not isinstance(v, bool):
        x = float(v)
        if not math.isfinite(x) or x <= 0:
            raise DecodeError("bad_timestamp")
        while x > 1e11:  # ms, us or ns since the epoch -> seconds
            x /= 1000.0
        return x
    raise DecodeError("bad_timestamp")


def ip_of(addr: str | None) -> str | None:
    """IP of ``1.2.3.4:5``, ``[a::b]:5`` or a bare IP; None for unix sockets and unknowns."""
    if addr is None:
        return None
    if addr[:1] == "[":
        end = addr.find("]")
        return addr[1:end] if end > 1 else None
    if addr.count(":") == 1:
        ip = addr.partition(":")[0]
        return ip if ip and ip != "-" else None
    if addr[:1] == "/" or "://" in addr:
        return None
    return addr


def _addr_port(addr: str | None) -> int | None:
    if addr is None:
        return None
    _, sep, port = addr.rpartition(":")
    if sep and port.isdigit() and port.isascii() and len(port) <= 5 and "]" not in port:
        if addr[:1] != "[" and addr.count(":") > 1:
            return None  # a bare IPv6 address, no port
        return int(port)
    return None


def _svc_ns(host: str) -> tuple[str, str | None]:
    """``httpbin.foo.svc.cluster.local`` -> (httpbin, foo); other hosts are kept whole."""
    i = host.find(".svc")
    if i > 0 and (len(host) == i + 4 or host[i + 4] == "."):
        name, _, ns = host[:i].partition(".")
        if name and ns and "." not in ns:  # ".foo.svc..." names no service: kept whole
            return name, ns
    return host, None


_host_cache: dict[str, tuple[str | None, str | None, int | None]] = {}


def split_host(authority: str | None) -> tuple[str | None, str | None, int | None]:
    """An authority (``host[:port]``, ``[v6]:port``) -> (service, namespace, port)."""
    if authority is None:
        return None, None, None
    hit = _host_cache.get(authority)
    if hit is not None:
        return hit
    port = _addr_port(authority)
    if authority[:1] == "[":
        host: str | None = authority[1 : authority.find("]")] or None
    elif port is not None:
        host = authority.rpartition(":")[0] or None
    else:
        host = authority
    ns = None
    if host is not None:
        host = host.rstrip(".").lower() or None
        if host is not None:
            host, ns = _svc_ns(host)
    res = (host, ns, port)
    if len(_host_cache) >= _CACHE_MAX:
        _host_cache.clear()
    _host_cache[authority] = res
    return res


_ClusterInfo = tuple[str | None, int | None, str | None, str | None]
_cluster_cache: dict[str, _ClusterInfo] = {}


def parse_upstream_cluster(cluster: str | None) -> _ClusterInfo:
    """Istio cluster name -> (direction, port, service, namespace).

    ``outbound|8000||httpbin.foo.svc.cluster.local`` -> ("outbound", 8000, "httpbin", "foo");
    ``inbound|8000|http|httpbin.default.svc.cluster.local`` -> ("inbound", 8000, "httpbin",
    "default"); ``inbound|8000||`` -> ("inbound", 8000, None, None); other names (Envoy
    clusters, ``PassthroughCluster``) -> (None, None, None, None).
    """
    if cluster is None:
        return None, None, None, None
    hit = _cluster_cache.get(cluster)
    if hit is not None:
        return hit
    parts = cluster.split("|")
    res: _ClusterInfo = (None, None, None, None)
    if len(parts) == 4 and parts[0] in (INBOUND, OUTBOUND):
        p = parts[1]
        port = int(p) if p.isdigit() and p.isascii() and len(p) <= 5 else None
        svc: str | None = None
        ns: str | None = None
        if parts[3] and parts[3] != "-":  # "-": Envoy's "no value"
            svc, ns = _svc_ns(parts[3].lower())
        res = (parts[0], port, svc, ns)
    if len(_cluster_cache) >= _CACHE_MAX:
        _cluster_cache.clear()
    _cluster_cache[cluster] = res
    return res


def _sni_host(sni: str | None) -> tuple[str | None, str | None, int | None]:
    """Istio mTLS SNI ``outbound_.8000_._.httpbin.foo.svc.cluster.local`` -> (svc, ns, port)."""
    if sni is None:
        return None, None, None
    if sni.startswith("outbound_.") or sni.startswith("inbound_."):
        parts = sni.split("_.", 3)
        if len(parts) == 4:
            p = parts[1]
            port = int(p) if p.isdigit() and p.isascii() and len(p) <= 5 else None
            if not parts[3] or parts[3] == "-":  # no host: no service
                return None, None, port
            svc, ns = _svc_ns(parts[3].lower())
            return svc, ns, port
        return None, None, None
    svc, ns = _svc_ns(sni.lower())
    return svc, ns, None


def spiffe_namespace(principal: str | None) -> str | None:
    """``spiffe://td/ns/<ns>/sa/<sa>`` -> ``<ns>``; None for anything else."""
    if principal is None or not principal.startswith("spiffe://"):
        return None
    parts = principal[9:].split("/")
    if len(parts) >= 3 and parts[1] == "ns" and parts[2]:
        return parts[2]
    return None


def _xfcc_uri(xfcc: str | None) -> str | None:
    """The caller's SPIFFE URI from ``x-forwarded-client-cert`` (the last, nearest element)."""
    if xfcc is None:
        return None
    last = xfcc.rsplit(",", 1)[-1]
    for kv in last.split(";"):
        k, _, v = kv.partition("=")
        if k.strip().lower() == "uri" and v:
            return v.strip().strip('"') or None
    return None


def _xff_peer(xff: str | None) -> str | None:
    """The nearest hop of ``X-Forwarded-For`` (the peer the proxy saw, when it appends)."""
    if xff is None:
        return None
    ip = xff.rpartition(",")[2].strip()
    return ip_of(ip) if ip and ip != "-" else None


def _route(path: str | None) -> str | None:
    if path is None:
        return None
    i = path.find("?")
    if i >= 0:
        path = path[:i]
    return path or None


def hex_id(v: str | None) -> str | None:
    """A trace id (hex, or a W3C ``traceparent``) as lower-case hex, else None."""
    if v is None:
        return None
    if len(v) == 55 and v[2] == "-":  # traceparent: 00-<32 hex>-<16 hex>-<2 hex>
        v = v[3:35]
    if len(v) in (16, 32):
        try:
            int(v, 16)
        except ValueError:
            return None
        v = v.lower()
        return None if v.strip("0") == "" else v
    return None


# ---------------------------------------------------------------------------------------------
# Shared record builder


_Dest = tuple[str | None, str | None, int | None, str | None]
_dest_cache: dict[tuple[str | None, str | None, str | None], _Dest] = {}
_spiffe_ns_cache: dict[str, str | None] = {}
# HTTP status -> outcome, for the statuses a proxy can log (``outcome_for_status`` otherwise).
_STATUS_OUTCOME: Final[dict[int | None, str]] = {
    st: outcome_for_status(st) for st in [None, *range(1000)]
}


def _dest(upstream_cluster: str | None, sni: str | None, authority: str | None) -> _Dest:
    """(service, namespace, port, direction) named by the cluster, SNI and authority; cached."""
    key = (upstream_cluster, sni, authority)
    hit = _dest_cache.get(key)
    if hit is not None:
        return hit
    direction, port, svc, ns = parse_upstream_cluster(upstream_cluster)
    if svc is None:
        if direction == INBOUND:
            # The inbound cluster of Istio >= 1.6 names only the port; the SNI the caller used
            # names the service it meant to reach (mTLS), the authority what the app asked for.
            s2, n2, p2 = _sni_host(sni)
            if s2 is None:
                s2, n2, p2 = split_host(authority)
        else:
            s2, n2, p2 = split_host(authority)
            if s2 is None:
                s2, n2, p2 = _sni_host(sni)
        svc, ns = s2, n2
        if port is None:
            port = p2
    res = (svc, ns, port, direction)
    if len(_dest_cache) >= _CACHE_MAX:
        _dest_cache.clear()
    _dest_cache[key] = res
    return res


def _principal_ns(principal: str) -> str | None:
    try:
        return _spiffe_ns_cache[principal]
    except KeyError:
        pass
    ns = spiffe_namespace(principal)
    if len(_spiffe_ns_cache) >= _CACHE_MAX:
        _spiffe_ns_cache.clear()
    _spiffe_ns_cache[principal] = ns
    return ns


def _build(
    ts: float,
    method: str | None,
    path: str | None,
    protocol: str | None,
    status: int | None,
    flags: str | None,
    details: str | None,
    term_details: str | None,
    failure_reason: str | None,
    bytes_in: int | None,
    bytes_out: int | None,
    duration: float | None,
    request_id: str | None,
    authority: str | None,
    upstream_cluster: str | None,
    downstream_local: str | None,
    downstream_remote: str | None,
    sni: str | None,
    principal: str | None,
    xff: str | None,
    source: str | None,
    offset: int | None,
    simple: tuple[tuple[str, int], ...] = (),
    d: dict[str, Any] | None = None,
) -> FlowRecord:
    """The record; ``simple``: (key of ``d``, field index) pairs whose string values override."""
    svc, ns, port = _dest(upstream_cluster, sni, authority)[:3]
    if port is None:
        port = _addr_port(downstream_local)
    detail = details or term_details
    if method is None and protocol is None:
        outcome = _connection_outcome(flags, detail, failure_reason)
        kind = CONNECTION
    else:
        if flags is None and (detail is None or detail == "via_upstream"):
            # the common case: skip the auth checks
            outcome = _STATUS_OUTCOME.get(status) or outcome_for_status(status)
        else:
            outcome = classify_auth(status, flags, detail, failure_reason)
        kind = REQUEST
    if outcome in (DENIED, UNAUTHENTICATED):
        kind = AUTH_FAILURE
    if downstream_remote is not None:
        # ip_of, inlined for the common "a.b.c.d:port"
        if downstream_remote.count(":") == 1 and downstream_remote[:1] != "[":
            head = downstream_remote.partition(":")[0]
            src_ip = head if head and head != "-" else None
        else:
            src_ip = ip_of(downstream_remote)
    else:
        src_ip = _xff_peer(xff)
    # tuple.__new__ skips NamedTuple's Python-level __new__ (a third of the cost); the field
    # order is FlowRecord._fields, checked by the tests.
    fields = (
        ts,
        kind,
        principal,
        None,
        _principal_ns(principal) if principal is not None else None,
        None,
        src_ip,
        None,
        ns,
        svc,
        port,
        method,
        (path.partition("?")[0] or None) if path is not None else None,
        status,
        outcome,
        bytes_in or 0,
        bytes_out or 0,
        duration,
        None,
        None,
        None,
        request_id,
        detail or flags,
        source,
        offset,
    )
    if simple and d is not None:
        # plain label keys (source_cluster ...), in ``_EXTRA_FIELDS`` order: the last one wins
        lst = list(fields)
        for key, idx in simple:
            v = d.get(key)
            if v.__class__ is not str or v == "-" or v == "":
                v = _s(v)
            if v is not None:
                lst[idx] = v
        return _new_record(FlowRecord, lst)
    return _new_record(FlowRecord, fields)


# ---------------------------------------------------------------------------------------------
# Text

_PREFIX = r'\[(?P<ts>[^\]]+)\] "(?P<req>[^"]*)" (?P<status>\d+|-) (?P<flags>[^\s"]+) '
_COMMON = (
    r'(?P<bin>\d+|-) (?P<bout>\d+|-) (?P<dur>\d+|-) (?P<ust>\S+) "(?P<xff>[^"]*)" '
    r'"(?P<ua>.*?)" "(?P<rid>[^"]*)" "(?P<auth>[^"]*)" "(?P<uhost>[^"]*)"'
)
_ISTIO_TAIL = (
    r" (?P<ucluster>\S+) (?P<ulocal>\S+) (?P<dlocal>\S+) (?P<dremote>\S+) (?P<sni>\S+)"
    r"(?: (?P<route>\S+))?\s*$"
)
_TEXT_LAYOUTS: Final = (
    # Istio >= 1.9: details and termination details are bare words (Envoy sanitises spaces).
    re.compile(
        _PREFIX
        + r'(?P<details>[^\s"]+) (?P<term>[^\s"]+) "(?P<utfr>[^"]*)" '
        + _COMMON
        + _ISTIO_TAIL
    ),
    # Istio 1.3-1.8: mixer status and upstream transport failure reason, both quoted.
    re.compile(_PREFIX + r'"(?P<mixer>[^"]*)" "(?P<utfr>[^"]*)" ' + _COMMON + _ISTIO_TAIL),
    # Istio 1.1-1.2: mixer status only.
    re.compile(_PREFIX + r'"(?P<mixer>[^"]*)" ' + _COMMON + _ISTIO_TAIL),
    # Envoy default; custom formats often append fields, which are ignored.
    re.compile(_PREFIX + _COMMON + r"(?:\s.*)?$"),
)
_LOOKS_LIKE_ACCESS_LOG = re.compile(r'\[[^\]]*\] "')


def _n(v: str | None) -> str | None:
    """Envoy writes ``-`` for unset values; an empty quoted string is unset as well."""
    return None if v is None or v == "-" or v == "" else v


def _ni(v: str | None) -> int | None:
    return int(v) if v is not None and v.isdigit() and len(v) < 19 else None


# Groups every layout is read for, in ``_build``'s order; layouts without a group yield None.
_TEXT_GROUPS: Final = (
    "flags",
    "details",
    "term",
    "utfr",
    "rid",
    "auth",
    "ucluster",
    "dlocal",
    "dremote",
    "sni",
    "xff",
)
_TEXT_LAYOUT_GROUPS: Final = tuple(
    (
        rx,
        tuple(g if g in rx.groupindex else "ts" for g in _TEXT_GROUPS),
        [g in rx.groupindex for g in _TEXT_GROUPS],
    )
    for rx in _TEXT_LAYOUTS
)


def decode_text(
    data: bytes, source: str | None = None, offset: int | None = None
) -> list[FlowRecord]:
    """One Envoy/Istio text access-log line -> one record (see the module docstring)."""
    line = data.decode("utf-8", "replace").rstrip("\r\n")
    m = None
    if line[:1] == "[":
        for layout in _TEXT_LAYOUT_GROUPS:
            m = layout[0].match(line)
            if m is not None:
                break
    if m is None:
        if _LOOKS_LIKE_ACCESS_LOG.match(line):
            raise DecodeError("unknown_layout")
        # e.g. Envoy's own application log "[2021-03-12 15:31:30.492][1][warning][runtime] ...".
        raise DecodeError("not_access_log")
    t, req, status_s, bin_s, bout_s, dur_s = m.group("ts", "req", "status", "bin", "bout", "dur")
    # Envoy writes "-" for unset values; an empty quoted string is unset as well. Groups a
    # layout does not have (``present`` False) are unset too.
    (flags, details, term, utfr, rid, auth, ucluster, dlocal, dremote, sni, xff) = [
        None if not p or v is None or v == "-" or v == "" else v
        for v, p in zip(m.group(*layout[1]), layout[2], strict=True)
    ]
    base = _sec_cache.get(t[:19]) if t[19:20] == "." and t[-1:] == "Z" else None
    digits = t[20:-1] if base is not None else None
    if digits is not None and digits.isdigit() and digits.isascii():
        ts = base + float("0." + digits)  # type: ignore[operator]
    else:
        try:
            ts = parse_ts(t)
        except ValueError:
            raise DecodeError("bad_timestamp") from None
    # "%REQ(:METHOD)% %PATH% %PROTOCOL%": "- - -" for TCP, "- - HTTP/1.1" for codec errors.
    parts = req.split(" ")
    if len(parts) == 3:
        method, path, protocol = parts
    elif len(parts) > 3:
        method, path, protocol = parts[0], " ".join(parts[1:-1]), parts[-1]
    else:
        method, path, protocol = [*parts, "-", "-"][:3]
    return [
        _build(
            ts,
            None if method == "-" or method == "" else method,
            None if path == "-" or path == "" else path,
            None if protocol == "-" or protocol == "" else protocol,
            _ni(status_s),
            flags,
            details,
            term,
            utfr,
            _ni(bin_s),
            _ni(bout_s),
            float(dur_s) if dur_s.isdigit() and len(dur_s) < 19 else None,
            rid,
            auth,
            ucluster,
            dlocal,
            dremote,
            sni,
            None,
            xff,
            source,
            offset,
        )
    ]


# ---------------------------------------------------------------------------------------------
# JSON

# Istio >= 1.9 default JSON access-log keys (``EnvoyJSONLogFormatIstio``).
ISTIO_DEFAULT_JSON_KEYS: Final = frozenset(
    {
        "start_time",
        "route_name",
        "method",
        "path",
        "protocol",
        "response_code",
        "response_flags",
        "response_code_details",
        "connection_termination_details",
        "upstream_transport_failure_reason",
        "bytes_received",
        "bytes_sent",
        "duration",
        "upstream_service_time",
        "x_forwarded_for",
        "user_agent",
        "request_id",
        "authority",
        "upstream_host",
        "upstream_cluster",
        "upstream_local_address",
        "downstream_local_address",
        "downstream_remote_address",
        "requested_server_name",
    }
)

# String-valued keys read on every record, in the order ``from_mapping`` unpacks them.
_JSON_STR_KEYS: Final = (
    "method",
    "path",
    "protocol",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "upstream_transport_failure_reason",
    "request_id",
    "authority",
    "upstream_cluster",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "source_principal",
    "downstream_peer_uri_san",
    "x_forwarded_for",
)

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _s(v: Any) -> str | None:
    """A JSON value as an optional string: ``null``, ``"-"`` and ``""`` are unknown."""
    if v is None or v == "-" or v == "":
        return None
    if type(v) is str:
        return v
    if isinstance(v, dict | list):
        return None
    return str(v)


def _i(v: Any) -> int | None:
    """A JSON value as an optional non-negative int: typed or all-strings encodings."""
    t = type(v)
    if t is int:
        return v if v >= 0 else None
    if t is str:
        return int(v) if v.isdigit() and v.isascii() and len(v) < 19 else None
    if t is float and math.isfinite(v) and v >= 0:
        return int(v)
    return None


def _f(v: Any) -> float | None:
    t = type(v)
    if t is int or (t is float and math.isfinite(v)):
        return float(v)
    if t is str and v and v != "-":
        try:
            x = float(v)
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def decode_json(
    data: bytes, source: str | None = None, offset: int | None = None
) -> list[FlowRecord]:
    """One Envoy/Istio JSON access-log object -> one record (see the module docstring)."""
    try:
        obj = _loads(data)
    except _JSONDecodeError:
        raise DecodeError("not_json") from None
    if type(obj) is not dict:
        raise DecodeError("not_object")
    return [from_mapping(obj, source, offset)]


_EXTRA_FIELDS: Final = (
    ("source_cluster", "src_cluster"),
    ("source_namespace", "src_namespace"),
    ("source_workload", "src_workload"),
    ("destination_cluster", "dst_cluster"),
    ("destination_namespace", "dst_namespace"),
    ("destination_service_namespace", "dst_namespace"),
    ("destination_service_name", "dst_service"),
)
_FIELD_INDEX: Final = {f: i for i, f in enumerate(FlowRecord._fields)}


_SIMPLE_EXTRA_KEYS: Final = frozenset(key for key, _ in _EXTRA_FIELDS)


# Keys ``_extras`` reads. An object's key layout (its keys in order: one sidecar config writes
# the same layout on every line) maps to the ones it carries, so the common layouts skip
# ``_extras`` and the rest read only what is there.
_EXTRA_KEYS: Final = frozenset(
    {
        "source_cluster",
        "source_namespace",
        "source_workload",
        "destination_cluster",
        "destination_namespace",
        "destination_service_namespace",
        "destination_service_name",
        "destination_service",
        "x_request_id",
        "destination_port",
        "pod_namespace",
        "cluster_id",
        "istio_cluster_id",
        "trace_id",
        "traceparent",
        "x_b3_traceid",
        "span_id",
        "x_b3_spanid",
    }
)
# layout -> (extra keys present when some need ``_extras``, else empty; (key, field index) of
# the plain label keys present when they are the only extras; has x_forwarded_client_cert; has
# upstream_local_uri_san)
_Layout = tuple[frozenset[str], tuple[tuple[str, int], ...], bool, bool]
_layouts: dict[tuple[str, ...], _Layout] = {}
_LAYOUTS_MAX: Final = 1024


def _layout(d: dict[str, Any]) -> _Layout:
    keys = tuple(d)
    hit = _layouts.get(keys)
    if hit is None:
        extra = _EXTRA_KEYS.intersection(keys)
        simple: tuple[tuple[str, int], ...] = ()
        if extra and extra <= _SIMPLE_EXTRA_KEYS:
            simple = tuple((key, _FIELD_INDEX[fld]) for key, fld in _EXTRA_FIELDS if key in extra)
            extra = frozenset()
        hit = (
            extra,
            simple,
            "x_forwarded_client_cert" in d,
            "upstream_local_uri_san" in d,
        )
        if len(_layouts) >= _LAYOUTS_MAX:
            _layouts.clear()
        _layouts[keys] = hit
    return hit


def from_mapping(
    d: dict[str, Any], source: str | None = None, offset: int | None = None
) -> FlowRecord:
    """An access-log mapping (JSON object, OTLP log attributes) -> record; ``DecodeError``."""
    g = d.get
    t = g("start_time")
    if t is None:
        t = g("timestamp")
        if t is None:
            raise DecodeError("not_access_log", "no start_time")
    # Inline fast path for Envoy's "...:SS.mmmZ" whose second is already cached.
    base = _sec_cache.get(t[:19]) if t.__class__ is str and t[19:20] == "." else None
    digits = t[20:-1] if base is not None and t[-1:] == "Z" else None
    if digits is not None and digits.isdigit() and digits.isascii():
        ts = base + float("0." + digits)  # type: ignore[operator]
    else:
        ts = _ts_of(t)
    # One comprehension instead of a call per field: most values are plain strings or null,
    # and the function call per field was a third of the decode time. Anything that is not a
    # string goes through ``_s`` so the record's string fields stay strings.
    (
        method,
        path,
        protocol,
        flags,
        details,
        term,
        utfr,
        request_id,
        authority,
        upstream_cluster,
        dlocal,
        dremote,
        sni,
        principal,
        peer_san,
        xff,
    ) = [
        v
        if v.__class__ is str and v != "-" and v != ""
        else (None if v is None or v.__class__ is str else _s(v))
        for v in map(g, _JSON_STR_KEYS)
    ]
    extra, simple, has_xfcc, has_local_san = _layout(d)
    if principal is None:
        principal = peer_san
        if principal is None:
            if (
                has_local_san
                and upstream_cluster is not None
                and upstream_cluster.startswith("outbound|")
            ):
                principal = _s(g("upstream_local_uri_san"))
            if principal is None and has_xfcc:
                principal = _xfcc_uri(_s(g("x_forwarded_client_cert")))
    status = g("response_code")
    if status.__class__ is not int or status < 0:
        status = _i(status)
    b_in = g("bytes_received")
    if b_in.__class__ is not int or b_in < 0:
        b_in = _i(b_in)
    b_out = g("bytes_sent")
    if b_out.__class__ is not int or b_out < 0:
        b_out = _i(b_out)
    dur = g("duration")
    dur = float(dur) if dur.__class__ is int else _f(dur)
    rec = _build(
        ts,
        method,
        path,
        protocol,
        status,
        flags,
        details,
        term,
        utfr,
        b_in,
        b_out,
        dur,
        request_id,
        authority,
        upstream_cluster,
        dlocal,
        dremote,
        sni,
        principal,
        xff,
        source,
        offset,
        simple,
        d,
    )
    # Less common keys: custom formats, Istio telemetry labels; read only when present.
    if extra:
        rec = _extras(rec, d, upstream_cluster, extra)
    return rec


def _extras(
    rec: FlowRecord,
    d: dict[str, Any],
    upstream_cluster: str | None,
    present: frozenset[str] = _EXTRA_KEYS,
) -> FlowRecord:
    """``rec`` with what the less common keys say; ``present``: which of them ``d`` has."""
    g = d.get
    upd: dict[str, Any] = {}
    for key, fld in _EXTRA_FIELDS:
        if key in present:
            v = _s(g(key))
            if v is not None:
                upd[fld] = v
    if "destination_service" in present:
        dsvc = _s(g("destination_service"))
        if dsvc is not None and "dst_service" not in upd:
            svc, ns = _svc_ns(dsvc.lower())
            upd["dst_service"] = svc
            if ns is not None:
                upd.setdefault("dst_namespace", ns)
    if "x_request_id" in present and rec.request_id is None:
        rid = _s(g("x_request_id"))
        if rid is not None:
            upd["request_id"] = rid
    if "destination_port" in present:
        dport = _i(g("destination_port"))
        if dport is not None:
            upd["dst_port"] = dport
    # The emitting proxy's own pod/cluster (ENVIRONMENT(POD_NAMESPACE), ISTIO_META_CLUSTER_ID):
    # the destination on inbound lines, the source on outbound ones.
    if "pod_namespace" in present or "cluster_id" in present or "istio_cluster_id" in present:
        direction = parse_upstream_cluster(upstream_cluster)[0]
        pod_ns = _s(g("pod_namespace"))
        cluster_id = _s(g("cluster_id")) or _s(g("istio_cluster_id"))
        if direction == INBOUND:
            if pod_ns is not None:
                upd.setdefault("dst_namespace", pod_ns)
            if cluster_id is not None:
                upd.setdefault("dst_cluster", cluster_id)
        elif direction == OUTBOUND:
            if pod_ns is not None:
                upd.setdefault("src_namespace", pod_ns)
            if cluster_id is not None:
                upd.setdefault("src_cluster", cluster_id)
    if "trace_id" in present or "traceparent" in present or "x_b3_traceid" in present:
        trace = (
            hex_id(_s(g("trace_id")))
            or hex_id(_s(g("traceparent")))
            or hex_id(_s(g("x_b3_traceid")))
        )
        if trace is not None:
            upd["trace_id"] = trace
    if "span_id" in present or "x_b3_spanid" in present:
        span = hex_id(_s(g("span_id"))) or hex_id(_s(g("x_b3_spanid")))
        if span is not None:
            upd["span_id"] = span
    if not upd:
        return rec
    fields = list(rec)
    for fld, v in upd.items():
        fields[_FIELD_INDEX[fld]] = v
    return _new_record(FlowRecord, fields)
