"""Tests of the traffic simulator: determinism, seasonality, real formats, scenarios, Source."""

from __future__ import annotations

import asyncio
import collections
import itertools
import re
from pathlib import Path

import orjson
import pytest

from detector.simulation import SimOptions, Simulator, default_scenarios, generate, write_files
from detector.simulation.scenarios import (
    CredentialStuffing,
    Exfiltration,
    LateralMovement,
    labels_jsonl,
)
from detector.simulation.topology import TRUST_DOMAIN, build_mesh
from detector.simulation.traffic import compile_template
from detector.simulation.writers import (
    CUSTOM_KEYS,
    ISTIO_JSON_KEYS,
    Req,
    envoy_fields,
    fast_template,
    render_fields,
)
from detector.sources import Batch
from detector.sources.simulate import SimulatorSource

MON_0000 = 1717372800.0  # 2024-06-03 00:00 UTC, a Monday
JSON_ONLY = {"formats": ("envoy_json",), "text_share": 0.0}

# Istio >= 1.9 default text format, as in the istio.io access-log task fixture.
TEXT_RE = re.compile(
    r'^\[(\S+)\] "(\S+) (\S+) (\S+)" (\d+) (\S+) (\S+) (\S+) "([^"]*)" (\d+) (\d+) (\d+) (\S+) '
    r'"([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" (\S+) (\S+) (\S+) (\S+) (\S+) (\S+)$'
)


def _records(start: float, span: float, **kw: object) -> list[tuple[str, str, float, bytes]]:
    return list(generate(start, start + span, **kw))


def test_istio_default_keys_are_the_24_documented() -> None:
    assert len(ISTIO_JSON_KEYS) == 24 == len(set(ISTIO_JSON_KEYS))


def test_topology_shape() -> None:
    mesh = build_mesh()
    assert set(mesh.clusters) == {"prod-eu", "prod-us", "staging"}
    per_cluster = collections.Counter(w.cluster for w in mesh.workloads.values())
    assert all(20 <= n <= 40 for n in per_cluster.values()), per_cluster
    assert 6 <= len({w.namespace for w in mesh.workloads.values()}) <= 12
    cross = [e for e in mesh.edges if e.src.cluster != e.dst.cluster]
    assert len(cross) >= 4
    for w in mesh.workloads.values():
        if w.sidecar:
            assert w.principal == f"spiffe://{TRUST_DOMAIN}/ns/{w.namespace}/sa/{w.sa}"


def test_deterministic_for_a_seed() -> None:
    a = _records(MON_0000 + 12 * 3600, 120, seed=3)
    b = _records(MON_0000 + 12 * 3600, 120, seed=3)
    c = _records(MON_0000 + 12 * 3600, 120, seed=4)
    assert a == b
    assert len(a) > 1000
    assert a != c


def test_chunk_aligned_subspan_reproduces_longer_run() -> None:
    long = _records(MON_0000 + 12 * 3600, 180, seed=5, **JSON_ONLY)
    part = _records(MON_0000 + 12 * 3600 + 60, 60, seed=5, **JSON_ONLY)
    mid = [r for r in long if MON_0000 + 12 * 3600 + 60 <= r[2] < MON_0000 + 12 * 3600 + 120]
    assert part == mid


def test_event_time_order_and_span() -> None:
    start = MON_0000 + 10 * 3600
    recs = _records(start, 300)
    ts = [r[2] for r in recs]
    assert ts == sorted(ts)
    assert start <= ts[0] and ts[-1] < start + 300


def test_seasonality_night_below_day() -> None:
    # prod-eu users are at UTC+1: 03:00 local is the trough, 15:00 near the peak.
    night = sum(1 for r in _records(MON_0000 + 2 * 3600, 600, **JSON_ONLY) if r[1] == "prod-eu")
    day = sum(1 for r in _records(MON_0000 + 14 * 3600, 600, **JSON_ONLY) if r[1] == "prod-eu")
    assert night < 0.4 * day, (night, day)
    # Saturday afternoon is quieter than Monday afternoon.
    sat = sum(
        1 for r in _records(MON_0000 + 5 * 86400 + 14 * 3600, 600, **JSON_ONLY) if r[1] == "prod-eu"
    )
    assert sat < 0.85 * day


