"""Resolution, route templates and event-time windowed aggregation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.flows import (
    ANONYMOUS,
    OTHER_ROUTE,
    OVERFLOW,
    Resolver,
    RouteTemplates,
    WindowAggregator,
    template_path,
)
from detector.records import (
    API_AUDIT,
    CONNECTION,
    DENIED,
    ERROR,
    OK,
    UNAUTHENTICATED,
    UNKNOWN,
    FlowRecord,
)
from detector.sources import StaticAttrs

P = "spiffe://cluster.local/ns/shop/sa/frontend"


def rec(ts: float, **kw: object) -> FlowRecord:
    base: dict[str, object] = dict(
        src_principal=P, src_cluster="eu", dst_service="orders", dst_namespace="shop",
        dst_cluster="eu", method="GET", route="/orders/1", bytes_in=10, bytes_out=100,
        duration_ms=5.0,
    )
    base.update(kw)
    return FlowRecord(ts=ts, **base)  # type: ignore[arg-type]


# -- resolution ------------------------------------------------------------------------------


def test_resolver_keeps_explicit_fields_and_returns_same_object() -> None:
    r = rec(0)
    assert Resolver({"cluster.local": "x"}, {"10.0.0.0/8": "y"}).resolve(r, StaticAttrs("z")) is r


def test_resolver_order_static_then_trust_domain_then_cidr_then_unknown() -> None:
    res = Resolver({"td-us": "us"}, {"10.1.0.0/16": "eu", "10.1.2.0/24": "eu-carve"})
    bare = FlowRecord(ts=0, src_principal="spiffe://td-us/ns/a/sa/b", src_ip="10.1.2.3")
    # static src attribute beats the trust domain
    assert res.resolve(bare, StaticAttrs(src_cluster="static")).src_cluster == "static"
    # trust domain beats CIDR
    assert res.resolve(bare, StaticAttrs()).src_cluster == "us"
    # CIDR, longest prefix wins
    anon = FlowRecord(ts=0, src_ip="10.1.2.3")
    assert res.resolve(anon, StaticAttrs()).src_cluster == "eu-carve"
    assert res.resolve(FlowRecord(ts=0, src_ip="10.1.9.9"), StaticAttrs()).src_cluster == "eu"
    # nothing known
    assert res.resolve(FlowRecord(ts=0, src_ip="192.0.2.1"), StaticAttrs()).src_cluster == UNKNOWN
    # the stream's cluster names the destination side (a topic per cluster of proxy logs)
    got = res.resolve(anon, StaticAttrs(cluster="c1", namespace="ns1"))
    assert (got.dst_cluster, got.dst_namespace) == ("c1", "ns1")
    assert res.resolve(anon, StaticAttrs()).dst_cluster == UNKNOWN


def test_resolver_linkerd_trust_domain() -> None:
    res = Resolver({"eu.example": "eu"})
    r = FlowRecord(ts=0, src_principal="web.shop.serviceaccount.identity.linkerd.eu.example")
    assert res.resolve(r, StaticAttrs()).src_cluster == "eu"


def test_resolver_tolerates_garbage_ip() -> None:
    res = Resolver(cidrs={"10.0.0.0/8": "a"})
    assert res.resolve(FlowRecord(ts=0, src_ip="not-an-ip"), StaticAttrs()).src_cluster == UNKNOWN


# -- routes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/v1/customers/42", "/v1/customers/{id}"),
        ("/v1/customers/42?expand=true", "/v1/customers/{id}"),
        ("/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301/items", "/o/{id}/items"),
        ("/blob/deadbeefcafe1234", "/blob/{id}"),
        ("/healthz", "/healthz"),
        ("http://webapp:7000/authors/104", "/authors/{id}"),
        ("/users/alice@example.com", "/users/{id}"),
        ("/", "/"),
    ],
)
def test_template_path(path: str, want: str) -> None:
    assert template_path(path) == want


def test_route_templates_bound_per_service() -> None:
    rt = RouteTemplates(max_per_service=3)
    got = {rt.template("svc", f"/r{i}") for i in range(10)}
    assert got == {"/r0", "/r1", "/r2", OTHER_ROUTE}
    assert rt.overflowed == 7
    # another service has its own budget
    assert rt.template("other", "/r9") == "/r9"


# -- windows ---------------------------------------------------------------------------------


def test_counts_by_outcome_bytes_and_quantiles() -> None:
    agg = WindowAggregator(window_s=60, allowed_lateness_s=0)
    records = [rec(i, duration_ms=float(i + 1)) for i in range(50)]
    records += [rec(50, outcome=DENIED, status=403), rec(51, outcome=UNAUTHENTICATED)]
    records += [rec(52, outcome=ERROR, status=503), rec(53, kind=CONNECTION, route=None,
                                                         method=None)]
    agg.add_batch("s", records, 1)
    agg.add_batch("s", [rec(130)], 60)  # moves the watermark past the first window
    out = agg.close_ready()
    assert len(out) == 1
    w = out[0]
    assert (w.window_start, w.window_end) == (0, 60)
    assert w.requests == 53 and w.connections == 1
    assert (w.ok, w.errors, w.denied, w.unauthenticated) == (51, 1, 1, 1)
    assert w.bytes_in == 540 and w.bytes_out == 5400
    assert w.latency_p50_ms == pytest.approx(23.5)  # 1..50 ms plus four 5 ms samples
    assert w.latency_p99_ms is not None and w.latency_p99_ms >= 49
    assert w.routes == {"GET /orders/{id}": 53}
    assert w.src_principal == P and w.dst_service == "orders" and w.dst_cluster == "eu"
    assert w.edge == f"{P}@eu -> orders.shop@eu"


def test_caller_fallbacks_and_separate_edges() -> None:
    agg = WindowAggregator(window_s=10, allowed_lateness_s=0)
    agg.add_batch("s", [
        rec(1),
        rec(2, src_cluster="us"),  # same principal, other cluster: another caller identity
        rec(3, src_principal=None, src_namespace="shop", src_workload="cron"),
        rec(4, src_principal=None, src_workload=None),
        rec(5, kind=API_AUDIT, dst_service="kube-apiserver"),
    ])
    out = {(w.src_principal, w.src_cluster, w.dst_service) for w in agg.flush()}
    assert out == {
        (P, "eu", "orders"), (P, "us", "orders"), ("shop/cron", "eu", "orders"),
        (ANONYMOUS, "eu", "orders"), (P, "eu", "kube-apiserver"),
    }


def test_watermark_lateness_and_late_records_not_merged() -> None:
    agg = WindowAggregator(window_s=60, allowed_lateness_s=30)
    agg.add_batch("s", [rec(10), rec(70)], 1)
    assert agg.close_ready() == []  # watermark 40: window [0,60) still open
    agg.add_batch("s", [rec(55)], 3)  # within lateness: merged
    agg.add_batch("s", [rec(95)], 4)  # watermark 65 -> [0,60) closes
    closed = agg.close_ready()
    assert [(w.window_start, w.requests) for w in closed] == [(0, 2)]
    agg.add_batch("s", [rec(59), rec(5)], 5)  # late: counted, never merged
    assert agg.stats.late == 2 and agg.stats.late_by_stream == {"s": 2}
    rest = agg.flush()
    assert [(w.window_start, w.requests) for w in rest] == [(60, 2)]
    assert sum(w.requests for w in closed + rest) == 4


def test_record_for_empty_closed_window_is_late_not_a_second_copy() -> None:
    agg = WindowAggregator(window_s=60, allowed_lateness_s=0)
    agg.add_batch("s", [rec(10)], 1)
    agg.add_batch("s", [rec(200)], 2)  # closes [0,60), [60,120) and [120,180) (empty)
    first = agg.close_ready()
    agg.add_batch("s", [rec(130)], 3)  # [120,180) is closed although it never had data
    assert agg.stats.late == 1
    assert [w.window_start for w in first + agg.flush()] == [0, 180]


def test_watermark_waits_for_slowest_stream_and_idle_streams_release_it() -> None:
    agg = WindowAggregator(window_s=60, allowed_lateness_s=0)
    agg.register_stream("slow")
    agg.add_batch("fast", [rec(500)], 1)
    assert agg.watermark == -math.inf and agg.close_ready() == []
    agg.add_batch("slow", [rec(30)], 1)
    assert agg.watermark == 30
    agg.add_batch("fast", [rec(31)], 2)  # not late: the slow stream held the clock
    assert agg.stats.late == 0
    agg.mark_idle("slow")
    assert agg.watermark == 500
    assert {w.window_start for w in agg.close_ready()} == {0}


def test_end_stream_releases_watermark_and_watermark_never_moves_back() -> None:
    agg = WindowAggregator(window_s=60, allowed_lateness_s=0)
    agg.add_batch("a", [rec(300)], 1)
    agg.add_batch("b", [rec(100)], 1)
    assert agg.close_ready() == []  # b holds the watermark at 100: [60,120) stays open
    agg.end_stream("b")
    assert agg.watermark == 300
    assert [w.window_start for w in agg.close_ready()] == [60]  # [300,360) still open
    agg.register_stream("c")  # a new stream cannot reopen closed windows
    assert agg.watermark == 300


def test_commit_positions_never_pass_open_windows() -> None:
    agg = WindowAggregator(window_s=60, allowed_lateness_s=0)
    agg.add_batch("p0", [rec(10)], 100)
    agg.note_offset("p0", 100)
    agg.add_batch("p0", [rec(70)], 101)
    agg.note_offset("p0", 101)
    assert agg.positions() == {"p0": 100}  # offset 100 feeds the open window [0,60)
    agg.close_ready()  # watermark 70: [0,60) closes
    assert agg.positions() == {"p0": 101}
    agg.flush()
    assert agg.positions() == {"p0": 102}


def test_max_open_edges_folds_into_overflow() -> None:
    agg = WindowAggregator(window_s=60, max_open_edges=3)
    agg.add_batch("s", [rec(1, dst_service=f"svc{i}") for i in range(10)])
    out = agg.flush()
    assert agg.stats.overflow == 8  # 2 real edges fit beside the one overflow edge
    over = [w for w in out if w.src_principal == OVERFLOW]
    assert len(out) == 3 and over[0].requests == 8
    assert sum(w.requests for w in out) == 10


def test_idle_edges_are_evicted_from_edge_table() -> None:
    agg = WindowAggregator(window_s=60, allowed_lateness_s=0, edge_idle_ttl_s=600)
    agg.add_batch("s", [rec(1, dst_service=f"svc{i}") for i in range(2000)])
    agg.add_batch("s", [rec(5000, dst_service="late-comer")])
    agg.close_ready()
    assert agg.edges_tracked == 1 and agg.stats.edges_evicted == 2000


def test_memory_bounded_samples_and_routes() -> None:
    agg = WindowAggregator(window_s=60)
    agg.add_batch("s", [rec(1, route=f"/r{i}/x", duration_ms=1.0) for i in range(5000)])
    (w,) = agg.flush()
    assert len(w.routes) <= 65 and sum(w.routes.values()) == 5000
    assert w.requests == 5000


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 3600, allow_nan=False), st.sampled_from([OK, ERROR, DENIED])),
        max_size=300,
    ),
    st.integers(1, 50),
)
def test_every_record_is_counted_once_either_windowed_or_late(
    items: list[tuple[float, str]], chunk: int
) -> None:
    agg = WindowAggregator(window_s=60, allowed_lateness_s=15)
    windows = []
    for i in range(0, len(items), chunk):
        agg.add_batch("s", [rec(ts, outcome=o) for ts, o in items[i : i + chunk]], i)
        windows += agg.close_ready()
    windows += agg.flush()
    assert sum(w.requests for w in windows) + agg.stats.late == len(items)
    seen = [(w.window_start, w.edge) for w in windows]
    assert len(seen) == len(set(seen)), "an edge-window was emitted twice"
    for w in windows:
        assert w.ok + w.errors + w.denied + w.unauthenticated == w.requests


def test_api_audit_caller_belongs_to_the_apiserver_cluster() -> None:
    r = FlowRecord(ts=0, kind=API_AUDIT, src_principal="system:serviceaccount:ci:deployer",
                   dst_service="kube-apiserver")
    got = Resolver().resolve(r, StaticAttrs(cluster="prod-eu"))
    assert (got.src_cluster, got.dst_cluster) == ("prod-eu", "prod-eu")
    # an L7 request from an unknown place stays unknown: no guessing the caller's cluster
    assert Resolver().resolve(FlowRecord(ts=0), StaticAttrs(cluster="prod-eu")).src_cluster == UNKNOWN
