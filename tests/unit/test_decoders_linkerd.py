"""Linkerd access-log decoder: the shared JSON and apache fixtures, identities, empty strings."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detector.decoders import get_decoder
from detector.decoders.linkerd import decode, identity_namespace
from detector.errors import DecodeError
from detector.records import AUTH_FAILURE, DENIED, OK, REQUEST, UNAUTHENTICATED, FlowRecord

TRAFFIC = "traffic.booksapp.serviceaccount.identity.linkerd.cluster.local"


def _all(path: Path) -> list[FlowRecord]:
    out: list[FlowRecord] = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        recs = decode(line, path.name, n)
        assert len(recs) == 1 and recs[0].offset == n and recs[0].source == path.name
        out.extend(recs)
    return out


def test_registry_points_here() -> None:
    assert get_decoder("linkerd") is decode


def test_json_fixture(fixtures_dir: Path) -> None:
    recs = _all(fixtures_dir / "linkerd" / "linkerd-docs_access-log.json.log")
    assert len(recs) == 5
    assert [r.method for r in recs] == ["GET", "POST", "GET", "POST", "GET"]
    assert [r.status for r in recs] == [200, 303, 200, 303, 200]
    assert [r.route for r in recs] == ["/", "/authors", "/authors/105", "/books", "/ping"]
    first = recs[0]
    assert first.ts == pytest.approx(1661286822.321746212)
    assert (first.src_principal, first.src_namespace) == (TRAFFIC, "booksapp")
    assert first.src_ip == "10.42.0.70"
    assert (first.dst_service, first.dst_port, first.dst_namespace) == ("webapp", 7000, None)
    assert first.bytes_in == 0  # "request_bytes": "" is unknown
    assert first.bytes_out == 19627
    assert first.duration_ms == pytest.approx(14.441135)
    assert first.trace_id is None  # "trace_id": ""
    assert recs[1].bytes_in == 33
    probe = recs[4]
    assert probe.src_principal is None and probe.src_namespace is None  # "client.id": "-"
    assert (probe.dst_service, probe.dst_port) == ("10.42.0.69", 7000)
    assert all(r.kind == REQUEST and r.outcome == OK for r in recs)


def test_apache_fixture(fixtures_dir: Path) -> None:
    recs = _all(fixtures_dir / "linkerd" / "linkerd-docs_access-log.apache.log")
    assert len(recs) == 5
    assert [r.route for r in recs] == ["/", "/authors", "/authors/104", "/books", "/ping"]
    assert [r.status for r in recs] == [200, 303, 200, 303, 200]
    first = recs[0]
    assert first.ts == pytest.approx(1661286500.071809491)
    assert (first.src_principal, first.src_namespace, first.src_ip) == (
        TRAFFIC,
        "booksapp",
        "10.42.0.63",
    )
    assert (first.dst_service, first.dst_port) == ("webapp", 7000)  # from the absolute URI
    last = recs[4]
    assert last.src_principal is None and last.src_ip == "10.42.0.1" and last.dst_service is None


def test_denials_and_trace_ids() -> None:
    base = {
        "client.addr": "[fd00::5]:4000",
        "client.id": "web.shop.serviceaccount.identity.linkerd.east.example",
        "host": "api.shop.svc.cluster.local:8080",
        "method": "GET",
        "uri": "/v1/x?y=1",
        "status": 403,
        "timestamp": "2024-05-01T12:00:00Z",
        "total_ns": "",
        "trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736",
    }
    (r,) = decode(orjson.dumps(base))
    assert (r.outcome, r.kind) == (DENIED, AUTH_FAILURE)
    assert (r.src_namespace, r.src_ip) == ("shop", "fd00::5")
    assert (r.dst_service, r.dst_namespace, r.dst_port) == ("api", "shop", 8080)
    assert r.route == "/v1/x" and r.duration_ms is None
    assert r.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    (r,) = decode(orjson.dumps(dict(base, status=401)))
    assert r.outcome == UNAUTHENTICATED


def test_identity_namespace() -> None:
    assert identity_namespace(TRAFFIC) == "booksapp"
    assert identity_namespace("spiffe://td/ns/a/sa/b") is None
    assert identity_namespace(".serviceaccount.identity.linkerd.x") is None
    assert identity_namespace(None) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_access_log"),
        (b"hello world", "not_access_log"),
        (b"{oops", "not_json"),
        (b'{"status": 200}', "not_access_log"),
        (b'{"client.addr": "1.2.3.4:5", "timestamp": "never"}', "bad_timestamp"),
        (b'1.2.3.4:5 - - [soon] "GET / HTTP/1.1" 200', "bad_timestamp"),
    ],
)
def test_bad_lines(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode(data)
    assert exc.value.reason == reason