def test_envoy_json_lines_have_istio_keys_and_identity() -> None:
    recs = _records(MON_0000 + 12 * 3600, 120, formats=("envoy_json",), text_share=0.0)
    assert recs and all(f == "envoy_json" for f, *_ in recs)
    sizes = []
    for _f, cluster, _ts, unit in recs:
        d = orjson.loads(unit)
        assert list(d)[:24] == list(ISTIO_JSON_KEYS)
        assert tuple(d)[24:] == CUSTOM_KEYS
        assert d["destination_cluster"] == cluster
        assert isinstance(d["response_code"], int) and isinstance(d["bytes_sent"], int)
        assert d["upstream_cluster"] in (None,) or d["upstream_cluster"].startswith(
            ("inbound|", "outbound|")
        )
        if d["response_flags"] != "NR":
            assert d["downstream_peer_uri_san"].startswith(f"spiffe://{TRUST_DOMAIN}/ns/")
            assert d["requested_server_name"].startswith("outbound_.")
        assert d["start_time"].endswith("Z")
        sizes.append(len(unit))
        assert b"\n" not in unit
    assert 500 < sum(sizes) / len(sizes) < 1400


def test_fast_template_equals_reference_rendering() -> None:
    sim = Simulator(SimOptions(**JSON_ONLY))  # type: ignore[arg-type]
    for fmt in ("envoy_json", "envoy_text"):
        for e in sim.edges[:40]:
            route = sim.routes[sim.edges.index(e)][0]
            tmpl, has_id = fast_template(e, route, fmt)
            req = Req("2024-06-03T12:00:00.123Z", route.template.replace("{id}", "4711"), 201,
                      12, 3456, 17, 15, None, "0b1c2d3e-0000-4000-8000-000000000001",
                      e.dst.ips[0], 40001, e.src.ips[0], 50002)  # fmt: skip
            want = render_fields(envoy_fields(e, route, req), fmt).decode()
            xf = '"-"' if fmt == "envoy_text" else "null"
            args = (req.start, *((4711,) if has_id else ()), 201, 12, 3456, 17, 15, xf,
                    req.request_id, req.dst_ip, 40001, req.dst_ip, req.src_ip, 50002)  # fmt: skip
            assert compile_template(tmpl)(*args) == want
            assert tmpl % args == want


def test_text_lines_match_istio_default_format() -> None:
    recs = _records(MON_0000 + 12 * 3600, 120, formats=("envoy_text", "envoy_json"),
                    text_share=0.3)  # fmt: skip
    text = [u for f, _c, _t, u in recs if f == "envoy_text"]
    assert len(text) > 50
    for u in text:
        m = TEXT_RE.match(u.decode())
        assert m, u
        assert m.group(19).startswith("inbound|") or m.group(19) == "-"


def test_fixture_text_line_matches_regex(fixtures_dir: Path) -> None:
    # The regex above is checked against a real Istio line, so it is not just our own echo.
    lines = (
        (fixtures_dir / "envoy-istio/istio-io_access-log-task_TEXT.log").read_text().splitlines()
    )
    assert all(TEXT_RE.match(x) for x in lines)


def test_audit_events_have_real_shape() -> None:
    start = MON_0000 + 12 * 3600
    scen = [s for s in default_scenarios(start, 20 * 3600) if s.name == "k8s_api_abuse"]
    s = scen[0]
    recs = _records(s.start, 600, formats=("k8s_audit",), scenarios=scen)
    events = [orjson.loads(u) for f, _c, _t, u in recs if f == "k8s_audit"]
    assert events
    by_code = collections.Counter(ev["responseStatus"]["code"] for ev in events)
    assert by_code[200] and by_code[403] and by_code[401]
    for ev in events:
        assert ev["kind"] == "Event" and ev["apiVersion"] == "audit.k8s.io/v1"
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                            ev["auditID"])  # fmt: skip
        code = ev["responseStatus"]["code"]
        if code == 401:
            assert ev["stage"] == "ResponseStarted" and ev["user"] == {}
            assert ev["responseStatus"]["message"] == "Authentication failed, attempted: bearer"
            assert "annotations" not in ev
        else:
            assert ev["stage"] == "ResponseComplete"
            assert ev["user"]["username"]
            decision = ev["annotations"]["authorization.k8s.io/decision"]
            assert decision == ("forbid" if code == 403 else "allow")
            assert ev["objectRef"]["resource"]


