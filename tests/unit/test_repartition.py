"""Scale-out building blocks: the internal format, identity partitioning, unit-preserving
chunks, duplicate suppression and dropping handed-over windows.

What is pinned here:
* Records survive the internal format unchanged (real fixture lines, after resolution); a unit
  that is not the format is a ``DecodeError`` with a bounded reason, never another exception.
* The partition of a record's caller identity is the partition of the window key it feeds, and
  it is stable (a fixed CRC-32, not Python's salted ``hash``).
* Chunks never split the records of one input unit; the edge owner drops records an ingest
  replica sent again after a takeover, and keeps every record of a multi-record unit.
* ``WindowAggregator.drop_edges`` forgets exactly the matching open edges.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.anomalies import Subject
from detector.decoders.envoy import decode_text
from detector.decoders.internal import decode, encode_records
from detector.errors import DecodeError
from detector.flows import Resolver, WindowAggregator
from detector.pipeline import PipelineSettings
from detector.records import FIELDS, FlowRecord
from detector.repartition import (
    EdgeOwnerPipeline,
    _chunks,
    edge_identity,
    identity_key,
    partition_of,
    record_identity,
    stream_partition,
    subject_partition,
)
from detector.sources import StaticAttrs


def fixture_records(fixtures_dir: Path) -> list[FlowRecord]:
    path = fixtures_dir / "envoy-istio" / "istio-io_access-log-task_TEXT.log"
    resolver = Resolver({}, {})
    out = []
    for i, line in enumerate(path.read_bytes().splitlines()):
        if line.strip():
            for r in decode_text(line, str(path), i + 1):
                out.append(resolver.resolve(r, StaticAttrs(cluster="east")))
    assert out
    return out


def test_internal_format_round_trip(fixtures_dir: Path) -> None:
    recs = fixture_records(fixtures_dir)
    assert decode(encode_records(recs)) == recs
    synthetic = [
        FlowRecord(1.5, src_principal="spiffe://td/ns/a/sa/b", dst_port=8080, duration_ms=2.25,
                   bytes_in=10, bytes_out=20, outcome="denied", source="t[3]", offset=7),
        FlowRecord(2.0),
    ]  # fmt: skip
    assert decode(encode_records(synthetic)) == synthetic


GOOD = list(FlowRecord(100.0, source="t[0]", offset=1))


@pytest.mark.parametrize(
    ("unit", "reason"),
    [
        (b"not json", "not_json"),
        (b'{"a": 1}', "bad_shape"),
        (orjson.dumps([GOOD[:-1]]), "bad_field"),  # one field short
        (orjson.dumps([["x", *GOOD[1:]]]), "bad_field"),  # event time a string
        (orjson.dumps([[True, *GOOD[1:]]]), "bad_field"),  # event time a bool
        (orjson.dumps([[*GOOD[:14], "weird", *GOOD[15:]]]), "bad_field"),  # unknown outcome
        (orjson.dumps([[*GOOD[:15], 1.5, *GOOD[16:]]]), "bad_field"),  # bytes not an integer
        (orjson.dumps([[*GOOD[:17], "slow", *GOOD[18:]]]), "bad_field"),  # duration a string
        (orjson.dumps([GOOD, 5]), "bad_field"),  # one good record, one not a record
    ],
)
def test_internal_format_rejects_what_is_not_it(unit: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as e:
        decode(unit)
    assert e.value.reason == reason


_value = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_value, min_size=len(FIELDS), max_size=len(FIELDS)), max_size=3))
def test_internal_decoder_never_raises_anything_else(items: list[list[object]]) -> None:
    try:
        out = decode(orjson.dumps(items))
    except DecodeError:
        return
    for r in out:  # what passes is safe for the aggregator to compute with
        assert isinstance(r.ts, int | float) and isinstance(r.bytes_in, int)
        assert isinstance(r.bytes_out, int)


def test_partition_of_is_stable_and_matches_window_keys(fixtures_dir: Path) -> None:
    # CRC-32 of the key, fixed forever: replicas of different releases must agree.
    assert partition_of(identity_key("spiffe://cluster.local/ns/a/sa/b", "east"), 12) == 9
    assert partition_of(identity_key("anonymous", "unknown"), 7) == 1
    recs = fixture_records(fixtures_dir)
    agg = WindowAggregator(window_s=60)
    agg.add_batch("s", recs, 0)
    windows = agg.flush()
    assert windows
    by_edge = {w.edge: w for w in windows}
    for r in recs:
        matching = [
            w for w in by_edge.values()
            if edge_identity((w.src_principal, w.src_cluster, w.dst_namespace, w.dst_service,
                              w.dst_cluster)) == record_identity(r)
        ]  # fmt: skip
        assert matching, f"no window keyed by the identity of {r}"


def test_subject_partition_follows_the_identity_and_keeps_mesh_wide_local() -> None:
    who = Subject(principal="spiffe://cluster.local/ns/a/sa/b", src_cluster="east")
    assert subject_partition(who, 12) == 9
    by_ip = Subject(src_ip="10.0.0.1", src_cluster="east")
    assert subject_partition(by_ip, 12) == partition_of(identity_key("anonymous", "east"), 12)
    assert subject_partition(Subject(), 12) is None
    assert stream_partition("flows[11]") == 11 and stream_partition("a/file.log") is None


def test_chunks_never_split_a_unit() -> None:
    recs = [FlowRecord(float(i), offset=i // 3) for i in range(30)]  # three records per unit
    chunks = _chunks(recs, 4)
    assert [r for c in chunks for r in c] == recs
    for a, b in itertools.pairwise(chunks):
        assert a[-1].offset != b[0].offset
    assert _chunks(recs, 100) == [recs]


def test_edge_owner_drops_records_sent_again_and_keeps_multi_record_units() -> None:
    owner = EdgeOwnerPipeline(PipelineSettings(), partitions=lambda: 4)

    def recs(*offsets: int, source: str = "in[0]") -> list[FlowRecord]:
        return [FlowRecord(100.0 + o, source=source, offset=o) for o in offsets]

    first = owner._dedupe("flows[1]", recs(1, 2, 2, 2, 3))  # unit 2 holds three records
    assert [r.offset for r in first] == [1, 2, 2, 2, 3]
    # an ingest replica took over "in[0]" from offset 2 and sent 2..4 again; unit 3 is repeated
    again = owner._dedupe("flows[1]", recs(2, 2, 2, 3, 4))
    assert [r.offset for r in again] == [4]
    # the same input partition in another internal partition has its own high-water mark
    assert [r.offset for r in owner._dedupe("flows[2]", recs(2, 3))] == [2, 3]
    # another input partition is independent
    assert len(owner._dedupe("flows[1]", recs(1, source="in[1]"))) == 1
    # a sparse input partition: its one last record sent again, alone in the next message
    assert owner._dedupe("flows[1]", recs(4)) == []
    assert owner.duplicates_dropped == 5


def test_drop_edges_forgets_only_matching_open_edges() -> None:
    agg = WindowAggregator(window_s=60)
    recs = [
        FlowRecord(10.0, src_principal="a", src_cluster="east", dst_service="s", dst_cluster="e"),
        FlowRecord(70.0, src_principal="a", src_cluster="east", dst_service="s", dst_cluster="e"),
        FlowRecord(20.0, src_principal="b", src_cluster="east", dst_service="s", dst_cluster="e"),
    ]
    agg.add_batch("s", recs, 0)
    assert agg.open_edges == 3
    assert agg.drop_edges(lambda k: k[0] == "a") == 2
    assert agg.open_edges == 1 and agg.edges_tracked == 1
    assert [w.src_principal for w in agg.flush()] == ["b"]
