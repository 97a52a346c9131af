"""Hubble decoder: every shared fixture file, counted against the fixtures README."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from detector.decoders import get_decoder
from detector.decoders.hubble import decode, parse_time, workload_from_pod
from detector.errors import DecodeError, PartialDecode
from detector.records import (
    AUTH_FAILURE,
    CONNECTION,
    DENIED,
    ERROR,
    OK,
    REQUEST,
    UNAUTHENTICATED,
    FlowRecord,
)


def _lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()]


def _decode_file(path: Path) -> list[FlowRecord]:
    return [r for i, ln in enumerate(_lines(path), 1) for r in decode(ln, path.name, i)]


def _raw(path: Path) -> list[dict]:
    return [orjson.loads(ln)["flow"] for ln in _lines(path)]


def test_registered() -> None:
    assert get_decoder("hubble") is decode


def test_every_fixture_file_decodes_without_error(fixtures_dir: Path) -> None:
    files = sorted((fixtures_dir / "hubble").glob("*.json*"))
    assert len(files) == 8
    for f in files:
        for i, ln in enumerate(_lines(f), 1):
            for r in decode(ln, f.name, i):
                assert r.source == f.name and r.offset == i
                assert r.ts > 1.6e9
                assert r.kind in (REQUEST, CONNECTION, AUTH_FAILURE)


def test_348_http_flows(fixtures_dir: Path) -> None:
    path = fixtures_dir / "hubble" / "hubble-otel_basic-sample-348-http-flows.json"
    raw = _raw(path)
    assert len(raw) == 348
    types = Counter(f["l7"]["type"] for f in raw)
    assert types == {"REQUEST": 175, "RESPONSE": 173}
    recs = _decode_file(path)
    # One record per exchange, from the RESPONSE (it has the status); REQUESTs are skipped.
    assert len(recs) == 173
    assert Counter(r.status for r in recs) == {503: 151, 200: 22}
    assert all(r.kind == REQUEST and r.method == "GET" for r in recs)
    assert sum(r.outcome == ERROR for r in recs) == 151
    assert all(r.duration_ms is not None and r.duration_ms > 0 for r in recs)
    # The RESPONSE is reported server -> client; the record is caller -> callee again.
    first = recs[0]
    assert first.src_workload == "prometheus" and first.src_namespace == "istio-system"
    assert first.src_cluster == "default"
    assert first.src_ip == "10.156.2.7"
    assert first.dst_service == "node-local-dns" and first.dst_port == 9253
    assert first.route == "/metrics"
    assert first.request_id == "e69069f2-fa66-4826-9746-f4b16c89559b"
    assert first.duration_ms == pytest.approx(999.958359)
    assert first.src_principal is None


def test_400_tcp_flows(fixtures_dir: Path) -> None:
    path = fixtures_dir / "hubble" / "hubble-otel_basic-sample-400-tcp-flows.json"
    raw = _raw(path)
    assert Counter(f["verdict"] for f in raw) == {"FORWARDED": 373, "REDIRECTED": 27}
    fwd = [f for f in raw if f["verdict"] == "FORWARDED"]
    assert Counter(f["Type"] for f in fwd) == {"L3_L4": 308, "L7": 65}
    recs = _decode_file(path)
    kinds = Counter(r.kind for r in recs)
    # 32 HTTP responses (19 + 13); connection opens: SYN without ACK, not a reply, not TO_PROXY.
    syn_opens = sum(
        1
        for f in fwd
        if f["Type"] == "L3_L4"
        and not f.get("is_reply")
        and f.get("trace_observation_point") != "TO_PROXY"
        and f["l4"]["TCP"].get("flags", {}).get("SYN")
        and not f["l4"]["TCP"]["flags"].get("ACK")
    )
    assert syn_opens == 16
    assert kinds == {REQUEST: 32, CONNECTION: 16}
    assert all(r.src_cluster == "kind-kind" for r in recs if r.src_namespace)
    # the node itself (kubelet probes) has no pod: Cilium's reserved identity names it
    host = [r for r in recs if r.src_namespace is None]
    assert len(host) == 1 and host[0].src_workload == "reserved:host"
    # endpoints on other nodes carry identity labels only: namespace and app come from them
    remote = [r for r in recs if r.src_namespace == "bookinfo" and r.src_workload == "ratings"]
    assert remote and all(r.src_cluster == "kind-kind" for r in remote)
    assert all(r.outcome == OK for r in recs)
    req = next(r for r in recs if r.kind == REQUEST)
    assert (req.src_workload, req.dst_service) == ("reviews-v2", "ratings-v1")
    assert (req.src_namespace, req.dst_namespace, req.dst_port) == ("bookinfo", "bookinfo", 9080)
    assert req.route == "/ratings/0" and req.status == 200


def test_redirected_policy_verdicts_are_skipped(fixtures_dir: Path) -> None:
    path = fixtures_dir / "hubble" / "hubble-otel_basic-sample-400-l7-redirected-flows.json"
    raw = _raw(path)
    assert len(raw) == 400
    assert all(f["verdict"] == "REDIRECTED" and f["event_type"]["type"] == 5 for f in raw)
    assert _decode_file(path) == []


def test_udp_and_dns_flows(fixtures_dir: Path) -> None:
    recs = _decode_file(fixtures_dir / "hubble" / "hubble-otel_basic-sample-400-udp-flows.json")
    dns = [r for r in recs if r.method == "DNS"]
    assert len(dns) == 74  # one per query; 74 answers skipped
    assert Counter(r.kind for r in recs) == {REQUEST: 74, CONNECTION: 74}
    recs5 = _decode_file(fixtures_dir / "hubble" / "hubble-otel_basic-sample-5-dns-flows.json")
    assert len(recs5) == 3
    q = recs5[0]
    assert q.route == "istiod-istio-1611.istio-system.svc.istio-system.svc.cluster.local."
    assert q.dst_service == "kube-dns" and q.dst_port == 53 and q.detail == "A"
    assert q.src_workload == "node-local-dns" and q.src_cluster == "default"


def test_small_samples(fixtures_dir: Path) -> None:
    recs = _decode_file(fixtures_dir / "hubble" / "hubble-otel_basic-sample-5-http-flows.json")
    assert [r.status for r in recs] == [503, 503]
    ten = _decode_file(fixtures_dir / "hubble" / "hubble-otel_basic-sample-10-flows.json")
    assert [r.kind for r in ten] == [CONNECTION]  # the one opening SYN


def test_dropped_flows(fixtures_dir: Path) -> None:
    path = fixtures_dir / "hubble" / "cilium-docs_export-rst_dropped-flows.jsonl"
    raw = _raw(path)
    assert [f["verdict"] for f in raw] == ["DROPPED", "DROPPED"]
    # NB: the fixtures README says both are POLICY_DENIED; the file has one INVALID_SOURCE_IP.
    assert [f["drop_reason_desc"] for f in raw] == ["INVALID_SOURCE_IP", "POLICY_DENIED"]
    invalid, denied = _decode_file(path)
    assert denied.kind == CONNECTION and denied.outcome == DENIED
    assert denied.detail == "POLICY_DENIED"
    assert (denied.src_namespace, denied.src_workload) == ("default", "xwing")
    assert (denied.dst_namespace, denied.dst_service, denied.dst_port) == (
        "default",
        "deathstar",
        80,
    )
    # no cluster label: the "<cluster>/<node>" node name says it
    assert denied.src_cluster == "kind-kind" and denied.dst_cluster == "kind-kind"
    assert invalid.outcome == ERROR and invalid.detail == "INVALID_SOURCE_IP"
    assert invalid.src_ip == "fe80::64d8:8aff:fe72:fc14" and invalid.dst_service == "ff02::2"


def _flow(**kw: object) -> dict:
    base: dict = {
        "time": "2024-05-01T12:00:00.5Z",
        "verdict": "FORWARDED",
        "IP": {"source": "10.0.0.1", "destination": "10.0.0.2"},
        "source": {
            "namespace": "shop",
            "pod_name": "web-7d9f8b6c5d-x2x4q",
            "cluster_name": "east",
            "labels": ["k8s:io.cilium.k8s.policy.cluster=ignored"],
        },
        "destination": {
            "namespace": "pay",
            "pod_name": "api-0",
            "workloads": [{"name": "api", "kind": "StatefulSet"}],
            "labels": ["k8s:io.cilium.k8s.policy.cluster=west"],
        },
        "l4": {"TCP": {"source_port": "40000", "destination_port": "8443"}},
    }
    base.update(kw)
    return base


def test_l7_auth_failures_bare_flows_and_uint64_strings() -> None:
    resp = _flow(
        Type="L7",
        is_reply=True,
        IP={"source": "10.0.0.2", "destination": "10.0.0.1"},
        source=_flow()["destination"],
        destination=_flow()["source"],
        l4={"TCP": {"source_port": 8443, "destination_port": 40000}},
        l7={
            "type": "RESPONSE",
            "latency_ns": "2500000",
            "http": {"code": 403, "method": "POST", "url": "https://api/pay?x=1"},
        },
    )
    [r] = decode(orjson.dumps(resp))  # a bare flow, no wrapper
    assert r.kind == AUTH_FAILURE and r.outcome == DENIED and r.status == 403
    assert (r.src_cluster, r.src_workload, r.src_ip) == ("east", "web", "10.0.0.1")
    assert (r.dst_cluster, r.dst_service, r.dst_port) == ("west", "api", 8443)
    assert r.route == "/pay" and r.duration_ms == pytest.approx(2.5)
    assert r.ts == pytest.approx(1714564800.5)
    resp["l7"]["http"]["code"] = 401
    assert decode(orjson.dumps({"flow": resp}))[0].outcome == UNAUTHENTICATED
    # an L7 request denied by policy: no response will follow
    denied = _flow(
        verdict="DROPPED",
        drop_reason_desc="POLICY_DENIED",
        l7={"type": "REQUEST", "http": {"method": "GET", "url": "/admin"}},
    )
    [d] = decode(orjson.dumps({"flow": denied, "node_name": "east/n1"}))
    assert d.kind == AUTH_FAILURE and d.outcome == DENIED and d.route == "/admin"
    # a REQUEST that was forwarded is skipped (its RESPONSE counts it)
    fwd = _flow(l7={"type": "REQUEST", "http": {"method": "GET", "url": "/"}})
    assert decode(orjson.dumps({"flow": fwd})) == []


def test_l4_rules() -> None:
    syn = _flow(l4={"TCP": {"destination_port": 443, "flags": {"SYN": True}}})
    [c] = decode(orjson.dumps(syn))
    assert c.kind == CONNECTION and c.dst_port == 443 and c.outcome == OK
    synack = _flow(l4={"TCP": {"flags": {"SYN": True, "ACK": True}}})
    assert decode(orjson.dumps(synack)) == []
    reply = _flow(is_reply=True, l4={"UDP": {"destination_port": 53}})
    assert decode(orjson.dumps(reply)) == []
    udp = _flow(l4={"UDP": {"destination_port": "53"}})
    assert decode(orjson.dumps(udp))[0].dst_port == 53
    auth = _flow(verdict="DROPPED", drop_reason_desc="AUTH_REQUIRED")
    assert decode(orjson.dumps(auth))[0].outcome == UNAUTHENTICATED
    pv_denied = _flow(verdict="DENIED", event_type={"type": 5})
    assert decode(orjson.dumps(pv_denied))[0].outcome == DENIED
    pv_fwd = _flow(event_type={"type": 5}, l4={"TCP": {"flags": {"SYN": True}}})
    assert decode(orjson.dumps(pv_fwd)) == []


def test_json_array_batch() -> None:
    syn = {"flow": _flow(l4={"TCP": {"flags": {"SYN": True}}})}
    recs = decode(orjson.dumps([syn, syn]))
    assert len(recs) == 2
    with pytest.raises(PartialDecode) as ei:
        decode(orjson.dumps([syn, "junk", {"flow": {"verdict": "DROPPED"}}]))
    assert len(ei.value.records) == 1
    assert sorted(ei.value.problems) == ["bad_timestamp", "not_hubble"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{nope", "not_json"),
        (b"42", "not_hubble"),
        (b'{"a": 1}', "not_hubble"),
        (b'{"flow": 5}', "bad_field"),
        (b'{"flow": {"verdict": "FORWARDED", "time": "yesterday"}}', "bad_timestamp"),
    ],
)
def test_bad_units(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as ei:
        decode(data)
    assert ei.value.reason == reason


@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        ("ratings-v1-b6994bb9-jgqxb", "ratings-v1"),
        ("coredns-558bd4d5db-w2m67", "coredns"),
        ("node-local-dns-r99x7", "node-local-dns"),
        ("nginx-deployment-1787755869-9cvbz", "nginx-deployment"),
        ("web-0", "web-0"),
        ("redis", "redis"),
        ("my-redis", "my-redis"),  # "redis" has vowels: not a generated suffix
    ],
)
def test_workload_from_pod(pod: str, workload: str) -> None:
    assert workload_from_pod(pod) == workload


def test_parse_time() -> None:
    assert parse_time("2021-10-04T14:28:38.735173594Z") == pytest.approx(1633357718.735173594)
    assert parse_time("2021-10-04T14:28:38Z") == 1633357718.0
    assert parse_time("2021-10-04T16:28:38.5+02:00") == pytest.approx(1633357718.5)
    assert parse_time({"seconds": "1633357718", "nanos": 5e8}) == pytest.approx(1633357718.5)
    assert parse_time("2021-10-04T14:28:38.12x4Z") is None
    assert parse_time(None) is None
