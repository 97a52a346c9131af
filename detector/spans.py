"""Span joining: client and server span halves -> one caller -> callee edge.

Works like the OpenTelemetry Collector's ``servicegraph`` connector. A client half (kind
``span``, ``records.SPAN``: the caller's CLIENT span) and a server half (kind ``request`` with a
``parent_span_id``: the callee's SERVER span) belong together when they share ``trace_id`` and
``server.parent_span_id == client.span_id``.

Contract:
* ``add(record) -> list[FlowRecord]`` returns what is ready now: the joined edge when the record
  completes a pair, the record itself when it is not a span half (fast path: one attribute check
  and a one-element list), else nothing (the half waits).
* A joined edge is a ``request`` record: ``src_*`` from the client half (the caller knows who it is;
  the server's ``src_principal`` wins when it has one, as the callee's mTLS-verified peer identity),
  ``dst_*`` from the server half, ``status``/``outcome``/``duration_ms``/method/route from the
  server half (the callee's view of its own answer), bytes from whichever half has them, ``ts``
  the client's (when the call started). A value missing (``None`` or ``unknown``) on the preferred
  side is taken from the other.
* ``expire(watermark_ts) -> list[FlowRecord]`` flushes halves whose event time is older than
  ``watermark_ts - ttl_s`` (event time, never the wall clock): an unmatched server half is emitted
  as-is (caller perhaps unknown), an unmatched client half becomes a ``request`` edge to the callee
  it names (servicegraph's "virtual node"). ``expire(math.inf)`` flushes everything.
* At most ``max_pending`` halves wait; when full, the oldest waiting half is flushed the same way
  (returned by ``add``) and counted in ``evicted``. Halves are kept in arrival order, so a half
  that arrived early but carries a late timestamp may wait a little longer than ``ttl_s``.
* Counters: ``joined`` (pairs), ``expired`` (halves flushed by time), ``evicted`` (by the bound).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

from detector.records import REQUEST, SPAN, UNKNOWN, FlowRecord

_Key = tuple[str, str]
_T = TypeVar("_T", str | None, int | None)


def _known(v: object) -> bool:
    return v is not None and v != UNKNOWN


def _pick(a: _T, b: _T) -> _T:
    return a if _known(a) else (b if _known(b) else a)


class SpanJoiner:
    """Pairs client and server span halves into edges; bounded, with an event-time TTL."""

    def __init__(self, ttl_s: float = 30.0, max_pending: int = 100_000) -> None:
        if ttl_s < 0 or max_pending < 1:
            raise ValueError("ttl_s must be >= 0 and max_pending >= 1")
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        # client halves by (trace_id, span_id); server halves by (trace_id, parent_span_id)
        self._clients: OrderedDict[_Key, FlowRecord] = OrderedDict()
        self._servers: OrderedDict[_Key, FlowRecord] = OrderedDict()
        self.joined = 0
        self.expired = 0
        self.evicted = 0

    @property
    def pending(self) -> int:
        return len(self._clients) + len(self._servers)

    def add(self, r: FlowRecord) -> list[FlowRecord]:
        """Take one record; return whatever is ready (see the module docstring)."""
        kind = r.kind
        if kind != SPAN and (r.parent_span_id is None or kind != REQUEST):
            return [r]  # not a span half: straight through
        tid = r.trace_id
        if kind == SPAN:
            if tid is None or r.span_id is None:
                return [_client_alone(r)]
            key = (tid, r.span_id)
            server = self._servers.pop(key, None)
            if server is not None:
                self.joined += 1
                return [join(r, server)]
            return self._wait(self._clients, key, r)
        # a server span with a parent
        if tid is None or r.span_id is None:
            return [r]
        key = (tid, r.parent_span_id)  # type: ignore[assignment]  # parent checked above
        client = self._clients.pop(key, None)
        if client is not None:
            self.joined += 1
            return [join(client, r)]
        return self._wait(self._servers, key, r)

    def _wait(
        self,
        store: OrderedDict[_Key, FlowRecord],
        key: _Key,
        r: FlowRecord,
    ) -> list[FlowRecord]:
        out: list[FlowRecord] = []
        old = store.pop(key, None)
        if old is not None:  # a duplicate id: do not lose the first one
            out.append(_client_alone(old) if old.kind == SPAN else old)
        if len(self._clients) + len(self._servers) >= self.max_pending:
            out.append(self._evict_oldest())
        store[key] = r
        return out

    def _evict_oldest(self) -> FlowRecord:
        c = next(iter(self._clients.values()), None)
        s = next(iter(self._servers.values()), None)
        self.evicted += 1
        if c is not None and (s is None or c.ts <= s.ts):
            return _client_alone(self._clients.popitem(last=False)[1])
        return self._servers.popitem(last=False)[1]

    def expire(self, watermark_ts: float) -> list[FlowRecord]:
        """Flush halves older than ``watermark_ts - ttl_s`` (event time)."""
        cutoff = watermark_ts - self.ttl_s
        out: list[FlowRecord] = []
        clients = self._clients
        while clients:
            first = next(iter(clients.values()))
            if not first.ts < cutoff:
                break
            clients.popitem(last=False)
            out.append(_client_alone(first))
        servers = self._servers
        while servers:
            first = next(iter(servers.values()))
            if not first.ts < cutoff:
                break
            servers.popitem(last=False)
            out.append(first)
        self.expired += len(out)
        return out


def _client_alone(c: FlowRecord) -> FlowRecord:
    """An unmatched client half: an edge to the callee it names (a virtual node)."""
    return c._replace(kind=REQUEST)


def join(client: FlowRecord, server: FlowRecord) -> FlowRecord:
    """One edge from a client half and its server half (field choice: module docstring)."""
    c = client
    s = server
    return s._replace(
        ts=c.ts,
        kind=REQUEST,
        src_principal=_pick(s.src_principal, c.src_principal),
        src_cluster=_pick(c.src_cluster, s.src_cluster),
        src_namespace=_pick(c.src_namespace, s.src_namespace),
        src_workload=_pick(c.src_workload, s.src_workload),
        src_ip=_pick(c.src_ip, s.src_ip),
        dst_cluster=_pick(s.dst_cluster, c.dst_cluster),
        dst_namespace=_pick(s.dst_namespace, c.dst_namespace),
        dst_service=_pick(s.dst_service, c.dst_service),
        dst_port=_pick(s.dst_port, c.dst_port),
        method=s.method or c.method,
        route=s.route or c.route,
        status=s.status if s.status is not None else c.status,
        bytes_in=s.bytes_in or c.bytes_in,
        bytes_out=s.bytes_out or c.bytes_out,
        duration_ms=s.duration_ms if s.duration_ms is not None else c.duration_ms,
        request_id=s.request_id or c.request_id,
        detail=s.detail or c.detail,
    )
