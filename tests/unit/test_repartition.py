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
* An input partition taken over with nothing to read keeps the idle clock its previous owner
  published (announced idle when it is), only when the published position is where reading
  starts; the ingest publishes a partition's state only when it changed.
* An edge owner taking over partitions keeps only the open incidents of partitions it owns and
  has no handed-over state for (a restored checkpoint's others are released), and adopts the
  handed-over ones.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.anomalies import Subject
from detector.decoders.envoy import decode_text
from detector.decoders.internal import decode, encode_clocks, encode_records
from detector.errors import DecodeError
from detector.flows import Resolver, WindowAggregator
from detector.pipeline import PipelineSettings
from detector.records import FIELDS, FlowRecord
from detector.repartition import (
    EdgeOwnerPipeline,
    Repartitioner,
    ScaleOutSettings,
    _chunks,
    edge_identity,
    identity_key,
    partition_of,
    record_identity,
    stream_partition,
    subject_partition,
)
from detector.sources import Batch, StaticAttrs
from detector.sources.kafka import KafkaSettings


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


def test_subject_partition_follows_the_identity_and_puts_callerless_in_partition_0() -> None:
    who = Subject(principal="spiffe://cluster.local/ns/a/sa/b", src_cluster="east")
    assert subject_partition(who, 12) == 9
    by_ip = Subject(src_ip="10.0.0.1", src_cluster="east")
    assert subject_partition(by_ip, 12) == partition_of(identity_key("anonymous", "east"), 12)
    # a mesh-wide shift, a service's latency: reported (and handed over) with partition 0
    assert subject_partition(Subject(), 12) == 0
    assert subject_partition(Subject(dst_service="orders", dst_cluster="east"), 12) == 0
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


class FakeHandover:
    """``HandoverLog`` in memory: what was published is what is read."""

    topic = "state"

    def __init__(self, states: dict[str, dict[str, Any]] | None = None) -> None:
        self.states = dict(states or {})
        self.published: list[dict[str, Any]] = []

    async def read(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {k: self.states[k] for k in keys if k in self.states}

    async def publish(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        if not states:
            return  # as HandoverLog.publish: nothing is sent
        self.published.append(dict(states))
        self.states.update({k: dict(v) for k, v in states.items()})

    async def stop(self) -> None:
        return None


def ingest(handover: FakeHandover) -> Repartitioner:
    kafka = KafkaSettings(
        bootstrap_servers=["127.0.0.1:9"], group_id="g", topics=[{"name": "t", "format": "auto"}]
    )
    return Repartitioner(
        PipelineSettings(idle_stream_s=5),
        scale=ScaleOutSettings(),
        kafka=kafka,
        handover=handover,  # type: ignore[arg-type]
    )


async def test_input_partition_taken_over_silent_keeps_its_idle_clock() -> None:
    now = time.time()
    handover = FakeHandover(
        {
            "t[0]": {"next": 30, "quiet_since": now - 60},  # idle for a minute
            "t[1]": {"next": 10, "quiet_since": now - 60},  # but reading starts at 12
            "t[2]": {"next": 7, "quiet_since": now - 2},  # silent for 2 s only
            "t[3]": {"next": 5, "quiet_since": now - 60},  # has something to read
        }
    )
    rep = ingest(handover)
    streams = ["t[0]", "t[1]", "t[2]", "t[3]"]
    await rep._on_assigned(streams)
    rep._on_caught_up("t[0]", 30)
    rep._on_caught_up("t[1]", 12)  # records written past the published position: hold
    rep._on_caught_up("t[2]", 7)
    for stream in streams:  # the announcements, as the source queues them
        rep.process_batch(Batch(stream, "auto", [], []))
    clocks = rep.aggregator.stream_clocks()
    assert clocks == {s: (None, s == "t[0]") for s in streams}
    assert time.monotonic() - rep._stream_wall["t[2]"] >= 2.0  # idle 3 s from now, not 5
    assert time.monotonic() - rep._stream_wall["t[1]"] < 1.0
    # caught up after the announcement (the first fetch came later): applied at once
    rep.aggregator.end_stream("t[3]")
    rep._announced = frozenset(streams)
    handover.states["t[3]"] = {"next": 5, "quiet_since": now - 60}
    await rep._on_assigned(["t[3]"])
    rep._on_caught_up("t[3]", 5)
    rep.process_batch(Batch("t[3]", "auto", [], []))
    assert rep.aggregator.stream_clocks()["t[3]"] == (None, True)


async def test_ingest_publishes_a_partition_state_only_when_it_changed() -> None:
    handover = FakeHandover()
    rep = ingest(handover)
    rep.process_batch(Batch("t[0]", "auto", [], []))
    rep.aggregator.note_offset("t[0]", 41)
    await rep._publish_positions(["t[0]"])
    await rep._publish_positions(["t[0]"])
    assert len(handover.published) == 1
    state = handover.published[0]["t[0]"]
    assert state["next"] == 42 and abs(state["quiet_since"] - time.time()) < 1.0
    rep.aggregator.note_offset("t[0]", 42)
    await rep._publish_positions(["t[0]"])
    assert [p["t[0]"]["next"] for p in handover.published] == [42, 43]


class IncidentSink:
    """A window sink holding open incidents as a detection stage does (subject dicts)."""

    def __init__(self, subjects: list[Subject]) -> None:
        self.open = {s: "checkpoint" for s in subjects}

    async def emit(self, windows: list[Any]) -> None:
        return None

    async def close(self) -> None:
        return None

    def release_incidents(self, belongs: Any) -> int:
        gone = [s for s in self.open if belongs(s)]
        for s in gone:
            del self.open[s]
        return len(gone)

    def adopt_incidents(self, incidents: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        for d in incidents:
            subj = Subject(**d["subject"])
            if subj not in self.open:
                self.open[subj] = "handed over"
                n += 1
        return n


async def test_edge_owner_keeps_only_the_restored_incidents_of_partitions_it_owns() -> None:
    by_part: dict[int, Subject] = {}
    i = 0
    while len(by_part) < 4:  # one caller per internal partition
        subj = Subject(principal=f"spiffe://td/ns/x/sa/s{i}", src_cluster="east")
        by_part.setdefault(subject_partition(subj, 4), subj)  # type: ignore[arg-type]
        i += 1
    mesh_wide = Subject()
    sink = IncidentSink([*by_part.values(), mesh_wide])
    handed = {"principal": by_part[1].principal, "src_cluster": "east"}
    handover = FakeHandover({1: {"closed_before": 600.0, "incidents": [{"subject": handed}]}})
    owner = EdgeOwnerPipeline(
        PipelineSettings(),
        partitions=lambda: 4,
        handover=handover,  # type: ignore[arg-type]
        sinks=[sink],
    )
    await owner._on_assigned(["flows[0]", "flows[1]"])
    # partition 0: ours, no state handed over: the checkpoint's incident stays; partition 1:
    # the handed-over one replaces it; 2 and 3 belong to other replicas; mesh-wide stays (it
    # belongs to partition 0)
    assert sink.open == {by_part[0]: "checkpoint", by_part[1]: "handed over", mesh_wide: "checkpoint"}
    assert owner.incidents_released == 3 and owner.incidents_adopted == 1
    assert owner._horizon == {"flows[1]": 600.0}


async def test_taken_over_windows_this_replica_closed_already_are_rebuilt() -> None:
    """The previous owner died behind this replica: windows it never emitted, which this
    replica's aggregator closed for its own partitions, are rebuilt (not late) and emitted once
    the stream's own event time passes them; the commit waits for them."""

    def rec(ts: float, who: str) -> FlowRecord:
        return FlowRecord(ts, src_principal=who, src_cluster="east", dst_service="s")

    owner = EdgeOwnerPipeline(
        PipelineSettings(window_s=60, allowed_lateness_s=0),
        partitions=lambda: 4,
        handover=FakeHandover({1: {"closed_before": 60.0, "incidents": []}}),  # type: ignore[arg-type]
    )
    agg = owner.aggregator
    agg.add_batch("flows[0]", [rec(t, "mine") for t in (10, 70, 130, 200)], 0)
    assert {w.window_start for w in agg.close_ready()} == {0, 60, 120}
    assert agg.closed_before == 180
    await owner._on_assigned(["flows[1]"])
    main = owner._catch_up("flows[1]", [rec(70, "theirs"), rec(130, "theirs"), rec(190, "x")], 5)
    assert [r.ts for r in main] == [190]  # the main aggregator takes what it has not closed
    assert owner._positions()["flows[1]"] == 5  # open catch-up windows hold the commit back
    assert (await owner.handover.read([1]))[1]["closed_before"] == 60.0
    await owner._publish_state()
    assert owner.handover.published[-1][1]["closed_before"] == 60.0  # not all emitted yet
    done = owner._caught_up_windows()
    assert [(w.window_start, w.src_principal) for w in done] == [(60, "theirs"), (120, "theirs")]
    assert "flows[1]" not in owner._catchup and owner.catchup_windows == 2
    assert agg.stats.late == 0


async def test_catch_up_ends_when_the_streams_input_partitions_passed_it() -> None:
    """A stream that goes quiet after its catch-up records still gets those windows emitted:
    once the clocks of its input partitions pass the cut (or they idle), the rest is flushed."""
    from detector.repartition import ORIGIN_PREFIX

    owner = EdgeOwnerPipeline(
        PipelineSettings(window_s=60, allowed_lateness_s=30),
        partitions=lambda: 4,
        handover=FakeHandover({1: {"closed_before": 60.0, "incidents": []}}),  # type: ignore[arg-type]
    )
    owner.aggregator.treat_as_closed_before(180.0)
    await owner._on_assigned(["flows[1]"])
    late_edge = FlowRecord(130.0, src_principal="theirs", src_cluster="east", dst_service="s")
    assert owner._catch_up("flows[1]", [late_edge], 3) == []
    assert owner._caught_up_windows() == []  # 130 - 30 has not passed the cut of 180
    origin = f"{ORIGIN_PREFIX}flows[1]|in[0]"
    owner.aggregator.note_event_time(origin, 200.0)
    assert owner._caught_up_windows() == []  # 200 - 30 < 180: records below 180 may still come
    owner.aggregator.mark_idle(origin, True)
    assert [w.window_start for w in owner._caught_up_windows()] == [120]
    assert owner._catchup == {}


def clocks(stream: str, offset: int, **inputs: float) -> Batch:
    """A clock message of ``stream`` announcing input partitions (none idle)."""
    unit = encode_clocks({k: (v, False) for k, v in inputs.items()})
    return Batch(stream=stream, fmt="detector_flow", units=[unit], offsets=[offset])


def assigned(stream: str) -> Batch:
    """The empty batch a source announces a (re)assigned partition with."""
    return Batch(stream=stream, fmt="detector_flow", units=[], offsets=[])


async def test_a_reassigned_partition_holds_the_watermark_for_inputs_nobody_announces() -> None:
    """An ingest replica died: its input partitions are announced by nobody until another
    replica takes them over and resends them from their commit. An eager rebalance revoked
    every internal partition of this edge owner meanwhile; once reassigned, they still hold
    the watermark at those inputs' last known clocks (not only at what their first clock
    message names), so the resent records are not late."""
    owner = EdgeOwnerPipeline(
        PipelineSettings(window_s=60, allowed_lateness_s=10, idle_stream_s=5),
        partitions=lambda: 4,
    )
    agg = owner.aggregator

    owner.process_batch(assigned("flows[0]"))
    owner.process_batch(clocks("flows[0]", 0, live=500.0, dead=300.0))
    assert agg.watermark == 290.0
    await owner._on_revoked(["flows[0]"])
    owner.process_batch(assigned("flows[0]"))  # back, read from the commit
    owner.process_batch(clocks("flows[0]", 1, live=900.0))  # only the live replica announces
    assert agg.watermark == 290.0  # "dead" still holds it: its records will be resent
    owner.process_batch(clocks("flows[0]", 2, live=900.0, dead=800.0))  # taken over
    assert agg.watermark == 790.0


def test_an_internal_partition_without_records_holds_no_window_back() -> None:
    """Few callers, or a quiet night: an owned internal partition that carries only clock
    messages must not hold this replica's windows (the input partitions' clocks do)."""
    owner = EdgeOwnerPipeline(
        PipelineSettings(window_s=60, allowed_lateness_s=10), partitions=lambda: 2
    )
    rec = FlowRecord(30.0, src_principal="a", src_cluster="east", dst_service="s", source="in[0]",
                     offset=0)  # fmt: skip
    for stream in ("flows[0]", "flows[1]"):
        owner.process_batch(assigned(stream))
    owner.process_batch(
        Batch(stream="flows[0]", fmt="detector_flow", units=[encode_records([rec])], offsets=[0])
    )
    for stream in ("flows[0]", "flows[1]"):
        owner.process_batch(clocks(stream, 1, **{"in[0]": 200.0}))
    assert owner.aggregator.watermark == 190.0
    assert [w.window_start for w in owner.aggregator.close_ready()] == [0.0]


async def test_a_partitions_own_clock_supersedes_the_one_assumed_at_assignment() -> None:
    """The clocks assumed for a reassigned partition come from the other partitions; read again
    from an older commit, the partition's own records and clocks are older. Its first clock
    message replaces the assumed one, even lower, so those records are not late."""
    owner = EdgeOwnerPipeline(
        PipelineSettings(window_s=60, allowed_lateness_s=10, idle_stream_s=5),
        partitions=lambda: 4,
    )

    owner.process_batch(assigned("flows[1]"))
    owner.process_batch(clocks("flows[1]", 0, q=900.0))
    owner.process_batch(assigned("flows[0]"))  # its commit is far behind flows[1]'s
    owner.process_batch(clocks("flows[0]", 0, q=300.0))
    assert owner.aggregator.watermark == 290.0
    owner.process_batch(clocks("flows[0]", 1, q=400.0))
    assert owner.aggregator.watermark == 390.0
