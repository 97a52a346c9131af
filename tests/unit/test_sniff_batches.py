"""``auto`` batches decode exactly as ``auto`` does unit by unit.

Pinned: ``Pipeline.decode_batch`` with ``auto`` (the compiled loop that takes the units ``sniff``
names Envoy JSON or text, when built) gives exactly the records and dead-letter count of decoding
each unit with ``sniff.decode``, for every line of every fixture shuffled into mixed batches,
wrapped lines, lines led by whitespace, truncated and garbage lines. On the compiled path the
access-log units never reach the per-unit path, and every other unit does.
"""

from __future__ import annotations

import random
from pathlib import Path

from detector import fastpath
from detector.decoders.sniff import decode as auto
from detector.decoders.sniff import sniff
from detector.errors import DecodeError
from detector.pipeline import Pipeline
from detector.records import FlowRecord
from detector.sources import Batch

JSON = (
    b'{"start_time":"2024-05-01T12:00:00.123Z","method":"GET","path":"/a","protocol":"HTTP/1.1",'
    b'"response_code":200,"bytes_received":1,"bytes_sent":2,"duration":3,'
    b'"upstream_cluster":"inbound|80||","downstream_remote_address":"10.0.0.1:5",'
    b'"authority":"a.b.svc.cluster.local:80","downstream_peer_uri_san":"spiffe://td/ns/x/sa/y"}'
)
WRAPPED = b'{"start_time":"x","log":"[2024-05-01T12:00:00.000Z] \\"GET / HTTP/1.1\\" 200"}'
CRAFTED = [
    JSON,
    JSON.replace(b'"/a"', b'"/b"'),
    JSON[:-20],  # truncated: dead-lettered
    b" " + JSON,  # led by whitespace: sniffed after lstrip, so the per-unit path takes it
    WRAPPED,
    JSON[:-1] + b',"kubernetes":{"pod_name":"p"}}',  # a wrapper key in the head
    b"[2024-05-01T12:00:00.000Z] garbage",
    b"[12",
    b"junk",
]


class Counting(Pipeline):
    """A pipeline that counts the units its per-unit path sees."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_units: list[bytes] = []

    def _decode_unit(self, decode, stream, unit, off):  # type: ignore[no-untyped-def]
        self.slow_units.append(unit)
        return super()._decode_unit(decode, stream, unit, off)


def fixture_lines(fixtures_dir: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(fixtures_dir.rglob("*")):
        if path.is_file() and path.suffix in (".log", ".json", ".jsonl"):
            lines.extend(ln for ln in path.read_bytes().splitlines() if ln.strip())
    return lines


def per_unit(units: list[bytes]) -> tuple[list[FlowRecord], int]:
    out: list[FlowRecord] = []
    bad = 0
    for i, u in enumerate(units):
        try:
            out.extend(auto(u, "s", i + 1))
        except DecodeError:
            bad += 1
    return out, bad


def batched(units: list[bytes], pipeline: Pipeline | None = None) -> tuple[list[FlowRecord], int]:
    p = pipeline or Pipeline()
    recs = p.decode_batch(Batch("s", "auto", units, list(range(1, len(units) + 1))), False)
    return list(recs), p.stats.bad_units


def test_mixed_batches_decode_as_unit_by_unit(fixtures_dir: Path) -> None:
    lines = fixture_lines(fixtures_dir) + CRAFTED
    assert {sniff(u) for u in lines} >= {"envoy_json", "envoy_text", "hubble", "k8s_audit"}
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(lines)
        for start in range(0, len(lines), 97):
            units = lines[start : start + 97]
            assert batched(units) == per_unit(units)
    recs, bad = batched(CRAFTED)
    # dead letters: the truncated line, the wrapped line's payload, two garbage lines, junk
    assert bad == 5 and len(recs) == 4


def test_access_log_units_skip_the_per_unit_path(fixtures_dir: Path) -> None:
    # the Istio >= 1.9 text layout, the one the compiled tokenizer reads
    path = fixtures_dir / "envoy-istio" / "istio-io_access-log-task_TEXT.log"
    text = [ln for ln in path.read_bytes().splitlines() if ln.startswith(b"[20")]
    units = [JSON, *text, WRAPPED, b" " + JSON, JSON.replace(b'"/a"', b'"/c"')]
    p = Counting()
    assert batched(units, p) == per_unit(units)
    if fastpath.batch_decoder("auto") is None:
        assert len(p.slow_units) == len(units)  # pure Python: every unit goes unit by unit
        return
    # compiled: only the wrapped and the whitespace-led units take the per-unit path
    assert p.slow_units == [WRAPPED, b" " + JSON]
