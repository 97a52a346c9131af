"""Dead letters: exact counts, bounded memory, bounded file with one roll-over, binary kept."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from detector.deadletters import DeadLetters


def test_counts_exact_memory_bounded_and_file_rolls_over(tmp_path: Path) -> None:
    path = tmp_path / "dl" / "dead.jsonl"
    dl = DeadLetters(path, max_records=10, max_file_bytes=5000, keep_bytes=50)
    for i in range(100):
        dl.add("t[0]", i, "not_json" if i % 2 else "oversized", b"x" * 200)
    dl.close()
    assert dl.total == 100 and dl.by_reason == {"not_json": 50, "oversized": 50}
    assert len(dl.recent) == 10 and dl.recent[-1]["offset"] == 99
    assert path.stat().st_size <= 5000
    assert (tmp_path / "dl" / "dead.jsonl.1").exists()
    last = orjson.loads(path.read_bytes().splitlines()[-1])
    assert last["stream"] == "t[0]" and last["offset"] == 99 and last["size"] == 200
    assert len(last["data"]) == 50


def test_binary_units_are_base64(tmp_path: Path) -> None:
    dl = DeadLetters()
    dl.add("otlp", 3, "bad_protobuf", b"\xff\xfe\x00")
    e = dl.recent[0]
    assert e["encoding"] == "base64" and base64.b64decode(e["data"]) == b"\xff\xfe\x00"


def test_unwritable_path_is_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    dl = DeadLetters(tmp_path / "file" / "sub" / "dead.jsonl")
    dl.add("s", 1, "r", b"x")
    assert dl.write_failures == 1 and dl.total == 1