def test_labels_list_every_scenario() -> None:
    start = MON_0000 + 24 * 3600
    scen = default_scenarios(start, 12 * 3600)
    lines = [orjson.loads(x) for x in labels_jsonl(scen).splitlines()]
    assert {x["scenario"] for x in lines} == {s.name for s in scen}
    assert len(lines) == 10
    kinds = collections.Counter(x["kind"] for x in lines)
    assert kinds == {"attack": 7, "trap": 3}
    for x in lines:
        assert start <= x["start_ts"] < x["end_ts"] <= start + 12 * 3600
        assert x["services"]
        if x["kind"] == "attack":
            assert x["principals"] and all("@" in p for p in x["principals"])


def test_exfiltration_bytes_surge_inside_window_only() -> None:
    start = MON_0000 + 13 * 3600
    ex = Exfiltration(start=start + 1200, duration_s=1200)
    recs = _records(start, 3600, scenarios=[ex], **JSON_ONLY)
    src = "spiffe://cluster.local/ns/data/sa/etl-worker"
    inside, outside = [], []
    for _f, cluster, ts, unit in recs:
        d = orjson.loads(unit)
        if (
            d["downstream_peer_uri_san"] == src
            and d["authority"].startswith("ledger.")
            and (cluster == "prod-us")
        ):
            (inside if ex.start <= ts < ex.end else outside).append(d["bytes_sent"])
    assert len(inside) > 10 and len(outside) > 10
    assert sorted(inside)[len(inside) // 2] > 10 * sorted(outside)[len(outside) // 2]


def test_lateral_movement_edges_exist_only_in_window() -> None:
    start = MON_0000 + 13 * 3600
    lm = LateralMovement(start=start + 600, duration_s=600)
    recs = _records(start, 1800, scenarios=[lm], **JSON_ONLY)
    src = "spiffe://cluster.local/ns/catalog/sa/recommendations"
    hits = []
    for _f, cluster, ts, unit in recs:
        d = orjson.loads(unit)
        if (
            d["downstream_peer_uri_san"] == src
            and d["source_cluster"] == "prod-eu"
            and ((d["authority"].split(".")[0], cluster) in set(lm.targets))
        ):
            hits.append(ts)
    assert len(hits) > 20
    assert all(lm.start <= t < lm.end for t in hits)


def test_credential_stuffing_is_a_401_storm() -> None:
    start = MON_0000 + 13 * 3600
    cs = CredentialStuffing(start=start + 300, duration_s=300)
    recs = _records(start, 900, scenarios=[cs], **JSON_ONLY)
    n401 = collections.Counter()
    for _f, cluster, ts, unit in recs:
        if cluster == "prod-us" and b'"response_code":401' in unit:
            n401[cs.start <= ts < cs.end] += 1
    assert n401[True] > 1000
    assert n401[True] > 20 * n401[False]


def test_late_and_malformed_records() -> None:
    start = MON_0000 + 12 * 3600
    base = _records(start, 180, seed=9, **JSON_ONLY)
    late = _records(start, 180, seed=9, late_fraction=0.02, max_lateness_s=20.0, **JSON_ONLY)
    assert sorted(base) == sorted(late)  # same records, only delivery order differs
    ts = [r[2] for r in late]
    back = sum(1 for a, b in itertools.pairwise(ts) if b < a)
    assert back > 0
    assert max(max(ts[: i + 1]) - t for i, t in enumerate(ts)) <= 20.0
    bad = _records(start, 180, seed=9, malformed_fraction=0.01, **JSON_ONLY)
    n_bad = 0
    for *_x, unit in bad:
        try:
            orjson.loads(unit)
        except orjson.JSONDecodeError:
            n_bad += 1
    assert 0.002 * len(bad) < n_bad < 0.03 * len(bad)


def test_optional_formats_hubble_and_otlp() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    recs = _records(MON_0000 + 12 * 3600, 120,
                    formats=("envoy_json", "hubble", "otlp_proto_traces"))  # fmt: skip
    hub = [orjson.loads(u) for f, _c, _t, u in recs if f == "hubble"]
    otl = [u for f, _c, _t, u in recs if f == "otlp_proto_traces"]
    assert hub and otl
    for h in hub:
        assert h["node_name"].split("/")[0] == h["flow"]["destination"]["cluster_name"]
        assert h["flow"]["verdict"] in ("FORWARDED", "DROPPED")
    req = ExportTraceServiceRequest.FromString(otl[0])
    kinds = [s.kind for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(kinds) == 2
    clusters = {
        a.value.string_value
        for rs in req.resource_spans
        for a in rs.resource.attributes
        if a.key == "k8s.cluster.name"
    }
    assert clusters


def test_write_files(tmp_path: Path) -> None:
    start = MON_0000 + 12 * 3600
    man = write_files(tmp_path, train_start=start, train_s=120, test_s=600, rate_multiplier=0.2)
    names = {Path(p).name for p in man["files"]}
    assert "prod-eu.envoy_json.jsonl" in names and "prod-us.k8s_audit.jsonl" in names
    labels = (tmp_path / "test" / "labels.jsonl").read_bytes().splitlines()
    assert len(labels) == 10
    for p, n in man["files"].items():
        assert len(Path(p).read_bytes().splitlines()) == n


async def _collect(src: SimulatorSource) -> list[Batch]:
    return [b async for b in src.batches()]


def test_source_honours_limit_and_ends_streams() -> None:
    src = SimulatorSource(seed=1, start=MON_0000 + 12 * 3600, duration_s=600, limit=2500,
                          batch_size=200)  # fmt: skip
    batches = asyncio.run(_collect(src))
    data = [b for b in batches if b.units]
    assert sum(len(b.units) for b in data) == 2500
    assert all(len(b.units) <= 200 and len(b.units) == len(b.offsets) for b in data)
    ends = [b for b in batches if b.end]
    assert {b.stream for b in ends} == {b.stream for b in data}
    for b in data:
        cluster, fmt = b.stream.split("/")[1:]
        assert b.stream.startswith("sim/") and b.fmt == fmt and b.static.cluster == cluster
    # Offsets are consecutive per stream, starting at 1.
    nxt: dict[str, int] = collections.defaultdict(lambda: 1)
    for b in data:
        assert b.offsets[0] == nxt[b.stream]
        nxt[b.stream] = b.offsets[-1] + 1


def test_source_stops() -> None:
    async def run() -> int:
        src = SimulatorSource(seed=1, start=MON_0000 + 12 * 3600, duration_s=3600)
        n = 0
        async for b in src.batches():
            n += len(b.units)
            if n > 1000:
                await src.stop()
        return n

    n = asyncio.run(run())
    assert 1000 < n < 5000


def test_source_speedup_paces() -> None:
    import time

    src = SimulatorSource(seed=1, start=MON_0000 + 12 * 3600, duration_s=4.0, speedup=8.0)
    t = time.monotonic()
    asyncio.run(_collect(src))
    assert time.monotonic() - t >= 0.3  # 4 s of event time at 8x is ~0.5 s of wall time


def test_envoy_decoder_reads_simulator_lines() -> None:
    envoy = pytest.importorskip("detector.decoders.envoy")
    start = MON_0000 + 13 * 3600
    lm = LateralMovement(start=start, duration_s=600)
    recs = _records(start, 120, scenarios=[lm], **JSON_ONLY)
    checked = 0
    for _f, cluster, _ts, unit in recs:
        d = orjson.loads(unit)
        if d["response_flags"] == "NR":
            continue
        (rec,) = envoy.decode_json(unit, "sim", 1)
        assert rec.src_principal == d["downstream_peer_uri_san"]
        assert rec.dst_service == d["requested_server_name"].split(".")[-5]
        assert rec.dst_namespace == d["requested_server_name"].split(".")[-4]
        assert rec.dst_cluster == cluster == d["destination_cluster"]
        assert rec.src_cluster == d["source_cluster"]
        assert rec.status == d["response_code"] and rec.bytes_out == d["bytes_sent"]
        checked += 1
    assert checked > 1000
