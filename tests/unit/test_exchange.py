"""The window log of shared scoring (``detector.exchange``): format, completeness, checkpoints,
and what a replica reports (``DetectionStage.owns``, ``EdgeOwnerPipeline._owns``)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest

from detector.anomalies import Anomaly, Subject
from detector.detection import DetectionStage
from detector.exchange import WindowLedger, decode, edge_order, encode
from detector.findings import IncidentTracker
from detector.flows import EdgeWindow
from detector.pipeline import PipelineSettings
from detector.repartition import EdgeOwnerPipeline, identity_key, partition_of, subject_partition

W = 60.0


def window(t: float, caller: str, service: str = "orders", requests: int = 1) -> EdgeWindow:
    return EdgeWindow(
        window_start=t,
        window_end=t + W,
        src_principal=caller,
        src_cluster="east",
        dst_namespace="shop",
        dst_service=service,
        dst_cluster="east",
        requests=requests,
        connections=0,
        api_calls=0,
        ok=requests,
        errors=0,
        denied=0,
        unauthenticated=0,
        bytes_in=10,
        bytes_out=20,
        latency_p50_ms=1.5,
        latency_p90_ms=None,
        latency_p99_ms=3.0,
        routes={"GET /x": requests},
        src_ips=("10.0.0.1", "10.0.0.2"),
        failures_by_ip={"10.0.0.1": 0},
        first_seen=t + 1,
        last_seen=t + 2,
    )


def test_messages_round_trip_and_reject_what_is_not_one() -> None:
    ws = [window(0, "a"), window(60, "b", requests=3)]
    assert decode(encode(2, 120.0, ws)) == (2, 120.0, ws)
    assert decode(encode(0, -math.inf, [])) == (0, None, [])  # no mark yet
    bad_row = orjson.loads(encode(1, 60.0, ws))
    bad_row["w"][0][11] = "many"  # requests as a string
    for data in (
        b"not json",
        b"[1, 2]",
        orjson.dumps({"p": -1, "cb": 60, "w": []}),
        orjson.dumps({"p": 1, "cb": "soon", "w": []}),
        orjson.dumps({"p": 1, "cb": 60, "w": [[1, 2, 3]]}),
        orjson.dumps(bad_row),
    ):
        assert decode(data) is None
    ledger = WindowLedger(2)
    ledger.add(0, b"garbage")
    ledger.add(1, encode(5, 60.0, ws))  # a partition the topic does not have
    ledger.add(2, encode(0, 60.0, [window(0, "a")]))  # the good message after them counts
    assert ledger.bad_messages == 2 and ledger.pending_windows == 1 and ledger.next_offset == 3


def test_a_window_time_is_handed_out_once_every_partition_closed_it() -> None:
    ledger = WindowLedger(3)
    off = iter(range(100))
    ledger.add(next(off), encode(0, 120.0, [window(0, "z"), window(60, "a")]))
    ledger.add(next(off), encode(1, 60.0, [window(0, "b")]))
    assert ledger.complete() == []  # partition 2 has not closed anything yet
    ledger.add(next(off), encode(2, 180.0, [window(0, "c"), window(120, "d")]))
    # window 0 is closed everywhere; window 60 is not closed by partition 1 yet
    assert ledger.complete() == [[window(0, "b"), window(0, "c"), window(0, "z")]]  # by edge
    assert ledger.scored_before == 60.0
    ledger.add(next(off), encode(1, 180.0, [window(60, "e"), window(120, "f")]))
    assert ledger.complete() == [[window(60, "a"), window(60, "e")]]
    ledger.add(next(off), encode(0, 180.0, []))
    assert ledger.complete() == [[window(120, "d"), window(120, "f")]]
    assert ledger.complete() == []


def test_windows_published_again_after_a_takeover_count_once() -> None:
    ledger = WindowLedger(2)
    ledger.add(0, encode(0, None, [window(0, "a", requests=5)]))  # a chunk without its mark...
    # ...its owner died; the next owner rebuilt the window time and publishes it whole
    ledger.add(1, encode(0, 60.0, [window(0, "a", requests=5), window(0, "b")]))
    ledger.add(2, encode(1, 60.0, []))
    # and once more (a second rebalance), after the partition's mark passed it: ignored
    ledger.add(3, encode(0, 60.0, [window(0, "a", requests=5), window(0, "b")]))
    assert ledger.complete() == [[window(0, "a", requests=5), window(0, "b")]]
    assert ledger.ignored == 2
    ledger.add(4, encode(1, 120.0, [window(0, "late")]))  # below what was handed out
    assert ledger.ignored == 3 and ledger.pending_windows == 0


def _log(seed: int, partitions: int = 3, times: int = 12) -> list[bytes]:
    """A plausible log: owners close window times at their own pace, publish in chunks, and
    after "takeovers" publish some windows again."""
    rnd = random.Random(seed)
    closed = [0] * partitions
    out: list[bytes] = []
    while min(closed) < times:
        p = rnd.randrange(partitions)
        if closed[p] >= times:
            continue
        t = closed[p]
        ws = [window(t * W, f"c{p}-{k}", requests=rnd.randint(1, 9)) for k in range(3)]
        if rnd.random() < 0.3:
            out.append(encode(p, None, ws[:1]))  # a first chunk
        closed[p] += 1
        out.append(encode(p, closed[p] * W, ws))
        if rnd.random() < 0.2 and t > 0:  # a new owner publishes an older time again
            out.append(encode(p, closed[p] * W, [window((t - 1) * W, f"c{p}-0", requests=99)]))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_a_checkpoint_resumes_the_log_exactly_where_the_baselines_are(seed: int) -> None:
    log = _log(seed)
    whole = WindowLedger(3)
    handed: list[list[EdgeWindow]] = []
    cut = random.Random(seed).randrange(1, len(log))
    state: dict[str, Any] = {}
    for off, msg in enumerate(log):
        whole.add(off, msg)
        handed += whole.complete()
        if off == cut:
            state = orjson.loads(orjson.dumps(whole.state()))  # as a checkpoint stores it
            handed_at_cut = len(handed)
    resumed = WindowLedger(3)
    start = resumed.restore(state)
    again: list[list[EdgeWindow]] = []
    for off in range(start, len(log)):
        resumed.add(off, log[off])
        again += resumed.complete()
    assert again == handed[handed_at_cut:]
    assert [b[0].window_start for b in handed] == [t * W for t in range(12)]


def test_a_ledger_without_checkpoint_reads_from_the_start() -> None:
    assert WindowLedger(2).restore({}) == 0


# -- what a replica reports -----------------------------------------------------------------


def anomaly(subject: Subject, t: float, finding_type: str = "new_edge") -> Anomaly:
    return Anomaly(
        finding_type=finding_type,
        pattern="lateral_movement",
        subject=subject,
        window_start=t,
        window_end=t + W,
        model="novelty",
        feature="edge",
        observed=1.0,
        expected=0.0,
        p_value=1e-9,
    )


class ScriptedScorer:
    """Anomalies by window time (the scorer's own logic is tested elsewhere)."""

    def __init__(self, by_time: Mapping[float, list[Anomaly]]) -> None:
        self.by_time = by_time
        self.seen: list[float] = []

    def process(self, windows: Sequence[EdgeWindow]) -> list[Anomaly]:
        t = windows[0].window_start
        self.seen.append(t)
        return list(self.by_time.get(t, []))


class Collect:
    def __init__(self) -> None:
        self.findings: list[dict[str, Any]] = []

    async def emit(self, findings: Sequence[Mapping[str, Any]]) -> None:
        self.findings.extend(dict(f) for f in findings)

    async def close(self) -> None:
        return None


def subjects(findings: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(f["evidences"][0]["actor"]["user"]["uid"] for f in findings)


async def test_the_detection_stage_reports_what_it_owns_and_keeps_the_rest_for_takeovers() -> None:
    mine, theirs = Subject("spiffe://td/a", "east"), Subject("spiffe://td/b", "east")
    scorer = ScriptedScorer({0: [anomaly(mine, 0), anomaly(theirs, 0)], 60: [anomaly(theirs, 60)]})
    sink = Collect()
    stage = DetectionStage(scorer, IncidentTracker(), [sink])  # type: ignore[arg-type]
    stage.owns = lambda a: a.subject == mine
    await stage.emit([window(0, "x")])
    await stage.emit([window(60, "x")])
    assert subjects(sink.findings) == ["spiffe://td/a"]
    # "theirs" is taken over: from the previous owner's horizon (60) on, it is ours to report
    n = await stage.report_history(lambda a: a.subject == theirs and a.window_start >= 60)
    assert n == 1
    assert subjects(sink.findings) == ["spiffe://td/a", "spiffe://td/b"]
    assert scorer.seen == [0, 60]  # every window time scored, whoever reports it


async def test_an_edge_owner_reports_its_partitions_from_the_previous_owners_horizon() -> None:
    from tests.unit.test_repartition import FakeHandover

    n = 4
    by_part: dict[int, Subject] = {}
    i = 0
    while len(by_part) < n:
        subj = Subject(principal=f"spiffe://td/ns/x/sa/s{i}", src_cluster="east")
        by_part.setdefault(subject_partition(subj, n), subj)
        i += 1
    handover = FakeHandover({1: {"closed_before": 600.0, "incidents": []}})
    owner = EdgeOwnerPipeline(
        PipelineSettings(),
        partitions=lambda: n,
        handover=handover,  # type: ignore[arg-type]
    )
    await owner._on_assigned(["flows[0]", "flows[1]"])
    assert owner._owns(anomaly(by_part[0], 0))
    assert not owner._owns(anomaly(by_part[1], 540))  # its previous owner reported that
    assert owner._owns(anomaly(by_part[1], 600))
    assert not owner._owns(anomaly(by_part[2], 600))  # another replica's
    assert owner._owns(anomaly(Subject(dst_service="orders"), 0))  # mesh-wide: partition 0
    await owner._on_revoked(["flows[0]"])
    assert not owner._owns(anomaly(by_part[0], 0))
    assert not owner._owns(anomaly(Subject(dst_service="orders"), 0))


def test_windows_go_to_the_partition_of_their_caller() -> None:
    w = window(0, "spiffe://td/ns/a/sa/b")
    assert partition_of(identity_key(w.src_principal, w.src_cluster), 12) == partition_of(
        identity_key("spiffe://td/ns/a/sa/b", "east"), 12
    )
    assert edge_order(replace(w, dst_service="a")) < edge_order(w)
