"""Property tests: the text/JSON access-log decoders and the wrappers never raise anything but
``DecodeError``/``PartialDecode`` on arbitrary bytes or on mutated real lines, and what they do
return is well-typed."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.decoders.envoy import decode_json, decode_text
from detector.decoders.linkerd import decode as decode_linkerd
from detector.decoders.wrappers import unwrap, wrap_decoder
from detector.errors import DecodeError, PartialDecode
from detector.records import FIELDS, KINDS, OUTCOMES, FlowRecord

# Our own lines, beside the real ones the ``fixtures_dir`` fixture provides.
_OBJ = {
    "start_time": "2024-05-01T12:00:00.123Z",
    "method": "GET",
    "path": "/a?b",
    "protocol": "HTTP/1.1",
    "response_code": 403,
    "response_flags": "UAEX",
    "response_code_details": "rbac_access_denied_matched_policy[x]",
    "bytes_received": 1,
    "bytes_sent": "2",
    "duration": None,
    "authority": "[::1]:80",
    "upstream_cluster": "inbound|80||",
    "downstream_remote_address": "[fd00::1]:5",
    "requested_server_name": "outbound_.80_._.a.b.svc.cluster.local",
    "source_cluster": "east",
    "x_forwarded_client_cert": "URI=spiffe://td/ns/a/sa/b",
}
OWN_LINES = [
    orjson.dumps(_OBJ),
    orjson.dumps({"log": orjson.dumps(_OBJ).decode(), "kubernetes": {"namespace_name": "x"}}),
    b'2024-01-02T03:04:05Z stdout F [2024-05-01T12:00:01.000Z] "- - -" 0 - - - "-" 1 2 3 - "-" '
    b'"-" "-" "-" "-" outbound|5432||pg.db.svc.cluster.local - 10.0.0.1:5432 [::1]:3 - -',
]


@pytest.fixture(scope="session")
def seeds(fixtures_dir: Path) -> list[bytes]:
    lines = list(OWN_LINES)
    for sub in ("envoy-istio", "linkerd"):
        for f in sorted((fixtures_dir / sub).glob("*.log")):
            lines.extend(ln for ln in f.read_bytes().splitlines() if ln)
    return lines


DECODERS = [decode_text, decode_json, decode_linkerd, wrap_decoder(decode_text)]
DECODERS.append(wrap_decoder(decode_json))


def _check(data: bytes) -> None:
    for dec in DECODERS:
        try:
            recs = dec(data, "fuzz", 1)
        except (DecodeError, PartialDecode):
            continue
        assert isinstance(recs, list)
        for r in recs:
            assert isinstance(r, FlowRecord) and len(r) == len(FIELDS)
            assert r.kind in KINDS and r.outcome in OUTCOMES
            assert isinstance(r.ts, float)
            assert isinstance(r.bytes_in, int) and isinstance(r.bytes_out, int)
            for name in ("src_principal", "src_ip", "dst_service", "method", "route", "detail"):
                v = getattr(r, name)
                assert v is None or (isinstance(v, str) and v not in ("", "-"))
            for name in ("status", "dst_port"):
                v = getattr(r, name)
                assert v is None or (isinstance(v, int) and not isinstance(v, bool))
            assert r.source == "fuzz" and r.offset == 1
    inner, meta = unwrap(data)
    assert isinstance(inner, bytes)
    assert meta is None or all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())


def test_seed_lines_exist(seeds: list[bytes]) -> None:
    assert len(seeds) >= 20


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


def _mutate(draw: st.DataObject, seeds: list[bytes]) -> bytes:
    line = bytearray(draw.draw(st.sampled_from(seeds)))
    for _ in range(draw.draw(st.integers(1, 6))):
        op = draw.draw(st.sampled_from(("flip", "delete", "insert", "truncate", "dash")))
        pos = draw.draw(st.integers(0, max(len(line) - 1, 0)))
        if op == "flip" and line:
            line[pos] = draw.draw(st.integers(0, 255))
        elif op == "delete" and line:
            end = pos + draw.draw(st.integers(1, 20))
            del line[pos:end]
        elif op == "insert":
            line[pos:pos] = draw.draw(
                st.sampled_from([b'"', b" ", b"[", b"]", b"-", b":", b"|", b"\xff"])
            )
        elif op == "truncate":
            del line[pos:]
        elif op == "dash":
            line[pos:pos] = b"-"
    return bytes(line)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_lines(seeds: list[bytes], data: st.DataObject) -> None:
    _check(_mutate(data, seeds))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["-", "", "0", "2024-05-01T12:00:00Z", "inbound|80||", "outbound|1||a.b.svc"]),
)
json_values = st.recursive(
    json_scalars,
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.sampled_from(["namespace_name", "labels", "pod_name"]), c, max_size=3)
    ),
    max_leaves=6,
)
KEYS = [
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "bytes_received",
    "bytes_sent",
    "duration",
    "authority",
    "upstream_cluster",
    "downstream_remote_address",
    "downstream_local_address",
    "requested_server_name",
    "source_principal",
    "destination_service",
    "traceparent",
    "x_forwarded_client_cert",
    "client.addr",
    "client.id",
    "host",
    "uri",
    "status",
    "timestamp",
    "total_ns",
    "log",
    "kubernetes",
    "stream",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=12))
def test_json_objects_with_wrong_types(obj: dict[str, object]) -> None:
    _check(orjson.dumps(obj))
