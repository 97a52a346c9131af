"""The compiled Kubernetes audit path against the pure-Python decoder.

Pinned: ``decode_k8s_audit_units`` gives exactly the records and bad-unit count of
``k8s_audit.decode`` unit by unit (the per-unit path as ``slow``) on the simulator's events, on
the real audit fixtures, on EventLists and on generated events whose fields take every JSON type;
the common shape never reaches ``slow``; ``audit_time`` is ``hubble.parse_time`` on generated and
edge-case times. Skipped (visibly) when the compiled module was not built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.decoders import hubble, k8s_audit
from detector.errors import DecodeError, PartialDecode
from detector.records import FlowRecord

try:
    from detector import _fastpath as compiled  # type: ignore[attr-defined]
except ImportError:
    compiled = None

pytestmark = pytest.mark.skipif(compiled is None, reason="detector._fastpath is not built")

EVENT: dict[str, Any] = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "Metadata",
    "auditID": "4012ce9d-4f03-4417-a45f-eb394fdd00a5",
    "stage": "ResponseComplete",
    "requestURI": "/api/v1/namespaces/pay/secrets?limit=500",
    "verb": "list",
    "user": {"username": "system:serviceaccount:pay:api", "groups": ["system:authenticated"]},
    "sourceIPs": ["10.20.3.133"],
    "objectRef": {"resource": "secrets", "namespace": "pay", "apiVersion": "v1"},
    "responseStatus": {"metadata": {}, "code": 200},
    "requestReceivedTimestamp": "2026-01-07T00:00:00.659745Z",
    "stageTimestamp": "2026-01-07T00:00:00.674883Z",
    "annotations": {"authorization.k8s.io/decision": "allow"},
}


def per_unit(units: list[bytes]) -> tuple[list[FlowRecord], int]:
    out: list[FlowRecord] = []
    bad = 0
    for i, u in enumerate(units):
        try:
            out.extend(k8s_audit.decode(u, "s", i))
        except PartialDecode as e:
            out.extend(e.records)
        except DecodeError:
            bad += 1
    return out, bad


def batched(units: list[bytes]) -> tuple[list[FlowRecord], int, list[int]]:
    slow_offsets: list[int] = []

    def slow(unit: bytes, off: int) -> list[FlowRecord] | None:
        slow_offsets.append(off)
        try:
            return k8s_audit.decode(unit, "s", off)
        except PartialDecode as e:
            return e.records
        except DecodeError:
            return None

    out, bad = compiled.decode_k8s_audit_units(units, list(range(len(units))), "s", 1 << 20, slow)
    return out, bad, slow_offsets


def same(units: list[bytes]) -> list[int]:
    out, bad, slow = batched(units)
    ref_out, ref_bad = per_unit(units)
    assert bad == ref_bad
    assert out == ref_out
    assert [tuple(map(type, r)) for r in out] == [tuple(map(type, r)) for r in ref_out]
    return slow


def test_simulated_events_are_decoded_here() -> None:
    from detector.simulation import generate

    start = 1_714_557_600.0
    units = [u for fmt, _c, _t, u in generate(start, start + 1800.0) if fmt == "k8s_audit"]
    assert len(units) > 200
    assert same(units) == []  # none handed over


def test_fixtures_and_event_lists(fixtures_dir: Path) -> None:
    units = [
        line
        for f in sorted((fixtures_dir / "k8s-audit").rglob("*.json"))
        for line in f.read_bytes().splitlines()
        if line.strip()
    ]
    assert len(units) >= 10
    same(units)
    items = [orjson.loads(u) for u in units if u.startswith(b"{")]
    event_list = orjson.dumps({"kind": "EventList", "items": [*items, "junk", {"x": 1}]})
    assert same([event_list, b"not json", b"[1]", b"{}"]) == [0, 1, 2, 3]


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 600),
    st.sampled_from(
        [
            "",
            "x",
            "RequestReceived",
            "ResponseStarted",
            "ResponseComplete",
            "Panic",
            "forbid",
            "Authentication failed",
            "system:serviceaccount:",
            "system:serviceaccount:ns:sa",
            "2026-01-07T00:00:00Z",
            "2026-02-30T00:00:00.5Z",
            "2026-01-07T00:00:60.1Z",
        ]
    ),
    st.lists(st.sampled_from(["10.0.0.1", 1, None]), max_size=2),
    st.dictionaries(
        st.sampled_from(["code", "message", "username", "resource", "subresource", "namespace"]),
        st.one_of(st.none(), st.integers(100, 600), st.sampled_from(["", "a", "Authentication failed x"])),
        max_size=3,
    ),
)
_KEYS = st.sampled_from(
    [
        "auditID",
        "stage",
        "verb",
        "requestURI",
        "user",
        "sourceIPs",
        "objectRef",
        "responseStatus",
        "requestReceivedTimestamp",
        "stageTimestamp",
        "timestamp",
        "annotations",
        "impersonatedUser",
        "metadata",
        "items",
    ]
)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=5), st.sets(_KEYS, max_size=3))
def test_generated_events(changes: dict[str, Any], removed: set[str]) -> None:
    ev = {k: v for k, v in EVENT.items() if k not in removed}
    ev.update(changes)
    same([orjson.dumps(ev)])


TIMES = [
    "2026-01-07T00:00:00Z",
    "2026-01-07T00:00:00.1Z",
    "2026-01-07T00:00:00.123456789Z",
    "2026-01-07T00:00:00.1234567891234Z",
    "2026-01-07T00:00:00.Z",
    "2026-01-07T00:00:00,5Z",
    "2026-01-07t00:00:00Z",
    "2026-01-07 00:00:00Z",
    "2024-02-29T12:00:00Z",
    "2023-02-29T12:00:00Z",
    "2026-04-31T12:00:00Z",
    "2026-01-07T00:00:60Z",
    "2026-01-07T24:00:00Z",
    "0000-01-07T00:00:00Z",
    "2026-01-07T00:00:00+01:00",
    "2026-01-07T00:00:00.5",
    "2026-01-07T00:00:00.5\u00e9Z",
    "2026-01-07T00:00:00.\u0661Z",
    "",
    None,
    1_700_000_000,
    {"seconds": 5, "nanos": 7},
]


@pytest.mark.parametrize("v", TIMES, ids=range(len(TIMES)))
def test_audit_time_matches_parse_time_at_edges(v: Any) -> None:
    assert compiled.audit_time(v) == hubble.parse_time(v)


@settings(max_examples=1500, deadline=None)
@given(
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 24),
    st.integers(0, 60),
    st.integers(0, 61),
    st.text(alphabet="0123456789.Z", max_size=12),
)
def test_audit_time_matches_parse_time(
    y: int, mo: int, d: int, h: int, mi: int, s: int, tail: str
) -> None:
    v = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{tail}"
    assert compiled.audit_time(v) == hubble.parse_time(v)
