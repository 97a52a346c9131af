"""Identity/cluster resolution and event-time windowed aggregation per edge.

An *edge* is ``caller@src_cluster -> service.namespace@dst_cluster``; the caller is the
principal (SPIFFE id, Linkerd identity, Kubernetes user) or, when the input names none, the
workload, else ``anonymous``. Clusters usually share one trust domain, so (principal, cluster) is
the identity of a caller (DESIGN.md §3).

Contract:
* ``Resolver.resolve(record, static)`` fills missing clusters/namespaces in the order of
  DESIGN.md §3: explicit fields -> (OTLP resource attributes, filled by the decoder) -> static
  attributes of the stream -> SPIFFE trust domain map -> peer-address CIDR map -> ``unknown``.
  It returns the same object when nothing changes (the common, fast case).
* ``RouteTemplates.template(service, path)`` turns raw paths into low-cardinality templates
  (``/v1/customers/{id}``), at most ``max_per_service`` per service; the rest become ``{other}``.
* ``WindowAggregator`` keeps tumbling event-time windows of ``window_s``. The watermark is the
  minimum over active streams of the newest event time seen, minus ``allowed_lateness_s``;
  streams idle for ``idle_stream_s`` (wall clock) stop holding it back. A window closes when its
  end is at or before the watermark; a record for a closed window is *late*: counted per stream,
  never merged. Open state is bounded by ``max_open_edges`` (records of further new edges are
  folded into one ``overflow`` edge and counted), and idle edges leave the edge table after
  ``edge_idle_ttl_s`` of event time.
* ``add_batch`` runs compiled when ``detector.fastpath.COMPILED`` (same windows, same stats);
  the loop here is the reference and the pure-Python fallback. Record times are floats.
* ``WindowAggregator.positions()`` says, per stream, the next offset that is safe to commit:
  every unit before it belongs to a closed window (or was late / bad and so fully processed).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from detector import fastpath
from detector.records import (
    API_AUDIT,
    AUTH_FAILURE,
    CONNECTION,
    DENIED,
    ERROR,
    OK,
    UNAUTHENTICATED,
    UNKNOWN,
    FlowRecord,
)
from detector.sources import StaticAttrs

_new_record = tuple.__new__
_SRC_CLUSTER: Final = FlowRecord._fields.index("src_cluster")
_DST_CLUSTER: Final = FlowRecord._fields.index("dst_cluster")
_DST_NAMESPACE: Final = FlowRecord._fields.index("dst_namespace")

ANONYMOUS: Final = "anonymous"
OVERFLOW: Final = "overflow"
OTHER_ROUTE: Final = "{other}"

# ---------------------------------------------------------------------------------------------
# Resolution


class Resolver:
    """Fills clusters and namespaces a record does not name itself (DESIGN.md §3 order)."""

    def __init__(
        self,
        trust_domains: Mapping[str, str] | None = None,
        cidrs: Mapping[str, str] | None = None,
    ) -> None:
        self.trust_domains = dict(trust_domains or {})
        # Longest prefix first so a /24 carve-out wins over its /16.
        nets = [(ipaddress.ip_network(c, strict=False), cl) for c, cl in (cidrs or {}).items()]
        nets.sort(key=lambda nc: nc[0].prefixlen, reverse=True)
        self._nets = nets
        self._ip_cache: dict[str, str | None] = {}

    def cluster_for_principal(self, principal: str | None) -> str | None:
        if not principal or not self.trust_domains:
            return None
        if principal.startswith("spiffe://"):
            td = principal[9:].split("/", 1)[0]
        elif ".serviceaccount.identity.linkerd." in principal:
            td = principal.rsplit(".serviceaccount.identity.linkerd.", 1)[1]
        else:
            return None
        return self.trust_domains.get(td)

    def cluster_for_ip(self, ip: str | None) -> str | None:
        if not ip or not self._nets:
            return None
        try:
            return self._ip_cache[ip]
        except KeyError:
            pass
        found: str | None = None
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            addr = None
        if addr is not None:
            for net, cluster in self._nets:
                if addr in net:
                    found = cluster
                    break
        if len(self._ip_cache) > 65536:  # bounded: peer addresses can be many
            self._ip_cache.clear()
        self._ip_cache[ip] = found
        return found

    def resolve(self, rec: FlowRecord, static: StaticAttrs) -> FlowRecord:
        src_cluster = rec.src_cluster
        dst_cluster = rec.dst_cluster
        if src_cluster is not None and dst_cluster is not None and rec.dst_namespace is not None:
            return rec  # the common case for enriched mesh logs: nothing to do
        if dst_cluster is None:
            dst_cluster = static.dst_cluster or static.cluster or UNKNOWN
        if src_cluster is None:
            src_cluster = (
                static.src_cluster
                or self.cluster_for_principal(rec.src_principal)
                or self.cluster_for_ip(rec.src_ip)
                # Kubernetes users and service-account tokens belong to the cluster whose API
                # server they call: an audit event's caller is in the apiserver's cluster.
                or (dst_cluster if rec.kind == API_AUDIT and dst_cluster != UNKNOWN else None)
                or UNKNOWN
            )
        fields = list(rec)  # _replace, without its Python-level _make
        fields[_SRC_CLUSTER] = src_cluster
        fields[_DST_CLUSTER] = dst_cluster
        fields[_DST_NAMESPACE] = rec.dst_namespace or static.namespace
        return _new_record(rec.__class__, fields)


# ---------------------------------------------------------------------------------------------
# Route templates

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEXID = re.compile(r"^(?=.*\d)[0-9a-fA-F]{8,}$")
_TOKEN = re.compile(r"^(?=.*\d)[A-Za-z0-9_\-=.]{16,}$")


_HEX_DIGITS: Final = "0123456789abcdefABCDEF"
_ID: Final = "{id}"


def _template_segment(seg: str) -> str:
    n = len(seg)
    if n < 8:
        # too short for the hex/token/UUID patterns: only digits and e-mail-like ids remain
        return _ID if (n and seg.isdigit()) or "@" in seg else seg
    if seg.isdigit():
        return _ID
    if n <= 64 and seg.isalpha():
        return seg  # no digit (hex id, token) and no hyphen (UUID): a plain word
    if seg.isascii() and seg.isalnum() and not seg.strip(_HEX_DIGITS):
        return _ID  # >= 8 hex digits, at least one a digit (not isalpha)
    if _UUID.match(seg) or _HEXID.match(seg) or _TOKEN.match(seg):
        return _ID
    if "@" in seg or n > 64:
        return _ID
    return seg


def template_path(path: str) -> str:
    """``/v1/customers/42?x=1`` -> ``/v1/customers/{id}`` (no per-service bound applied)."""
    q = path.find("?")
    if q >= 0:
        path = path[:q]
    if path.startswith(("http://", "https://")):
        # absolute-form request target (Linkerd writes these): keep only the path
        slash = path.find("/", path.find("//") + 2)
        path = path[slash:] if slash >= 0 else "/"
    return "/".join([_template_segment(s) for s in path.split("/")[:16]])


class RouteTemplates:
    """Path -> template, with a bound on distinct templates per service and a bounded cache."""

    def __init__(
        self, max_per_service: int = 100, cache_size: int = 200_000, compiled: bool = True
    ) -> None:
        self.max_per_service = max_per_service
        # the compiled ``template_path`` when built (same templates), else the one above
        self._template_path = (fastpath.template_path if compiled else None) or template_path
        self.cache_size = cache_size
        self._cache: dict[tuple[str | None, str], str] = {}
        self._per_service: dict[str | None, set[str]] = {}
        self.overflowed = 0

    def template(self, service: str | None, path: str | None) -> str | None:
        if path is None:
            return None
        key = (service, path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        tpl = self._template_path(path)
        known = self._per_service.get(service)
        if known is None:
            known = self._per_service[service] = set()
        if tpl not in known:
            if len(known) >= self.max_per_service:
                self.overflowed += 1
                tpl = OTHER_ROUTE
            else:
                known.add(tpl)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()  # cheap bound; hot paths refill it at once
        self._cache[key] = tpl
        return tpl

    def forget(self, services: Iterable[str | None]) -> None:
        for s in services:
            self._per_service.pop(s, None)


# ---------------------------------------------------------------------------------------------
# Windows

# (caller, src_cluster, dst_namespace, dst_service, dst_cluster)
EdgeKey = tuple[str, str, str, str, str]

MAX_DURATIONS: Final = 2048  # latency samples kept per edge-window (quantiles stay accurate)
MAX_SRC_IPS: Final = 64
MAX_ROUTES_PER_EDGE: Final = 64


class _Acc:
    """Mutable accumulator of one edge in one window (slotted: millions may exist)."""

    __slots__ = (
        "api",
        "bytes_in",
        "bytes_out",
        "connections",
        "denied",
        "durations",
        "error",
        "first_ts",
        "ip_failures",
        "last_ts",
        "ok",
        "requests",
        "routes",
        "src_ips",
        "unauthenticated",
    )

    def __init__(self, ts: float) -> None:
        self.requests = 0
        self.connections = 0
        self.api = 0
        self.ok = 0
        self.error = 0
        self.denied = 0
        self.unauthenticated = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.durations: list[float] = []
        self.routes: dict[tuple[str | None, str | None], int] = {}
        self.src_ips: set[str] = set()
        self.ip_failures: dict[str, int] = {}  # denied/unauthenticated per source address
        self.first_ts = ts
        self.last_ts = ts


@dataclass(frozen=True, slots=True)
class EdgeWindow:
    """What one edge did in one closed window: the unit every model scores."""

    window_start: float
    window_end: float
    src_principal: str
    src_cluster: str
    dst_namespace: str
    dst_service: str
    dst_cluster: str
    requests: int  # L7 requests and auth failures
    connections: int  # L4 flows
    api_calls: int  # Kubernetes API audit events
    ok: int
    errors: int
    denied: int
    unauthenticated: int
    bytes_in: int
    bytes_out: int
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    routes: Mapping[str, int] = field(default_factory=dict)  # "METHOD template" -> count
    src_ips: tuple[str, ...] = ()
    failures_by_ip: Mapping[str, int] = field(default_factory=dict)  # denied+unauthenticated
    first_seen: float = 0.0
    last_seen: float = 0.0

    @property
    def total(self) -> int:
        return self.requests + self.connections + self.api_calls

    @property
    def edge(self) -> str:
        dst = f"{self.dst_service}.{self.dst_namespace}" if self.dst_namespace else self.dst_service
        return f"{self.src_principal}@{self.src_cluster} -> {dst}@{self.dst_cluster}"


@dataclass(slots=True)
class AggregatorStats:
    records: int = 0
    late: int = 0
    late_by_stream: dict[str, int] = field(default_factory=dict)
    overflow: int = 0
    windows_closed: int = 0
    edge_windows_emitted: int = 0
    edges_evicted: int = 0


class WindowAggregator:
    """Tumbling event-time windows per edge with a watermark; see the module docstring."""

    def __init__(
        self,
        window_s: float = 60.0,
        allowed_lateness_s: float = 30.0,
        max_open_edges: int = 1_000_000,
        max_routes_per_service: int = 100,
        edge_idle_ttl_s: float = 86_400.0,
        compiled: bool = True,
    ) -> None:
        """``compiled=False`` keeps the pure-Python ``add_batch`` even when the compiled one
        is built (the tests compare the two)."""
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = float(window_s)
        self.allowed_lateness_s = float(allowed_lateness_s)
        self.max_open_edges = max_open_edges
        self.edge_idle_ttl_s = edge_idle_ttl_s
        self.routes = RouteTemplates(max_routes_per_service, compiled=compiled)
        self.stats = AggregatorStats()
        # window start -> edge -> accumulator
        self._windows: dict[float, dict[EdgeKey, _Acc]] = {}
        self._open_edges = 0
        # window start -> stream -> smallest offset that fed the window
        self._window_offsets: dict[float, dict[str, int]] = {}
        # closed windows whose offsets still hold their streams' commit (``hold_closed``)
        self._held: dict[float, dict[str, int]] | None = None
        self._stream_next: dict[str, int] = {}  # stream -> offset after the last unit seen
        self._stream_max_ts: dict[str, float] = {}
        self._stream_idle: set[str] = set()
        self._clockless: set[str] = set()  # streams whose records never hold the watermark
        self._closed_before = -math.inf  # windows starting before this are closed
        self._final_watermark = -math.inf  # the watermark never moves back (streams ending)
        self._edge_last_seen: dict[EdgeKey, float] = {}
        self._kernel = fastpath.aggregate_kernel() if compiled else None
        self._new_acc: type = (fastpath.accumulator_type() if compiled else None) or _Acc
        self._materialise_all = fastpath.materialiser() if compiled else None

    # -- watermark ---------------------------------------------------------------------------

    @property
    def watermark(self) -> float:
        idle, clockless = self._stream_idle, self._clockless
        active = [
            ts for s, ts in self._stream_max_ts.items() if s not in idle and s not in clockless
        ]
        if not active:
            active = [ts for ts in self._stream_max_ts.values() if ts > -math.inf]
        if not active:
            return self._final_watermark
        return max(min(active) - self.allowed_lateness_s, self._final_watermark)

    @property
    def closed_before(self) -> float:
        """Windows starting before this are closed (emitted): a record for one is late."""
        return self._closed_before

    def treat_as_closed_before(self, ts: float) -> None:
        """Windows starting before ``ts`` were emitted elsewhere: a record for one is late."""
        self._closed_before = max(self._closed_before, ts)

    @property
    def newest_event_ts(self) -> float:
        return max(self._stream_max_ts.values(), default=-math.inf)

    def mark_idle(self, stream: str, idle: bool = True) -> None:
        """A stream with no data for a while stops holding the watermark back (or resumes)."""
        if idle:
            self._stream_idle.add(stream)
        else:
            self._stream_idle.discard(stream)

    def advance_to(self, event_ts: float) -> None:
        """Move every stream's clock to at least ``event_ts`` (idle timeout, end of input)."""
        for s, ts in self._stream_max_ts.items():
            if ts < event_ts:
                self._stream_max_ts[s] = event_ts

    def register_stream(self, stream: str) -> None:
        """A stream that will deliver data holds the watermark back until it does (or idles)."""
        self._stream_max_ts.setdefault(stream, -math.inf)

    def end_stream(self, stream: str) -> None:
        """A stream has no more data: it stops holding the watermark (its offsets stay)."""
        self._stream_max_ts.pop(stream, None)
        self._stream_idle.discard(stream)

    def forget_stream(self, stream: str) -> None:
        """A stream went away (partition revoked): it no longer holds the watermark."""
        self._stream_max_ts.pop(stream, None)
        self._stream_idle.discard(stream)
        self._stream_next.pop(stream, None)
        for offs in self._window_offsets.values():
            offs.pop(stream, None)

    def set_event_time(self, stream: str, ts: float) -> None:
        """Replace ``stream``'s clock, lower or higher (a provisional clock superseded by the
        stream's own announcement). Windows already closed stay closed."""
        self._stream_max_ts[stream] = ts
        self._stream_idle.discard(stream)

    def ignore_clock(self, stream: str) -> None:
        """``stream``'s records never hold the watermark back: other streams carry its clock
        (scale-out: the input partitions' clock messages, not the internal partition)."""
        self._clockless.add(stream)

    def hold_closed(self) -> None:
        """From now on, closed windows keep holding their streams' positions back until
        ``release_closed``: for a stage that acts on a window only after it closed (scale-out
        scores a window once every replica closed it)."""
        if self._held is None:
            self._held = {}

    def release_closed(self, before: float) -> None:
        """Closed windows starting before ``before`` are done with: they hold no position."""
        held = self._held
        if held:
            for w in [w for w in held if w < before]:
                del held[w]

    @property
    def holds_closed(self) -> bool:
        """Some closed window still holds a position (``hold_closed``)."""
        held = self._held
        return held is not None and any(held.values())

    def release_stream(self, stream: str) -> None:
        """Closed windows hold no position of ``stream`` any more (its partition was revoked,
        after the revoking commit)."""
        for offs in (self._held or {}).values():
            offs.pop(stream, None)

    def note_event_time(self, stream: str, ts: float) -> None:
        """``stream`` has reached event time ``ts`` without aggregating here (a stage that only
        forwards records still needs a watermark, e.g. for span-join expiry)."""
        if ts > self._stream_max_ts.get(stream, -math.inf):
            self._stream_max_ts[stream] = ts
        self._stream_idle.discard(stream)

    def stream_clocks(self) -> dict[str, tuple[float | None, bool]]:
        """Per stream holding (or able to hold) the watermark: its newest event time (None
        before its first record) and whether it is idle."""
        idle = self._stream_idle
        return {
            s: (ts if ts > -math.inf else None, s in idle) for s, ts in self._stream_max_ts.items()
        }

    def drop_edges(self, belongs: Callable[[EdgeKey], bool]) -> int:
        """Forget the open windows and last-seen times of every edge for which ``belongs(key)``
        holds, without emitting them (their state moved to another replica, which rebuilds
        those windows from its committed offsets). Returns the edge-windows dropped."""
        dropped = 0
        for edges in self._windows.values():
            gone = [k for k in edges if belongs(k)]
            for k in gone:
                del edges[k]
            dropped += len(gone)
        self._open_edges -= dropped
        table = self._edge_last_seen
        for k in [k for k in table if belongs(k)]:
            del table[k]
        return dropped

    # -- ingest ------------------------------------------------------------------------------

    def add_batch(
        self, stream: str, records: list[FlowRecord], first_offset: int | None = None
    ) -> None:
        """Aggregate ``records`` (all from ``stream``, in one batch starting at ``first_offset``).

        Every window the batch feeds remembers ``first_offset`` as a lower bound of what it
        holds, so commits never pass a unit whose window is still open. Call ``note_offset``
        with the batch's last offset afterwards.
        """
        if not records:
            return
        if self._kernel is not None:
            self._kernel(self, stream, records, first_offset)
            return
        window_s = self.window_s
        closed_before = self._closed_before
        windows = self._windows
        template = self.routes.template
        wofs = self._window_offsets
        last_seen = self._edge_last_seen
        stats = self.stats
        max_ts = self._stream_max_ts.get(stream, -math.inf)
        cur_w = math.nan
        cur_edges: dict[EdgeKey, _Acc] = {}
        late = 0
        tcache = self.routes._cache
        open_edges = self._open_edges
        max_open = self.max_open_edges - 1  # one slot kept for overflow
        new_acc = self._new_acc
        # One UNPACK_SEQUENCE per record instead of a dozen attribute lookups; the field order
        # is FlowRecord._fields.
        for (
            ts,
            kind,
            principal,
            src_cluster,
            src_ns,
            src_workload,
            ip,
            dst_cluster,
            dst_ns,
            dst_svc,
            _port,
            method,
            route,
            _status,
            outcome,
            b_in,
            b_out,
            d,
            _trace_id,
            _span_id,
            _parent_span_id,
            _request_id,
            _detail,
            _source,
            _offset,
        ) in records:
            w = ts - ts % window_s
            if w < closed_before:
                late += 1
                continue
            if ts > max_ts:
                max_ts = ts
            if w != cur_w:
                cur_w = w
                edges_w = windows.get(w)
                if edges_w is None:
                    edges_w = windows[w] = {}
                cur_edges = edges_w
                if first_offset is not None:
                    per = wofs.get(w)
                    if per is None:
                        wofs[w] = {stream: first_offset}
                    elif first_offset < per.get(stream, first_offset + 1):
                        per[stream] = first_offset
            key = (
                principal or (f"{src_ns}/{src_workload}" if src_workload else ANONYMOUS),
                src_cluster or UNKNOWN,
                dst_ns or "",
                dst_svc or UNKNOWN,
                dst_cluster or UNKNOWN,
            )
            acc = cur_edges.get(key)
            if acc is None:
                if open_edges >= max_open:
                    stats.overflow += 1
                    key = (OVERFLOW, OVERFLOW, "", OVERFLOW, OVERFLOW)
                    acc = cur_edges.get(key)
                if acc is None:
                    acc = cur_edges[key] = new_acc(ts)
                    open_edges += 1
            if kind == CONNECTION:
                acc.connections += 1
            elif kind == API_AUDIT:
                acc.api += 1
            else:
                acc.requests += 1
            if outcome == OK:
                acc.ok += 1
            elif outcome == ERROR:
                acc.error += 1
            elif outcome in (DENIED, UNAUTHENTICATED):
                if outcome == DENIED:
                    acc.denied += 1
                else:
                    acc.unauthenticated += 1
                if ip is not None:
                    fails = acc.ip_failures
                    if ip in fails:
                        fails[ip] += 1
                    elif len(fails) < MAX_SRC_IPS:
                        fails[ip] = 1
            acc.bytes_in += b_in
            acc.bytes_out += b_out
            if d is not None:
                durs = acc.durations
                if len(durs) < MAX_DURATIONS:
                    durs.append(d)
            if route is not None or method is not None:
                if route is None:
                    tpl = None
                else:
                    tpl = tcache.get((dst_svc, route))
                    if tpl is None:
                        tpl = template(dst_svc, route)
                rk = (method, tpl)
                routes = acc.routes
                if rk in routes:
                    routes[rk] += 1
                elif len(routes) < MAX_ROUTES_PER_EDGE:
                    routes[rk] = 1
                else:
                    ok_key = (None, OTHER_ROUTE)
                    routes[ok_key] = routes.get(ok_key, 0) + 1
            if ip is not None:
                ips = acc.src_ips
                if len(ips) < MAX_SRC_IPS:
                    ips.add(ip)
            if ts < acc.first_ts:
                acc.first_ts = ts
            elif ts > acc.last_ts:
                acc.last_ts = ts
            last_seen[key] = ts
        self._open_edges = open_edges
        stats.records += len(records) - late
        if late:
            stats.late += late
            stats.late_by_stream[stream] = stats.late_by_stream.get(stream, 0) + late
        if max_ts > -math.inf:
            self._stream_max_ts[stream] = max_ts
        self._stream_idle.discard(stream)

    def note_offset(self, stream: str, last_offset: int) -> None:
        """Units of ``stream`` up to ``last_offset`` were seen (decoded, bad, or aggregated)."""
        if last_offset + 1 > self._stream_next.get(stream, -1):
            self._stream_next[stream] = last_offset + 1

    # -- emit --------------------------------------------------------------------------------

    def close_ready(self) -> list[EdgeWindow]:
        """Close every window whose end is at or before the watermark."""
        wm = self.watermark
        self._final_watermark = wm
        return self._close(wm)

    def flush(self) -> list[EdgeWindow]:
        """Close every open window (end of input, shutdown)."""
        return self._close(math.inf)

    def _close(self, watermark: float) -> list[EdgeWindow]:
        out: list[EdgeWindow] = []
        ws = self.window_s
        for w in sorted(self._windows):
            if w + ws > watermark:
                break
            edges = self._windows.pop(w)
            offsets = self._window_offsets.pop(w, None)
            if self._held is not None and offsets:
                self._held[w] = offsets
            self._open_edges -= len(edges)
            if self._materialise_all is not None:
                out.extend(self._materialise_all(w, ws, edges))
            else:
                out.extend(_materialise(w, ws, key, acc) for key, acc in edges.items())
            self.stats.windows_closed += 1
            self._closed_before = max(self._closed_before, w + ws)
        if watermark != math.inf and watermark > -math.inf:
            # Every window starting before floor(watermark) is closed, even ones that never
            # saw data: a record for one of them is late, not the seed of a second copy.
            self._closed_before = max(self._closed_before, watermark - watermark % ws)
        if out:
            self.stats.edge_windows_emitted += len(out)
            self._evict_idle(watermark if watermark != math.inf else out[-1].window_end)
        return out

    def _evict_idle(self, now_ts: float) -> None:
        cutoff = now_ts - self.edge_idle_ttl_s
        table = self._edge_last_seen
        if len(table) < 1024:
            return
        stale = [k for k, ts in table.items() if ts < cutoff]
        for k in stale:
            del table[k]
        if stale:
            self.stats.edges_evicted += len(stale)
            live_services = {k[3] for k in table}
            self.routes.forget({k[3] for k in stale} - live_services)

    # -- introspection -----------------------------------------------------------------------

    @property
    def open_windows(self) -> int:
        return len(self._windows)

    @property
    def open_edges(self) -> int:
        return self._open_edges

    @property
    def edges_tracked(self) -> int:
        return len(self._edge_last_seen)

    def positions(self) -> dict[str, int]:
        """Per stream, the next offset safe to commit (see the module docstring)."""
        out = dict(self._stream_next)
        for per in [*self._window_offsets.values(), *(self._held or {}).values()]:
            for stream, off in per.items():
                if off < out.get(stream, off + 1):
                    out[stream] = off
        return out


