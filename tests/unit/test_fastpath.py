"""The compiled hot path (``detector._fastpath``) against the pure-Python reference.

Same records (values and types), same ``DecodeError`` reasons, same edge windows and aggregator
state, same dead letters, on hand-written edge cases, on generated lines (hypothesis), on the
simulator's traffic and on the real fixtures; plus the ``DETECTOR_PURE_PYTHON`` switch. The
comparisons need the compiled module and are skipped (visibly) when it was not built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.decoders import envoy
from detector.errors import DecodeError
from detector.flows import WindowAggregator
from detector.records import FIELDS, FlowRecord

try:
    from detector import _fastpath as compiled  # type: ignore[attr-defined]
except ImportError:  # not built: only the pure-Python tests below run
    compiled = None

needs_compiled = pytest.mark.skipif(compiled is None, reason="detector._fastpath is not built")

T = "2024-05-01T12:00:00.123Z"
BASE: dict[str, Any] = {
    "start_time": T,
    "method": "GET",
    "path": "/api/v1/orders/42?x=1",
    "protocol": "HTTP/1.1",
    "response_code": 200,
    "response_flags": "-",
    "response_code_details": "via_upstream",
    "connection_termination_details": None,
    "upstream_transport_failure_reason": None,
    "bytes_received": 0,
    "bytes_sent": 1937,
    "duration": 16,
    "upstream_service_time": "15",
    "x_forwarded_for": None,
    "user_agent": "curl/8.0",
    "request_id": "b3fe8e32-1a6b-4034-85a5-deb56dfb481f",
    "authority": "orders-api.orders.svc.cluster.local:8080",
    "upstream_host": "10.20.2.144:8080",
    "upstream_cluster": "inbound|8080||",
    "upstream_local_address": "127.0.0.6:60927",
    "downstream_local_address": "10.20.2.144:8080",
    "downstream_remote_address": "10.20.0.108:37531",
    "requested_server_name": "outbound_.8080_._.orders-api.orders.svc.cluster.local",
    "route_name": "default",
    "downstream_peer_uri_san": "spiffe://cluster.local/ns/frontend/sa/bff",
    "upstream_peer_uri_san": None,
    "source_cluster": "prod-us",
    "destination_cluster": "prod-us",
}


def variant(**kw: Any) -> bytes:
    d = dict(BASE)
    for k, v in kw.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return orjson.dumps(d)


_DROP = object()

# Lines that exercise every branch of the compiled decoder and every hand-over to the
# pure-Python one. Each must decode (or fail) exactly as ``envoy.decode_json`` does.
CASES: list[bytes] = [
    variant(),
    variant(start_time="2024-05-01T12:00:00Z"),  # no fraction
    variant(start_time="2024-05-01T12:00:00.1234567890123456789Z"),  # long fraction
    variant(start_time="2024-05-01T12:00:00.5+02:00"),
    variant(start_time="2024-05-01 12:00:00.5Z"),
    variant(start_time="2024-05-01T12:00:00.Z"),
    variant(start_time="2024-05-01T12:00:00.12aZ"),
    variant(start_time="yesterday"),
    variant(start_time=""),
    variant(start_time="-"),
    variant(start_time=1714564800123),  # epoch ms
    variant(start_time=1714564800.5),
    variant(start_time=-5),
    variant(start_time=True),
    variant(start_time=None),  # falls back to "timestamp" (absent here)
    variant(start_time=None, timestamp="2024-05-01T12:00:01.000Z"),
    variant(start_time=_DROP, timestamp="2024-05-01T12:00:01.000Z"),
    variant(start_time=_DROP),
    variant(response_code="403", response_code_details="rbac_access_denied_matched_policy[ns]"),
    variant(response_code="0", bytes_received="12", bytes_sent="-", duration="7"),  # all strings
    variant(response_code=-1, bytes_received=-5, duration=-3),
    variant(response_code=401, response_code_details="jwt_authn_access_denied{x}"),
    variant(response_code=503, response_flags="UF,URX", response_code_details="-"),
    variant(response_code=0, response_flags="UAEX"),
    variant(response_code=200.0),
    variant(response_code=True),
    variant(response_code=12345678901234567890),  # beyond int64: a float for orjson
    variant(bytes_sent=123456789012345678),  # 18 digits
    variant(duration=1.5),
    variant(duration="1.5"),
    variant(duration="nan"),
    variant(duration=None),
    variant(method=None, protocol=None, path=None, response_code=0),  # TCP
    variant(method="-", protocol="-", path="-", response_flags="UF", response_code=0),
    variant(
        method=None,
        protocol=None,
        response_code=0,
        connection_termination_details="rbac_access_denied_matched_policy[x]",
    ),
    variant(
        response_code=0,
        response_flags="UF",
        response_code_details="upstream_reset_before_response_started{TLS_error}",
    ),
    variant(upstream_transport_failure_reason="TLS_error:CERTIFICATE_VERIFY_FAILED"),
    variant(path=""),
    variant(path="?only=query"),
    variant(path="/a b"),
    variant(method=""),
    variant(method=5),
    variant(authority=None, requested_server_name=None),
    variant(upstream_cluster="outbound|9080||reviews.default.svc.cluster.local"),
    variant(upstream_cluster="outbound|9080|v1|reviews.default.svc.cluster.local"),
    variant(upstream_cluster="inbound|9080|http|reviews.default.svc.cluster.local"),
    variant(upstream_cluster="PassthroughCluster", authority="example.com"),
    variant(upstream_cluster=None, authority="[::1]:80", requested_server_name=None),
    variant(downstream_local_address="10.0.0.1:9999", upstream_cluster="x", authority="h"),
    variant(downstream_remote_address="[fd00::1]:5"),
    variant(downstream_remote_address="fd00::1"),
    variant(downstream_remote_address="[10.0.0.1]:5"),
    variant(downstream_remote_address=":5"),
    variant(downstream_remote_address="/var/run/sock"),
    variant(downstream_remote_address=None, x_forwarded_for="1.2.3.4, 10.0.0.9"),
    variant(downstream_remote_address=7),
    variant(downstream_peer_uri_san=None),
    variant(downstream_peer_uri_san=None, source_principal="spiffe://td/ns/a/sa/b"),
    variant(
        downstream_peer_uri_san=None,
        upstream_cluster="outbound|80||a.b.svc.cluster.local",
        upstream_local_uri_san="spiffe://td/ns/c/sa/d",
    ),
    variant(
        downstream_peer_uri_san=None,
        upstream_cluster="outbound|80||a.b.svc.cluster.local",
        upstream_local_uri_san=5,
    ),
    variant(downstream_peer_uri_san=None, x_forwarded_client_cert="By=x;URI=spiffe://td/ns/e/sa/f"),
    variant(downstream_peer_uri_san="linkerd-ish.identity"),
    *[
        variant(downstream_peer_uri_san=p)
        for p in (
            "spiffe://td/ns",
            "spiffe://td/ns/",
            "spiffe://td/ns/a",
            "spiffe://td/nsx/a/sa/b",
            "spiffe://td",
            "spiffe:///ns/a/sa/b",
            "spiffe://td//ns/a",
            "spiffe://td/NS/a",
            "SPIFFE://td/ns/a",
        )
    ],
    variant(source_cluster=None, destination_cluster="-"),
    variant(source_cluster=_DROP, destination_cluster=_DROP),
    variant(source_namespace="ns1", source_workload="wl", destination_namespace="dns"),
    variant(destination_service_namespace="dsn", destination_service_name="dsvc"),
    variant(destination_namespace="a", destination_service_namespace="b"),
    variant(source_cluster=3),
    variant(destination_service="reviews.default.svc.cluster.local"),  # less common keys
    variant(pod_namespace="p", cluster_id="c1"),
    variant(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7"),
    variant(x_request_id="rid"),
    variant(destination_port=8080),
    variant(user_agent="caf\u00e9"),  # non-ASCII
    variant(user_agent='say "hi"'),  # escapes
    variant(path="/\u00fcber"),
    variant(nested={"a": [1, 2]}),
    variant(listed=[1]),
    variant(other=1.5e10),
    variant(other=-0.0),
    variant(other=False),
    b"",
    b"   ",
    b"{}",
    b"[]",
    b'"str"',
    b"null",
    b"{",
    b'{"start_time":',
    b'{"start_time":"' + T.encode() + b'"',
    b'{"start_time":"' + T.encode() + b'",}',
    b'{"start_time":"' + T.encode() + b'"} x',
    b'{"start_time":"' + T.encode() + b'"}  \r\n\t',
    b' \t{ "start_time" : "' + T.encode() + b'" , "method" : "GET" , "protocol":"h" } ',
    b'{"start_time":"' + T.encode() + b'","response_code":01}',
    b'{"start_time":"' + T.encode() + b'","response_code":-0}',
    b'{"start_time":"' + T.encode() + b'","response_code":1e2}',
    b'{"start_time":"' + T.encode() + b'","x":1.}',
    b'{"start_time":"' + T.encode() + b'","x":nul}',
    b'{"start_time":"' + T.encode() + b'","x":tru}',
    b'{"start_time":"' + T.encode() + b'","method":"GET","method":"POST","protocol":"h"}',
    b'{"start_time":"' + T.encode() + b'","method":"a\x01b"}',
    b'{"start_time":"' + T.encode() + b'","method":"\xff\xfe"}',
    b'{"start_time":"' + T.encode() + b'","m\\u0065thod":"GET"}',
    b'{"start_time":"' + T.encode() + b'","method":"G\\u0045T","protocol":"h"}',
    b'{"start_time":"' + T.encode() + b'","method":"G\\ud800T"}',
    b'{"start_time":"' + T.encode() + b'",' + b'"k":"' + b"x" * 5000 + b'"}',
    b"\xef\xbb\xbf" + variant(),  # BOM
    variant()[:-1],  # truncated
    variant()[:200],
    variant().replace(b":", b";", 1),
]


def outcome(decode: Callable[..., list[FlowRecord]], data: Any) -> Any:
    """What a decoder did with ``data``, comparable with ``==``: typed values or the reason."""
    try:
        recs = decode(data, "src", 7)
    except DecodeError as e:
        return ("error", e.reason)
    return [(type(r), [(type(v).__name__, repr(v)) for v in r]) for r in recs]


def same(data: Any) -> None:
    assert outcome(compiled.decode_envoy_json, data) == outcome(envoy.decode_json, data), data


@needs_compiled
@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_compiled_decoder_matches_reference_on_edge_cases(data: bytes) -> None:
    same(data)


@needs_compiled
def test_compiled_decoder_matches_on_simulated_traffic_and_fixtures(fixtures_dir: Path) -> None:
    from detector.simulation import generate

    start = 1_714_557_600.0
    n = 0
    for fmt, _cluster, _ts, unit in generate(start, start + 900.0, formats=("envoy_json",)):
        if fmt == "envoy_json":
            same(unit)
            n += 1
    assert n > 1000
    # Every real fixture line (none is an Envoy JSON line the fast path takes, but all of them
    # must be refused or read the same way), and each one as a string value.
    for f in sorted(fixtures_dir.rglob("*")):
        if f.is_file() and f.suffix in (".log", ".json", ".jsonl"):
            for line in f.read_bytes().splitlines()[:400]:
                same(line)
                same(variant(user_agent=line.decode("utf-8", "replace")))


@needs_compiled
def test_compiled_decoder_takes_the_common_shape_itself() -> None:
    """The fast path is really used for the common lines (not handed over every time)."""
    calls = []
    real = envoy.decode_json
    lines = [variant(), variant(response_code="403"), variant(method=None, protocol=None)]
    out, bad = compiled.decode_envoy_json_units(
        lines, [1, 2, 3], "s", 1 << 20, lambda u, o: calls.append(o) or real(u, "s", o)
    )
    assert bad == 0 and calls == [] and [r.offset for r in out] == [1, 2, 3]
    assert out == [real(x, "s", i + 1)[0] for i, x in enumerate(lines)]


_KEYS = sorted(set(BASE) | set(envoy._EXTRA_KEYS) | {"timestamp", "x_forwarded_client_cert"})
_STRINGS = st.one_of(
    st.sampled_from(["-", "", "GET", "HTTP/2", "inbound|80||", "outbound|80||a.b.svc.c", "UF"]),
    st.sampled_from([T, "2024-05-01T12:00:07.5Z", "spiffe://td/ns/a/sa/b", "10.0.0.1:80"]),
    st.sampled_from(["[10.0.0.1]:80", "[::1]:5", "a.b.svc.cluster.local:80", "outbound_.80_._.a"]),
    st.text(max_size=20),
)
_VALUES = st.one_of(
    st.none(),
    _STRINGS,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@needs_compiled
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from([*_KEYS, "zz", ""]), _VALUES, max_size=12),
    st.booleans(),
    st.booleans(),
)
def test_compiled_decoder_matches_on_generated_objects(
    d: dict[str, Any], keep_base: bool, spaced: bool
) -> None:
    obj = {**BASE, **d} if keep_base else d
    seps = (" , ", " : ") if spaced else (",", ":")
    same(json.dumps(obj, separators=seps, ensure_ascii=spaced).encode())


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(CASES) - 1), st.binary(max_size=8), st.data())
def test_compiled_decoder_matches_on_mutated_lines(i: int, junk: bytes, data: st.DataObject) -> None:
    line = CASES[i] or variant()
    at = data.draw(st.integers(min_value=0, max_value=len(line)))
    same(line[:at] + junk + line[at:])
    same(line[:at])


@needs_compiled
@given(st.binary(max_size=300))
def test_compiled_decoder_matches_on_arbitrary_bytes(data: bytes) -> None:
    same(data)


def test_rare_keys_are_the_decoders_less_common_keys() -> None:
    """The compiled scanner hands lines with these keys over; it must know all of them."""
    if compiled is None:
        pytest.skip("detector._fastpath is not built")
    assert compiled.RARE_KEYS == envoy._EXTRA_KEYS - envoy._SIMPLE_EXTRA_KEYS
    assert set(envoy._JSON_STR_KEYS) <= compiled.KNOWN_KEYS
    assert FIELDS[3] == "src_cluster" and FIELDS[7] == "dst_cluster" and len(FIELDS) == 25


# -- aggregation -------------------------------------------------------------------------------

_RECORDS = st.builds(
    FlowRecord,
    ts=st.floats(min_value=1_714_557_600.0, max_value=1_714_557_600.0 + 400.0),
    kind=st.sampled_from(["request", "auth_failure", "connection", "api_audit"]),
    src_principal=st.sampled_from([None, "", "spiffe://td/ns/a/sa/b", "u1"]),
    src_cluster=st.sampled_from([None, "", "eu", "us"]),
    src_namespace=st.sampled_from([None, "ns"]),
    src_workload=st.sampled_from([None, "", "wl"]),
    src_ip=st.one_of(st.none(), st.sampled_from([f"10.0.0.{i}" for i in range(80)])),
    dst_cluster=st.sampled_from([None, "eu"]),
    dst_namespace=st.sampled_from([None, "", "shop"]),
    dst_service=st.sampled_from([None, "orders", "cart"]),
    method=st.sampled_from([None, "GET", "POST"]),
    route=st.one_of(
        st.none(), st.builds("/v1/{}/{}".format, st.integers(0, 90), st.sampled_from("abc1"))
    ),
    outcome=st.sampled_from(["ok", "error", "denied", "unauthenticated"]),
    bytes_in=st.integers(0, 2**40),
    bytes_out=st.integers(0, 10**20),
    duration_ms=st.one_of(st.none(), st.floats(0, 1e4)),
)


def _state(agg: WindowAggregator, emitted: list[Any]) -> Any:
    st_ = agg.stats
    return (
        emitted,
        (st_.records, st_.late, dict(st_.late_by_stream), st_.overflow, st_.windows_closed),
        agg.positions(),
        agg.watermark,
        agg.open_edges,
        agg.edges_tracked,
        agg.routes.overflowed,
        agg.routes._per_service,
        agg.routes._cache,
        dict(agg._stream_max_ts),
        dict(agg._edge_last_seen),
    )


def _run(compiled_path: bool, batches: list[list[FlowRecord]], max_edges: int) -> Any:
    agg = WindowAggregator(
        window_s=60.0,
        allowed_lateness_s=5.0,
        max_open_edges=max_edges,
        max_routes_per_service=7,
        compiled=False,
    )
    if compiled_path:  # the compiled kernel itself, whatever DETECTOR_PURE_PYTHON says
        agg._kernel = compiled.aggregate
        agg._new_acc = compiled.Acc
        agg._materialise_all = compiled.materialise
    emitted: list[Any] = []
    off = 0
    for i, batch in enumerate(batches):
        agg.add_batch(f"s{i % 2}", batch, off if i % 3 else None)
        off += len(batch)
        agg.note_offset(f"s{i % 2}", off)
        emitted.append(agg.close_ready())
    emitted.append(agg.flush())
    return _state(agg, emitted)


@needs_compiled
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_RECORDS, max_size=120), max_size=6), st.sampled_from([3, 50, 10**6]))
def test_compiled_aggregation_matches_reference(
    batches: list[list[FlowRecord]], max_edges: int
) -> None:
    assert _run(True, batches, max_edges) == _run(False, batches, max_edges)


@needs_compiled
def test_compiled_aggregation_matches_on_simulated_traffic() -> None:
    from detector.decoders import get_decoder
    from detector.simulation import generate

    start = 1_714_557_600.0
    recs: list[FlowRecord] = []
    for fmt, _c, _ts, unit in generate(start, start + 1800.0, formats=("envoy_json",)):
        if fmt == "envoy_json":
            recs.extend(get_decoder(fmt)(unit, "f", len(recs)))
    batches = [recs[i : i + 500] for i in range(0, len(recs), 500)]
    assert _run(True, batches, 10**6) == _run(False, batches, 10**6)
    assert _run(True, batches, 40) == _run(False, batches, 40)


# -- the switch and the whole core -------------------------------------------------------------

_CORE = r"""
import dataclasses, json, sys
from detector import fastpath
from detector.pipeline import Pipeline, PipelineSettings
from detector.sources import Batch, StaticAttrs
p = Pipeline(PipelineSettings(window_s=60.0, allowed_lateness_s=5.0, max_record_bytes=3000,
                              trust_domains={"td": "tdc"}))
