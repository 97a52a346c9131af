"""Findings JSON-lines sink: one finding per line, flushed per batch; I/O errors are fatal."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detector.anomalies import Anomaly, Subject
from detector.errors import InfrastructureError
from detector.findings import IncidentTracker
from detector.sinks.findings_jsonl import FindingsJsonlSink

T0 = 1_000_000_020.0


def findings(n_windows: int) -> list[dict[str, object]]:
    tr = IncidentTracker(close_after_quiet_s=60, update_min_interval_s=0)
    out = []
    for i in range(n_windows):
        a = Anomaly(
            finding_type="rate_surge",
            pattern="SURGE",
            subject=Subject(principal="spiffe://x/sa/a", src_cluster="eu", dst_service="b"),
            window_start=T0 + 60 * i,
            window_end=T0 + 60 * (i + 1),
            model="seasonal",
            feature="requests",
            observed=500,
            expected=20,
            p_value=1e-6,
        )
        out += tr.observe([a], a.window_end)
    return out + tr.tick(T0 + 10_000)


async def test_writes_one_finding_per_line_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "out" / "findings.jsonl"  # folder created on first use
    batch = findings(2)
    sink = FindingsJsonlSink(path)
    await sink.emit(batch[:2])
    # Flushed per batch: a reader sees whole lines before close().
    assert [orjson.loads(x) for x in path.read_bytes().splitlines()] == batch[:2]
    await sink.emit([])
    await sink.emit(batch[2:])
    await sink.close()
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(x) for x in lines] == batch
    assert [orjson.loads(x)["activity_id"] for x in lines] == [1, 2, 3]
    assert sink.written == 3
    # A new sink on the same file appends (restart), it does not truncate.
    again = FindingsJsonlSink(path, sort_keys=True)
    await again.emit(batch[:1])
    await again.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4 and orjson.loads(lines[3]) == batch[0]
    assert list(orjson.loads(lines[3])) == sorted(batch[0])


async def test_os_error_is_infrastructure_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    sink = FindingsJsonlSink(blocker / "findings.jsonl")
    with pytest.raises(InfrastructureError, match="cannot write"):
        await sink.emit(findings(1))
    await sink.close()


async def test_unserialisable_finding_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    sink = FindingsJsonlSink(path)
    with pytest.raises(TypeError):
        await sink.emit([findings(1)[0], {"bad": object()}])
    assert not path.exists() or path.read_bytes() == b""
    await sink.close()
