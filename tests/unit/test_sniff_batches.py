"""``auto`` batches of one access-log format go to that format's batch decoder.

Pinned: for batches that ``uniform_format`` names, ``Pipeline.decode_batch`` with ``auto`` gives
exactly the records and dead letters of decoding each unit with ``auto`` (real fixture lines, a
malformed line, a wrapped line, a mixed batch); mixed or wrapped batches are not named.
"""

from __future__ import annotations

from pathlib import Path

from detector.decoders.sniff import decode as auto
from detector.decoders.sniff import uniform_format
from detector.errors import DecodeError
from detector.pipeline import Pipeline
from detector.sources import Batch

JSON = (
    b'{"start_time":"2024-05-01T12:00:00.123Z","method":"GET","path":"/a","protocol":"HTTP/1.1",'
    b'"response_code":200,"bytes_received":1,"bytes_sent":2,"duration":3,'
    b'"upstream_cluster":"inbound|80||","downstream_remote_address":"10.0.0.1:5",'
    b'"authority":"a.b.svc.cluster.local:80","downstream_peer_uri_san":"spiffe://td/ns/x/sa/y"}'
)


def text_lines(fixtures_dir: Path) -> list[bytes]:
    path = fixtures_dir / "envoy-istio" / "istio-io_access-log-task_TEXT.log"
    return [ln for ln in path.read_bytes().splitlines() if ln.startswith(b"[")]


def per_unit(units: list[bytes]) -> tuple[list[object], int]:
    out: list[object] = []
    bad = 0
    for i, u in enumerate(units):
        try:
            out.extend(auto(u, "s", i + 1))
        except DecodeError:
            bad += 1
    return out, bad


def batched(units: list[bytes]) -> tuple[list[object], int]:
    p = Pipeline()
    recs = p.decode_batch(Batch("s", "auto", units, list(range(1, len(units) + 1))), False)
    return list(recs), p.stats.bad_units


def test_uniform_batches_decode_as_unit_by_unit(fixtures_dir: Path) -> None:
    text = text_lines(fixtures_dir)
    assert text and uniform_format(text) == "envoy_text"
    json_batch = [JSON, JSON.replace(b'"/a"', b'"/b"'), JSON[:-20]]  # the last one is truncated
    assert uniform_format(json_batch) == "envoy_json"
    for units in (text, json_batch, [*text, b"[2024-05-01T12:00:00.000Z] garbage"]):
        assert batched(units) == per_unit(units)
    assert batched(json_batch)[1] == 1  # the truncated line is dead-lettered, the rest kept


def test_mixed_or_wrapped_batches_are_not_named(fixtures_dir: Path) -> None:
    text = text_lines(fixtures_dir)
    wrapped = b'{"start_time":"x","log":"[2024-05-01T12:00:00.000Z] ..."}'
    assert uniform_format([JSON, text[0]]) is None
    assert uniform_format([JSON, JSON + b"\n" + JSON]) is None  # a unit holding a newline
    assert uniform_format([JSON, wrapped]) is None
    assert uniform_format([b' ' + JSON]) is None
    assert uniform_format([]) is None
    mixed = [JSON, text[0], wrapped]
    assert batched(mixed) == per_unit(mixed)
    # text batches are named by their first unit: the others still decode as ``auto`` would
    text_first = [text[0], JSON, wrapped, b"junk"]
    assert uniform_format(text_first) == "envoy_text"
    assert batched(text_first) == per_unit(text_first)