lines = open(sys.argv[1], "rb").read().split(b"\n")
static = StaticAttrs(cluster="east")
windows = []
for i in range(0, len(lines), 97):
    units = lines[i:i + 97]
    p.process_batch(Batch("f", "envoy_json", units, list(range(i + 1, i + 1 + len(units))), static))
    windows += p.aggregator.close_ready()
windows += p.aggregator.flush()
print(json.dumps({
    "compiled": fastpath.COMPILED,
    "windows": [dataclasses.asdict(w) for w in windows],
    "dead": [[d["stream"], d["offset"], d["reason"]] for d in p.dead_letters.recent],
    "bad": p.stats.bad_by_reason, "units": p.stats.units, "records": p.stats.records,
    "late": p.aggregator.stats.late, "positions": p.aggregator.positions(),
}, sort_keys=True, default=repr))
"""


def _core(path: Path, pure: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("DETECTOR_PURE_PYTHON", None)
    if pure:
        env["DETECTOR_PURE_PYTHON"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _CORE, str(path)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_pure_python_switch_and_identical_core(tmp_path: Path) -> None:
    """The whole core (decode, dead letters, resolve, aggregate) run compiled and with
    ``DETECTOR_PURE_PYTHON=1`` gives the same windows, dead letters and positions."""
    from detector.simulation import generate

    start = 1_714_557_600.0
    lines: list[bytes] = []
    for fmt, _c, _ts, unit in generate(start, start + 600.0, formats=("envoy_json",)):
        if fmt == "envoy_json":
            lines.append(unit)
    # bad and hostile units between good ones; late lines; records resolution must fill
    lines[5:5] = [b"{", b"x" * 4000, b"[1,2]", b'{"start_time":"nope"}', b"\xff" * 10]
    lines[50:50] = [variant(start_time="2024-05-01T09:00:00.000Z")]  # late by then? early
    lines.append(variant(source_cluster=_DROP, destination_cluster=_DROP))
    lines.append(variant(source_cluster=_DROP, downstream_peer_uri_san="spiffe://td/ns/x/sa/y"))
    lines.append(orjson.dumps({**BASE, "start_time": "2024-05-01T10:00:00.000Z"}))  # late
    path = tmp_path / "mixed.log"
    path.write_bytes(b"\n".join(lines))
    fast = _core(path, pure=False)
    pure = _core(path, pure=True)
    assert pure["compiled"] is False
    assert fast["compiled"] is (compiled is not None)
    assert fast == {**pure, "compiled": fast["compiled"]}
    assert fast["bad"] and fast["late"] and fast["windows"]
    assert {"oversized", "not_json", "not_object", "bad_timestamp"} <= set(fast["bad"])


# -- route templates and span detection ---------------------------------------------------------

PATHS = [
    "/",
    "",
    "/v1/customers/42?x=1",
    "/v1/orders/4bf92f3577b34da6/items",
    "/u/123e4567-e89b-12d3-a456-426614174000",
    "/t/eyJhbGciOiJIUzI1NiJ9.abc123_-=xyz",
    "/mail/someone@example.com",
    "/a@b",
    "/" + "x" * 65,
    "/" + "ab1" * 30,
    "/deadbeef/cafebabe/DEADBEEF1",
    "/abcdefgh/abcdefg1/ABCDEFGHIJ",
    "http://host:80/p/1",
    "https://host",
    "/\u00fcber/12345678/\u0661\u0662\u0663",
    "/token_with_digit1234567\n",
    "/x/1234567890123456\n",
    "/" + "/".join(str(i) for i in range(30)),
    "//double//slash/",
]


@needs_compiled
@pytest.mark.parametrize("path", PATHS)
def test_compiled_template_path_matches(path: str) -> None:
    from detector.flows import template_path

    assert compiled.template_path(path) == template_path(path)


@needs_compiled
@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=70),
            st.text(alphabet="0123456789abcdefABCDEF-_=.@", max_size=40),
            st.uuids().map(str),
            st.integers(min_value=0).map(str),
        ),
        max_size=20,
    ),
    st.sampled_from(["", "?q=1", "http://h", "https://h:1"]),
)
def test_compiled_template_path_matches_generated(segments: list[str], extra: str) -> None:
    from detector.flows import template_path

    path = "/".join(segments)
    for p in (path, extra + "/" + path, "/" + path + extra):
        assert compiled.template_path(p) == template_path(p)


@needs_compiled
def test_compiled_has_spans_matches() -> None:
    from detector.pipeline import fastpath as fp

    plain = [FlowRecord(1.0), FlowRecord(2.0, kind="request")]
    assert compiled.has_spans(plain) is False is fp._has_spans_py(plain)
    for extra in (FlowRecord(3.0, kind="span"), FlowRecord(3.0, parent_span_id="ab")):
        assert compiled.has_spans([*plain, extra]) is True is fp._has_spans_py([*plain, extra])


# -- text access logs --------------------------------------------------------------------------

TEXT = (
    '[2024-05-01T10:00:00.032Z] "GET /api/v1/orders/87904?x=1 HTTP/1.1" 200 - via_upstream - "-" '
    '0 1937 16 15 "-" "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)" '
    '"b3fe8e32-1a6b-4034-85a5-deb56dfb481f" "orders-api.orders.svc.cluster.local:8080" '
    '"10.20.2.144:8080" inbound|8080|| 127.0.0.6:60927 10.20.2.144:8080 10.20.0.108:37531 '
    "outbound_.8080_._.orders-api.orders.svc.cluster.local default"
)


def tvariant(old: str = "", new: str = "") -> bytes:
    return TEXT.replace(old, new, 1).encode()


TEXT_CASES: list[bytes] = [
    tvariant(),
    tvariant(" default", ""),  # no route name
    tvariant(" default", " default   "),
    tvariant(" default", " default x"),
    tvariant(" default", "  default"),
    tvariant("10.20.0.108:37531 ", "10.20.0.108:37531  "),
    tvariant("GET /api/v1/orders/87904?x=1 HTTP/1.1", "- - -"),  # TCP
    tvariant("GET /api/v1/orders/87904?x=1 HTTP/1.1", "- - HTTP/1.1"),
    tvariant("GET /api/v1/orders/87904?x=1 HTTP/1.1", "GET /a b c HTTP/2"),
    tvariant("GET /api/v1/orders/87904?x=1 HTTP/1.1", "GET /only"),
    tvariant("GET /api/v1/orders/87904?x=1 HTTP/1.1", "GET"),
    tvariant("GET /api/v1/orders/87904?x=1 HTTP/1.1", ""),
    tvariant("GET /api/v1/orders/87904?x=1 HTTP/1.1", "GET  HTTP/1.1"),
    tvariant(" 200 - via_upstream", " 403 - rbac_access_denied_matched_policy[none]"),
    tvariant(" 200 - via_upstream", " - - via_upstream"),
    tvariant(" 200 - via_upstream", " 2x0 - via_upstream"),
    tvariant(" 200 - via_upstream", " -5 - via_upstream"),
    tvariant(" 200 - via_upstream", " 0 UF,URX upstream_reset_before_response_started{TLS_error}"),
    tvariant(" 200 - via_upstream", " 1234567890123456789 - via_upstream"),
    tvariant(" 0 1937 16 15", " 12345678901234567890 - 007 -"),
    tvariant(" 0 1937 16 15", " 0 1937 16 15 16"),
    tvariant(' 15 "-" "node', ' 15 "1.2.3.4, 5.6.7.8" "node'),
    tvariant('"node-fetch/1.0 (+https://github.com/bitinn/node-fetch)"', '"a" "b"'),
    tvariant('"node-fetch/1.0 (+https://github.com/bitinn/node-fetch)"', '""'),
    tvariant('"node-fetch/1.0 (+https://github.com/bitinn/node-fetch)"', '"x" "y" "z"'),
    tvariant("[2024-05-01T10:00:00.032Z]", "[2024-05-01T10:00:00Z]"),
    tvariant("[2024-05-01T10:00:00.032Z]", "[2024-05-01T10:00:00.1234567890123456789Z]"),
    tvariant("[2024-05-01T10:00:00.032Z]", "[2024-05-01T10:00:00.5+02:00]"),
    tvariant("[2024-05-01T10:00:00.032Z]", "[1714557600]"),
    tvariant("[2024-05-01T10:00:00.032Z]", "[soon]"),
    tvariant("[2024-05-01T10:00:00.032Z]", "[]"),
    tvariant("10.20.0.108:37531", "[fd00::1]:5"),
    tvariant("10.20.0.108:37531", "-"),
    tvariant("inbound|8080||", "outbound|9080||reviews.default.svc.cluster.local"),
    tvariant(' "-" 0 1937', ' "TLS_error: CERT" 0 1937'),
    tvariant("via_upstream -", 'via_upstream "-"'),
    tvariant("node-fetch", "caf\u00e9"),
    tvariant("node-fetch", "tab\there"),
    TEXT.encode() + b"\r\n",
    TEXT.encode() + b"\n\r",
    TEXT.encode() + b" \n",
    TEXT.encode()[:-40],
    b"[2021-03-12 15:31:30.492][1][warning][runtime] deprecated",
    b"",
    b"[",
    # the Istio 1.3-1.8 and 1.1-1.2 layouts and Envoy's default: handed over, read the same
    b'[2020-11-25T21:26:18.409Z] "GET /status/418 HTTP/1.1" 418 - "-" "-" 0 135 4 4 "-" '
    b'"curl/7.73.0-DEV" "84961386-6d84-929d-98bd-c5aee93b5c88" "httpbin:8000" '
    b'"127.0.0.1:80" inbound|8000|| 127.0.0.1:41854 10.44.1.27:80 10.44.1.23:37652 '
    b"outbound_.8000_._.httpbin.foo.svc.cluster.local default",
    b'[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 '
    b'"10.0.35.28" "nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" "tcp://10.0.2.1:80"',
]


def same_text(data: bytes) -> None:
    assert outcome(compiled.decode_envoy_text, data) == outcome(envoy.decode_text, data), data


@needs_compiled
@pytest.mark.parametrize("data", TEXT_CASES, ids=range(len(TEXT_CASES)))
def test_compiled_text_decoder_matches_reference_on_edge_cases(data: bytes) -> None:
    same_text(data)


@needs_compiled
def test_compiled_text_decoder_matches_on_simulated_traffic_and_fixtures(
    fixtures_dir: Path,
) -> None:
    from detector.simulation import generate

    start = 1_714_557_600.0
    lines = [
        unit
        for fmt, _c, _ts, unit in generate(
            start, start + 900.0, formats=("envoy_text",), text_share=1.0
        )
        if fmt == "envoy_text"
    ]
    assert len(lines) > 1000
    for line in lines:
        same_text(line)
    slow: list[int] = []
    out, bad = compiled.decode_envoy_text_units(
        lines, list(range(len(lines))), "s", 1 << 20, lambda u, o: slow.append(o) or []
    )
    assert bad == 0 and not slow and len(out) == len(lines)  # the common shape is taken here
    for f in sorted(fixtures_dir.rglob("*")):
        if f.is_file() and f.suffix in (".log", ".json", ".jsonl", ".txt"):
            for line in f.read_bytes().splitlines()[:400]:
                same_text(line)


_TEXT_WORDS = st.sampled_from(
    ["-", "", " ", '"', "200", "0", "UF", "x y", '" "', "[", "]", "a:1", "[::1]:2", "\t", "é"]
)


@needs_compiled
@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(TEXT)), _TEXT_WORDS), max_size=4))
def test_compiled_text_decoder_matches_on_mutated_lines(edits: list[tuple[int, str]]) -> None:
    line = TEXT
    for at, word in edits:
        line = line[:at] + word + line[at:]
    same_text(line.encode())
    cut = edits[0][0] if edits else 10
    same_text(line.encode()[:cut])


@needs_compiled
@given(st.binary(max_size=300))
def test_compiled_text_decoder_matches_on_arbitrary_bytes(data: bytes) -> None:
    same_text(b"[" + data)
    same_text(data)


@needs_compiled
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            FlowRecord,
            ts=st.just(1.0),
            kind=st.sampled_from(["request", "api_audit", "connection"]),
            src_principal=st.sampled_from(
                [None, "", "spiffe://td/ns/a/sa/b", "spiffe://other/ns/a/sa/b", "u"]
            ),
            src_cluster=st.sampled_from([None, "", "eu"]),
            src_ip=st.sampled_from([None, "", "10.1.2.3", "10.9.9.9", "fd00::1", "junk"]),
            dst_cluster=st.sampled_from([None, "", "us", "unknown"]),
            dst_namespace=st.sampled_from([None, "", "shop"]),
        ),
        max_size=30,
    ),
    st.sampled_from([None, "", "east"]),
    st.sampled_from([None, "src-static"]),
    st.sampled_from([None, "dst-static"]),
    st.sampled_from([None, "", "ns-static"]),
    st.booleans(),
)
def test_compiled_resolution_matches(
    recs: list[FlowRecord],
    cluster: str | None,
    src: str | None,
    dst: str | None,
    ns: str | None,
    maps: bool,
) -> None:
    from detector.flows import Resolver
    from detector.sources import StaticAttrs

    resolver = Resolver(
        {"td": "td-cluster"} if maps else None, {"10.1.0.0/16": "cidr-cluster"} if maps else None
    )
    static = StaticAttrs(cluster=cluster, src_cluster=src, dst_cluster=dst, namespace=ns)
    want = [resolver.resolve(r, static) for r in recs]
    got = compiled.resolve_records(recs, resolver, static)
    assert [(type(r), tuple(r)) for r in got] == [(type(r), tuple(r)) for r in want]


def _reference_seconds(head: str) -> float | None:
    """The whole-second part ``envoy.parse_ts`` gives (None where it raises), uncached."""
    envoy._sec_cache.clear()
    try:
        return envoy.parse_ts(head + "Z")
    except ValueError:
        return None


@needs_compiled
@settings(max_examples=2000, deadline=None)
@given(
    st.integers(min_value=0, max_value=9999),
    st.integers(min_value=0, max_value=13),
    st.integers(min_value=0, max_value=32),
    st.integers(min_value=0, max_value=24),
    st.integers(min_value=0, max_value=60),
    st.integers(min_value=0, max_value=61),
    st.sampled_from("Tt x"),
)
def test_compiled_seconds_match_parse_ts(
    y: int, mo: int, d: int, h: int, mi: int, s: int, sep: str
) -> None:
    head = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}"
    assert compiled.iso_seconds(head.encode()) == _reference_seconds(head)


@needs_compiled
@pytest.mark.parametrize(
    "head",
    [
        "1970-01-01T00:00:00",
        "2024-02-29T23:59:60",  # a leap second rolls over as timegm rolls it
        "2023-02-31T00:00:00",  # so does a day past the month's end
        "2100-03-01T00:00:00",
        "0001-01-01T00:00:00",
        "0000-01-01T00:00:00",
        "2024-05-01 12:00:00",
        "2024-05-01T12:00:0x",
        "2024-05-01T12-00:00",
        "+024-05-01T12:00:00",
    ],
)
def test_compiled_seconds_match_parse_ts_at_edges(head: str) -> None:
    assert compiled.iso_seconds(head.encode()) == _reference_seconds(head)
