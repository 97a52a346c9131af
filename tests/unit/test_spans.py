"""SpanJoiner: servicegraph-style pairing, event-time TTL, bound and counters."""

from __future__ import annotations

import math

from detector.records import CONNECTION, DENIED, OK, REQUEST, SPAN, UNKNOWN, FlowRecord
from detector.spans import SpanJoiner

T = "5b8efff798038103d269b633813fc60c"


def client(ts: float = 100.0, span: str = "c1", trace: str = T, **kw: object) -> FlowRecord:
    base = dict(
        ts=ts,
        kind=SPAN,
        src_cluster="east",
        src_namespace="shop",
        src_workload="web",
        dst_service="payments",
        dst_cluster=UNKNOWN,
        trace_id=trace,
        span_id=span,
        bytes_in=7,
    )
    base.update(kw)
    return FlowRecord(**base)  # type: ignore[arg-type]


def server(ts: float = 100.2, parent: str = "c1", trace: str = T, **kw: object) -> FlowRecord:
    base = dict(
        ts=ts,
        kind=REQUEST,
        src_cluster=UNKNOWN,
        dst_cluster="west",
        dst_namespace="pay",
        dst_service="payments-api",
        status=403,
        outcome=DENIED,
        duration_ms=12.5,
        trace_id=trace,
        span_id="s-" + parent,
        parent_span_id=parent,
        bytes_out=30,
    )
    base.update(kw)
    return FlowRecord(**base)  # type: ignore[arg-type]


def test_pair_joins_in_either_order() -> None:
    for first, second in ((client(), server()), (server(), client())):
        j = SpanJoiner(ttl_s=10)
        assert j.add(first) == []
        [edge] = j.add(second)
        assert edge.kind == REQUEST
        assert (edge.src_cluster, edge.src_namespace, edge.src_workload) == ("east", "shop", "web")
        assert (edge.dst_cluster, edge.dst_namespace, edge.dst_service) == (
            "west",
            "pay",
            "payments-api",
        )
        assert (edge.status, edge.outcome, edge.duration_ms) == (403, DENIED, 12.5)
        assert (edge.bytes_in, edge.bytes_out) == (7, 30)
        assert edge.ts == 100.0
        assert j.joined == 1 and j.pending == 0


def test_other_records_pass_straight_through() -> None:
    j = SpanJoiner()
    plain = FlowRecord(ts=1.0, kind=CONNECTION)
    access = FlowRecord(ts=1.0, kind=REQUEST, trace_id=T, span_id="x")  # no parent: not a half
    assert j.add(plain)[0] is plain
    assert j.add(access)[0] is access
    assert j.pending == 0


def test_no_join_on_different_trace_or_parent() -> None:
    j = SpanJoiner(ttl_s=10)
    assert j.add(client()) == []
    assert j.add(server(parent="other")) == []
    assert j.add(server(trace="f" * 32)) == []
    assert j.joined == 0 and j.pending == 3


def test_expire_uses_event_time() -> None:
    j = SpanJoiner(ttl_s=10)
    j.add(client(ts=100.0))
    j.add(server(ts=105.0, parent="lonely"))
    assert j.expire(109.0) == []  # 100 is not older than 109 - 10
    [c] = j.expire(110.5)
    assert c.kind == REQUEST and c.dst_service == "payments"  # virtual node edge
    assert c.src_workload == "web" and c.dst_cluster == UNKNOWN
    [s] = j.expire(math.inf)
    assert s.kind == REQUEST and s.parent_span_id == "lonely" and s.outcome == DENIED
    assert j.expired == 2 and j.pending == 0


def test_bound_evicts_oldest_half() -> None:
    j = SpanJoiner(ttl_s=1000, max_pending=2)
    assert j.add(client(ts=1.0, span="a")) == []
    assert j.add(server(ts=2.0, parent="b")) == []
    [evicted] = j.add(client(ts=3.0, span="c"))
    assert evicted.span_id == "a" and evicted.kind == REQUEST
    assert j.evicted == 1 and j.pending == 2
    [edge] = j.add(server(ts=3.1, parent="c"))
    assert edge.src_workload == "web" and j.joined == 1


def test_principal_prefers_server_view_and_fallbacks() -> None:
    j = SpanJoiner()
    j.add(client(src_principal="spiffe://td/ns/shop/sa/web", method="POST", route="/x"))
    [e] = j.add(server(src_principal=None, dst_service=None, status=None, outcome=OK, bytes_out=0))
    assert e.src_principal == "spiffe://td/ns/shop/sa/web"
    assert e.dst_service == "payments"  # the server half did not name itself
    assert (e.method, e.route) == ("POST", "/x")
    j.add(client(span="c2"))
    [e2] = j.add(server(parent="c2", src_principal="spiffe://td/ns/shop/sa/web2"))
    assert e2.src_principal == "spiffe://td/ns/shop/sa/web2"


def test_client_without_ids_is_an_edge_at_once() -> None:
    j = SpanJoiner()
    [r] = j.add(client(span=None))  # type: ignore[arg-type]
    assert r.kind == REQUEST and j.pending == 0
