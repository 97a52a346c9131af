"""Envoy/Istio access-log decoders: the shared fixtures, each Istio text generation, JSON typed
and all-strings, each auth-failure kind, TCP and codec-error lines, IPv6."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detector.decoders import get_decoder
from detector.decoders.envoy import (
    classify_auth,
    decode_json,
    decode_text,
    parse_ts,
    parse_upstream_cluster,
    split_host,
)
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
)


def _lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()]


def _one(data: bytes, *, json: bool = False) -> FlowRecord:
    recs = (decode_json if json else decode_text)(data, "src", 7)
    assert len(recs) == 1
    rec = recs[0]
    assert isinstance(rec, FlowRecord)
    assert rec.source == "src" and rec.offset == 7
    return rec


# ---------------------------------------------------------------------------------------------
# Shared fixtures


@pytest.fixture(scope="module")
def envoy_dir(fixtures_dir: Path) -> Path:
    d = fixtures_dir / "envoy-istio"
    assert d.is_dir()
    return d


def test_every_envoy_fixture_file_decodes(envoy_dir: Path) -> None:
    files = sorted(envoy_dir.glob("*.log"))
    assert len(files) == 4
    decoded = rejected = 0
    for f in files:
        for line in _lines(f):
            try:
                decode_text(line, f.name, 1)
                decoded += 1
            except DecodeError as e:
                assert e.reason == "not_access_log"
                rejected += 1
    assert (decoded, rejected) == (8, 1)


def test_istio_task_client_and_server_lines(envoy_dir: Path) -> None:
    lines = _lines(envoy_dir / "istio-io_access-log-task_TEXT.log")
    assert len(lines) == 2
    client, server = (_one(ln) for ln in lines)
    # One hop, seen from both sidecars: same request id, one outbound and one inbound line.
    assert client.request_id == server.request_id == "84961386-6d84-929d-98bd-c5aee93b5c88"
    directions = [parse_upstream_cluster(ln.split()[-6].decode())[0] for ln in lines]
    assert directions == ["outbound", "inbound"]
    for r in (client, server):
        assert r.ts == pytest.approx(1606339578.409)
        assert (r.method, r.route, r.status, r.outcome, r.kind) == (
            "GET",
            "/status/418",
            418,
            OK,
            REQUEST,
        )
        assert (r.dst_service, r.dst_namespace, r.dst_port) == ("httpbin", "foo", 8000)
        assert r.src_ip == "10.44.1.23"  # the sleep pod: local app outbound, peer inbound
        assert r.bytes_out == 135 and r.bytes_in == 0
        assert r.detail == "via_upstream"
    assert client.duration_ms == 4.0 and server.duration_ms == 3.0


def test_rbac_deny_fixture_is_denied(envoy_dir: Path) -> None:
    (line,) = _lines(envoy_dir / "istio-io_blog-2022-egress-authz_rbac-deny_TEXT.log")
    r = _one(line)
    assert r.status == 403
    assert r.outcome == DENIED
    assert r.kind == AUTH_FAILURE
    assert r.detail is not None and r.detail.startswith("rbac_access_denied_matched_policy[")
    assert (r.method, r.route) == ("HEAD", "/")
    assert (r.dst_service, r.dst_port) == ("developer.yahoo.com", 443)
    assert r.src_ip == "10.100.0.6"


def test_envoy_docs_default_format(envoy_dir: Path) -> None:
    (line,) = _lines(envoy_dir / "envoy-docs_default-format-example.log")
    r = _one(line)
    assert r.ts == pytest.approx(1460751420.310)
    assert (r.method, r.route, r.status) == ("POST", "/api/v1/locations", 204)
    assert (r.bytes_in, r.bytes_out, r.duration_ms) == (154, 0, 226.0)
    assert r.request_id == "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2"
    assert r.dst_service == "locations"
    assert r.src_ip == "10.0.35.28"  # X-Forwarded-For, as no downstream address is logged


def test_datadog_samples(envoy_dir: Path) -> None:
    lines = _lines(envoy_dir / "datadog-integrations-core_envoy_tests_samples.log")
    assert len(lines) == 5
    out1, in1, giphy, agent = (_one(ln) for ln in lines[:4])
    # Istio 1.1/1.2 (mixer-era) client and server lines of one request.
    assert out1.request_id == in1.request_id == "d209e46f-9ed5-9b61-bbdd-43e22662702a"
    assert (out1.dst_service, out1.dst_namespace, out1.dst_port) == ("httpbin", "default", 8000)
    assert (in1.dst_service, in1.dst_namespace, in1.dst_port) == ("httpbin", "default", 8000)
    assert out1.src_ip == "172.30.146.82" and in1.src_ip == "172.30.146.82"
    assert (out1.duration_ms, in1.duration_ms) == (11.0, 5.0)
    # Envoy default lines: query string dropped from the route, "-" service time is fine.
    assert giphy.route == "/v1/gifs/search"
    assert giphy.dst_service == "api.giphy.com" and giphy.bytes_out == 11187
    assert giphy.src_ip == "23.235.46.35"  # the nearest X-Forwarded-For hop
    assert agent.dst_service == "64.145.79.247" and agent.dst_port == 8001
    # The Envoy application-log line is not an access log.
    with pytest.raises(DecodeError) as exc:
        decode_text(lines[4])
    assert exc.value.reason == "not_access_log"


def test_registry_points_here() -> None:
    # the compiled decoders when built (same records: tests/unit/test_fastpath.py), else these
    from detector import fastpath

    assert get_decoder("envoy_text") is fastpath.decode_envoy_text
    assert fastpath.COMPILED or fastpath.decode_envoy_text is decode_text
    assert get_decoder("envoy_json") is fastpath.decode_envoy_json
    assert fastpath.COMPILED or fastpath.decode_envoy_json is decode_json


# ---------------------------------------------------------------------------------------------
# Istio text generations (our own lines)

ISTIO_19 = (
    b'[2024-05-01T12:00:00.250Z] "GET /api/v1/orders/42?x=1 HTTP/2" 200 - via_upstream - "-" '
    b'12 3456 17 15 "-" "grpc-go/1.60" "req-19" "orders.shop.svc.cluster.local:9090" '
    b'"10.1.2.3:9090" outbound|9090||orders.shop.svc.cluster.local 10.1.0.5:41000 '
    b"10.96.0.20:9090 10.1.0.5:50000 - default"
)
ISTIO_13 = (
    b'[2020-02-03T04:05:06.789Z] "POST /cart HTTP/1.1" 201 - "-" "-" 100 20 5 4 "-" "curl/7" '
    b'"req-13" "cart:8080" "10.2.0.9:8080" outbound|8080||cart.store.svc.cluster.local '
    b"10.2.0.4:33000 10.97.1.1:8080 10.2.0.4:44000 - default"
)
ISTIO_13_NO_ROUTE = ISTIO_13.rsplit(b" ", 1)[0]
ISTIO_11 = (
    b'[2019-03-06T09:31:27.354Z] "DELETE /items/9 HTTP/1.1" 204 - "-" 0 0 3 2 "-" "curl" '
    b'"req-11" "items:80" "10.3.0.2:80" inbound|80|http|items.inv.svc.cluster.local - '
    b"10.3.0.2:80 10.3.0.7:5555 outbound_.80_._.items.inv.svc.cluster.local"
)


def test_istio_19() -> None:
    r = _one(ISTIO_19)
    assert r.ts == pytest.approx(1714564800.25)
    assert (r.method, r.route, r.status, r.outcome) == ("GET", "/api/v1/orders/42", 200, OK)
    assert (r.bytes_in, r.bytes_out, r.duration_ms) == (12, 3456, 17.0)
    assert (r.dst_service, r.dst_namespace, r.dst_port) == ("orders", "shop", 9090)
    assert r.src_ip == "10.1.0.5" and r.request_id == "req-19"


@pytest.mark.parametrize("line", [ISTIO_13, ISTIO_13_NO_ROUTE])
def test_istio_13_to_18(line: bytes) -> None:
    r = _one(line)
    assert (r.method, r.route, r.status) == ("POST", "/cart", 201)
    assert (r.bytes_in, r.bytes_out, r.duration_ms) == (100, 20, 5.0)
    assert (r.dst_service, r.dst_namespace, r.dst_port) == ("cart", "store", 8080)
    assert r.src_ip == "10.2.0.4" and r.request_id == "req-13"
    assert r.detail is None


def test_istio_11_inbound_cluster_names_the_service() -> None:
    r = _one(ISTIO_11)
    assert (r.method, r.route, r.status) == ("DELETE", "/items/9", 204)
    assert (r.dst_service, r.dst_namespace, r.dst_port) == ("items", "inv", 80)
    assert r.src_ip == "10.3.0.7"


def test_inbound_without_host_uses_sni() -> None:
    line = ISTIO_19.replace(
        b"outbound|9090||orders.shop.svc.cluster.local", b"inbound|9090||"
    ).replace(b" - default", b" outbound_.9090_.v2_.orders.shop.svc.cluster.local default")
    r = _one(line)
    assert (r.dst_service, r.dst_namespace, r.dst_port) == ("orders", "shop", 9090)


def test_tcp_line_is_a_connection() -> None:
    line = (
        b'[2024-05-01T12:00:01.000Z] "- - -" 0 - - - "-" 1234 5678 900 - "-" "-" "-" "-" '
        b'"10.4.0.2:5432" outbound|5432||postgres.db.svc.cluster.local 10.4.0.1:40000 '
        b"10.96.5.5:5432 10.4.0.1:39999 - -"
    )
    r = _one(line)
    assert r.kind == CONNECTION and r.outcome == OK  # status 0 is normal for TCP
    assert (r.method, r.route, r.status) == (None, None, 0)
    assert (r.bytes_in, r.bytes_out, r.duration_ms) == (1234, 5678, 900.0)
    assert (r.dst_service, r.dst_namespace, r.dst_port) == ("postgres", "db", 5432)
    failed = _one(line.replace(b'" 0 - - -', b'" 0 UF - -'))
    assert failed.kind == CONNECTION and failed.outcome == ERROR


def test_tcp_rbac_close_is_denied() -> None:
    line = (
        b'[2024-05-01T12:00:01.000Z] "- - -" 0 - - rbac_access_denied_matched_policy[none] "-" '
        b'0 0 1 - "-" "-" "-" "-" "-" inbound|5432|| - 10.4.0.2:5432 10.4.0.1:39999 - -'
    )
    r = _one(line)
    assert r.outcome == DENIED and r.kind == AUTH_FAILURE
    assert r.detail == "rbac_access_denied_matched_policy[none]"


def test_codec_error_line() -> None:
    line = (
        b'[2024-05-01T12:00:02.000Z] "- - HTTP/1.1" 400 DPE http1.codec_error - "-" 0 11 0 - '
        b'"-" "-" "-" "-" "-" - - 10.5.0.2:80 10.5.0.9:5000 - -'
    )
    r = _one(line)
    assert r.kind == REQUEST and (r.method, r.route, r.status) == (None, None, 400)
    assert r.detail == "http1.codec_error" and r.dst_port == 80


def test_ipv6_addresses() -> None:
    line = (
        b'[2024-05-01T12:00:03.000Z] "GET /v6 HTTP/1.1" 200 - via_upstream - "-" 0 1 2 1 "-" '
        b'"curl" "req-6" "[fd00::10]:8080" "[fd00::20]:8080" PassthroughCluster '
        b"[fd00::1]:40000 [fd00::10]:8080 [fd00::1]:50000 - allow_any"
    )
    r = _one(line)
    assert r.src_ip == "fd00::1"
    assert (r.dst_service, r.dst_port) == ("fd00::10", 8080)
    assert split_host("[::1]:80") == ("::1", None, 80)


def test_garbage_and_unknown_layouts() -> None:
    for bad in (b"", b"hello", b"[2021-03-12 15:31:30.492][1][warning][x] hi", b"\xff\xfe"):
        with pytest.raises(DecodeError) as exc:
            decode_text(bad)
        assert exc.value.reason == "not_access_log"
    with pytest.raises(DecodeError) as exc:
        decode_text(b'[2024-05-01T12:00:00Z] "GET / HTTP/1.1" banana')
    assert exc.value.reason == "unknown_layout"
    with pytest.raises(DecodeError) as exc:
        decode_text(ISTIO_19.replace(b"2024-05-01T12:00:00.250Z", b"2024-13-01T12:00:00.250Z"))
    assert exc.value.reason == "bad_timestamp"


# ---------------------------------------------------------------------------------------------
# Auth-failure classification


@pytest.mark.parametrize(
    ("status", "flags", "details", "reason", "expected"),
    [
        (
            403,
            None,
            "rbac_access_denied_matched_policy[ns[foo]-policy[deny]-rule[0]]",
            None,
            DENIED,
        ),
        (401, None, "jwt_authn_access_denied{Jwt_is_missing}", None, UNAUTHENTICATED),
        (
            503,
            "UF",
            "upstream_reset_before_response_started{connection_failure,TLS_error:_268435581}",
            None,
            UNAUTHENTICATED,
        ),
        (
            503,
            "UF,URX",
            "upstream_reset_before_response_started{connection_failure}",
            "TLS error: 268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED",
            UNAUTHENTICATED,
        ),
        (0, "NR", "filter_chain_not_found", None, UNAUTHENTICATED),
        (403, "UAEX", "ext_authz_denied", None, DENIED),
        (403, "UAEX", None, None, DENIED),
        # Not auth failures: the same details without the telling flag, or plain statuses.
        (503, None, "upstream_reset_before_response_started{connection_failure}", None, ERROR),
        (0, None, "filter_chain_not_found", None, ERROR),
        (503, "UH", "no_healthy_upstream", None, ERROR),
        (200, None, "via_upstream", None, OK),
        (403, None, "via_upstream", None, DENIED),
        (401, None, None, None, UNAUTHENTICATED),
    ],
)
def test_classify_auth(
    status: int, flags: str | None, details: str | None, reason: str | None, expected: str
) -> None:
    assert classify_auth(status, flags, details, reason) == expected


def test_auth_failure_lines_in_text() -> None:
    jwt = ISTIO_19.replace(
        b'" 200 - via_upstream - "-"', b'" 401 - jwt_authn_access_denied{x} - "-"'
    )
    r = _one(jwt)
    assert (r.status, r.outcome, r.kind) == (401, UNAUTHENTICATED, AUTH_FAILURE)
    mtls = ISTIO_19.replace(
        b'" 200 - via_upstream - "-"',
        b'" 503 UF,URX upstream_reset_before_response_started{connection_failure,TLS_error:_x} '
        b'- "TLS error: 268435581"',
    )
    r = _one(mtls)
    assert (r.status, r.outcome, r.kind) == (503, UNAUTHENTICATED, AUTH_FAILURE)
    plain = ISTIO_19.replace(b'" 200 - via_upstream - "-"', b'" 0 NR filter_chain_not_found - "-"')
    assert _one(plain).outcome == UNAUTHENTICATED


# ---------------------------------------------------------------------------------------------
# JSON

TYPED: dict[str, object] = {
    "start_time": "2024-05-01T12:00:00.123Z",
    "route_name": "default",
    "method": "GET",
    "path": "/api/v1/customers/7?expand=1",
    "protocol": "HTTP/1.1",
    "response_code": 200,
    "response_flags": "-",
    "response_code_details": "via_upstream",
    "connection_termination_details": None,
    "upstream_transport_failure_reason": None,
    "bytes_received": 10,
    "bytes_sent": 1234,
    "duration": 12,
    "upstream_service_time": "11",
    "x_forwarded_for": None,
    "user_agent": "Go-http-client/1.1",
    "request_id": "rid-1",
    "authority": "customers.shop.svc.cluster.local:8080",
    "upstream_host": "10.44.1.27:8080",
    "upstream_cluster": "inbound|8080||",
    "upstream_local_address": "127.0.0.6:37652",
    "downstream_local_address": "10.44.1.27:8080",
    "downstream_remote_address": "10.44.1.23:46520",
    "requested_server_name": "outbound_.8080_._.customers.shop.svc.cluster.local",
}
assert len(TYPED) == 24


def test_json_typed_default_keys() -> None:
    r = _one(orjson.dumps(TYPED), json=True)
    assert r.ts == pytest.approx(1714564800.123)
    assert (r.method, r.route, r.status, r.outcome, r.kind) == (
        "GET",
        "/api/v1/customers/7",
        200,
        OK,
        REQUEST,
    )
    assert (r.bytes_in, r.bytes_out, r.duration_ms) == (10, 1234, 12.0)
    assert (r.dst_service, r.dst_namespace, r.dst_port) == ("customers", "shop", 8080)
    assert r.src_ip == "10.44.1.23" and r.request_id == "rid-1"
    assert r.detail == "via_upstream"


def test_json_all_strings_istio_13() -> None:
    # Istio 1.3-style: every value a string, "-" for unset, response_code "0" for TCP.
    obj = {k: ("-" if v is None else str(v)) for k, v in TYPED.items()}
    r = _one(orjson.dumps(obj), json=True)
    assert (r.status, r.bytes_in, r.bytes_out, r.duration_ms) == (200, 10, 1234, 12.0)
    assert r.detail == "via_upstream"
    tcp = dict(
        obj, method="-", path="-", protocol="-", response_code="0", response_code_details="-"
    )
    r = _one(orjson.dumps(tcp), json=True)
    assert (r.kind, r.status, r.outcome, r.method) == (CONNECTION, 0, OK, None)


def test_json_identities_and_custom_keys() -> None:
    obj = dict(
        TYPED,
        downstream_peer_uri_san="spiffe://cluster.local/ns/web/sa/frontend",
        source_cluster="east",
        destination_cluster="west",
        traceparent="00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        my_custom_key={"nested": True},
    )
    r = _one(orjson.dumps(obj), json=True)
    assert r.src_principal == "spiffe://cluster.local/ns/web/sa/frontend"
    assert r.src_namespace == "web"
    assert (r.src_cluster, r.dst_cluster) == ("east", "west")
    assert r.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    labels = dict(
        TYPED,
        source_principal="spiffe://td/ns/a/sa/b",
        source_workload="b-deploy",
        destination_service="pay.billing.svc.cluster.local",
    )
    r = _one(orjson.dumps(labels), json=True)
    assert (r.src_principal, r.src_namespace, r.src_workload) == (
        "spiffe://td/ns/a/sa/b",
        "a",
        "b-deploy",
    )
    assert (r.dst_service, r.dst_namespace) == ("pay", "billing")
    xfcc = dict(
        TYPED,
        x_forwarded_client_cert='By=spiffe://td/ns/shop/sa/customers;Hash=abc;Subject="";'
        "URI=spiffe://td/ns/web/sa/frontend",
    )
    assert _one(orjson.dumps(xfcc), json=True).src_principal == "spiffe://td/ns/web/sa/frontend"


def test_json_rbac_deny_and_mtls_failure() -> None:
    deny = dict(
        TYPED,
        response_code=403,
        response_code_details="rbac_access_denied_matched_policy[ns[shop]-policy[deny]-rule[0]]",
    )
    r = _one(orjson.dumps(deny), json=True)
    assert (r.outcome, r.kind) == (DENIED, AUTH_FAILURE)
    mtls = dict(
        TYPED,
        response_code=503,
        response_flags="UF",
        response_code_details="upstream_reset_before_response_started{connection_failure}",
        upstream_transport_failure_reason="TLS error: CERTIFICATE_VERIFY_FAILED",
    )
    assert _one(orjson.dumps(mtls), json=True).outcome == UNAUTHENTICATED


def test_json_bad_input() -> None:
    cases = [
        (b"not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"method": "GET"}', "not_access_log"),
        (orjson.dumps(dict(TYPED, start_time="yesterday")), "bad_timestamp"),
        (orjson.dumps(dict(TYPED, start_time=[1])), "bad_timestamp"),
    ]
    for data, reason in cases:
        with pytest.raises(DecodeError) as exc:
            decode_json(data)
        assert exc.value.reason == reason
    weird = dict(TYPED, method=7, path=["x"], response_code="abc", bytes_sent=-5, duration="fast")
    r = _one(orjson.dumps(weird), json=True)
    assert r.method == "7" and r.route is None and r.status is None
    assert r.bytes_out == 0 and r.duration_ms is None


def test_numeric_start_time_and_zones() -> None:
    assert decode_json(orjson.dumps(dict(TYPED, start_time=1714564800123)))[0].ts == pytest.approx(
        1714564800.123
    )
    assert parse_ts("2024-05-01T14:00:00.5+02:00") == pytest.approx(1714564800.5)
    assert parse_ts("2024-05-01T12:00:00Z") == 1714564800.0
    assert parse_ts("2022-08-23T20:33:42.321746212Z") == pytest.approx(1661286822.321746212)
    with pytest.raises(ValueError):
        parse_ts("2024-05-01T12:00:00.Z")


def test_upstream_cluster_parsing() -> None:
    assert parse_upstream_cluster("outbound|8000||httpbin.foo.svc.cluster.local") == (
        "outbound",
        8000,
        "httpbin",
        "foo",
    )
    assert parse_upstream_cluster("outbound|9080|v1|reviews.default.svc.cluster.local")[2:] == (
        "reviews",
        "default",
    )
    assert parse_upstream_cluster("inbound|8000||") == ("inbound", 8000, None, None)
    assert parse_upstream_cluster("PassthroughCluster") == (None, None, None, None)


def test_cluster_fqdn_without_a_service_name_is_not_an_empty_service() -> None:
    # found by the fuzzer: "outbound|8000||.foo.svc.cluster.local" once gave dst_service ""
    from detector.decoders.envoy import parse_upstream_cluster

    _, port, svc, ns = parse_upstream_cluster("outbound|8000||.foo.svc.cluster.local")
    assert port == 8000 and svc and svc != "" and ns is None
    assert parse_upstream_cluster("inbound|8000||-")[2] is None  # "-" is no value