_Q_SMALL: Final = 256  # below this many samples, quantiles in plain Python beat numpy's setup
_route_names: dict[tuple[str | None, str | None], str] = {}


def _quantiles(durations: list[float]) -> tuple[float, float, float]:
    """p50/p90/p99 exactly as ``np.quantile`` (method ``linear``) computes them, rounded to 3."""
    n = len(durations)
    if n > _Q_SMALL or not math.isfinite(sum(durations)):  # large, or NaN/inf: numpy decides
        qs = np.quantile(np.asarray(durations, dtype=np.float64), (0.5, 0.9, 0.99))
        return round(float(qs[0]), 3), round(float(qs[1]), 3), round(float(qs[2]), 3)
    xs = sorted(durations)
    last = n - 1
    out = []
    for q in (0.5, 0.9, 0.99):
        vi = last * q
        if vi >= last:
            v = xs[last]
        else:
            lo = math.floor(vi)
            a = xs[lo]
            b = xs[lo + 1]
            t = vi - lo
            diff = b - a
            # numpy's _lerp: from the upper neighbour when t >= 0.5 (same rounding as numpy)
            v = b - diff * (1 - t) if t >= 0.5 else a + diff * t
        out.append(round(float(v), 3))
    return out[0], out[1], out[2]


def _route_name(mt: tuple[str | None, str | None]) -> str:
    name = _route_names.get(mt)
    if name is None:
        m, t = mt
        name = f"{m} {t}" if m else (t or "")
        if len(_route_names) >= 65536:
            _route_names.clear()
        _route_names[mt] = name
    return name


def _materialise(w: float, ws: float, key: EdgeKey, acc: _Acc) -> EdgeWindow:
    p50 = p90 = p99 = None
    if acc.durations:
        p50, p90, p99 = _quantiles(acc.durations)
    routes = {_route_name(mt): n for mt, n in acc.routes.items()}
    return EdgeWindow(
        w,
        w + ws,
        key[0],
        key[1],
        key[2],
        key[3],
        key[4],
        acc.requests,
        acc.connections,
        acc.api,
        acc.ok,
        acc.error,
        acc.denied,
        acc.unauthenticated,
        acc.bytes_in,
        acc.bytes_out,
        p50,
        p90,
        p99,
        routes,
        tuple(sorted(acc.src_ips)),
        acc.ip_failures,
        acc.first_ts,
        acc.last_ts,
    )


__all__ = [
    "ANONYMOUS",
    "AUTH_FAILURE",
    "OTHER_ROUTE",
    "OVERFLOW",
    "AggregatorStats",
    "EdgeWindow",
    "Resolver",
    "RouteTemplates",
    "WindowAggregator",
    "template_path",
]
