"""File and stdin sources: gzip, many files, long and partial lines, follow and rotation."""

from __future__ import annotations

import asyncio
import gzip
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.errors import InfrastructureError
from detector.sources import Batch
from detector.sources.file import FileSource
from detector.sources.stdin import StdinSource


async def collect(src: FileSource | StdinSource, limit: int = 10_000) -> list[Batch]:
    out = []
    async for b in src.batches():
        out.append(b)
        if len(out) >= limit:
            break
    return out


async def test_plain_and_gzip_files_round_robin_with_line_numbers(tmp_path: Path) -> None:
    a = tmp_path / "a.log"
    a.write_bytes(b"".join(b"a%d\n" % i for i in range(5)))
    b = tmp_path / "b.log.gz"  # gzip is told by magic bytes, so name it anything
    b.write_bytes(gzip.compress(b"b0\r\n\nb2\n"))
    batches = await collect(FileSource([a, b], fmt="envoy_json", batch_lines=2))
    assert [x.units for x in batches[:2]] == [[], []]  # both streams announced first
    # a and b alternate: event time advances in step across files
    assert [x.stream for x in batches[2:4]] == [str(a), str(b)]
    units = {s: [u for x in batches if x.stream == s for u in x.units] for s in (str(a), str(b))}
    assert units[str(a)] == [b"a0", b"a1", b"a2", b"a3", b"a4"]
    assert units[str(b)] == [b"b0", b"b2"]  # CRLF stripped, blank line skipped
    offs = [o for x in batches if x.stream == str(b) for o in x.offsets]
    assert offs == [1, 3]  # 1-based line numbers, the blank line still counts
    assert {x.stream for x in batches if x.end} == {str(a), str(b)}
    assert all(x.fmt == "envoy_json" for x in batches)


async def test_oversized_line_is_cut_and_rest_skipped(tmp_path: Path) -> None:
    f = tmp_path / "big.log"
    f.write_bytes(b"ok1\n" + b"x" * 100_000 + b"\nok2\n")
    batches = await collect(FileSource([f], max_record_bytes=1000))
    units = [u for x in batches for u in x.units]
    assert units[0] == b"ok1" and units[2] == b"ok2"
    assert len(units[1]) == 1001  # the pipeline rejects this as oversized
    assert [o for x in batches for o in x.offsets] == [1, 2, 3]


async def test_missing_file_is_infrastructure_error(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match="cannot open"):
        await collect(FileSource([tmp_path / "nope.log"]))


async def test_last_line_without_newline_is_read_at_end(tmp_path: Path) -> None:
    f = tmp_path / "x.log"
    f.write_bytes(b"one\ntwo")
    assert [u for x in await collect(FileSource([f])) for u in x.units] == [b"one", b"two"]


async def test_follow_reads_appends_waits_for_partial_lines_and_reopens_rotated(
    tmp_path: Path,
) -> None:
    f = tmp_path / "live.log"
    f.write_bytes(b"l1\n")
    src = FileSource([f], follow=True, poll_interval_s=0.02)
    got: list[bytes] = []

    async def reader() -> None:
        async for b in src.batches():
            got.extend(b.units)

    task = asyncio.create_task(reader())

    async def wait_for(n: int) -> None:
        for _ in range(200):
            if len(got) >= n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"only {got}")

    await wait_for(1)
    with open(f, "ab") as fh:
        fh.write(b"l2\nl3-part")
    await wait_for(2)
    await asyncio.sleep(0.1)
    assert got == [b"l1", b"l2"]  # the partial line waits for its newline
    with open(f, "ab") as fh:
        fh.write(b"ial\n")
    await wait_for(3)
    assert got[2] == b"l3-partial"
    # rotation: the file is replaced by a new, shorter one
    f.rename(tmp_path / "live.log.1")
    f.write_bytes(b"new1\n")
    await wait_for(4)
    assert got[3] == b"new1"
    await src.stop()
    await asyncio.wait_for(task, 2)


async def test_stdin_lines_eof_and_oversized() -> None:
    data = b"a\r\nb\n" + b"z" * 5000 + b"\nc"
    src = StdinSource(stream=io.BufferedReader(io.BytesIO(data), buffer_size=64),
                      max_record_bytes=100)
    batches = await collect(src)
    units = [u for x in batches for u in x.units]
    assert units[:2] == [b"a", b"b"] and len(units[2]) == 101 and units[3] == b"c"
    assert [o for x in batches for o in x.offsets] == [1, 2, 3, 4]
    assert batches[-1].end


async def test_binary_and_pretty_json_files_are_one_unit(tmp_path: Path) -> None:
    binary = tmp_path / "export.binpb"
    binary.write_bytes(b"\x0a\x84\x01\x0a\x00\n\n\x12\x7f binary with newlines")
    pretty = tmp_path / "export.json"
    pretty.write_bytes(b'{\n  "resourceSpans": [\n  ]\n}\n')
    text = tmp_path / "text.log"
    text.write_bytes(b"line one: a perfectly ordinary first line of a text log\nline two \x00\xff later garbage\n")
    got = {x.stream: x.units for x in await collect(FileSource([binary, pretty, text])) if x.units}
    assert got[str(binary)] == [binary.read_bytes()]
    assert got[str(pretty)] == [pretty.read_bytes()]
    assert len(got[str(text)]) == 2  # a text log with garbage later stays line by line


def _read_all(path: Path, limit: int, n: int, blocks: bool, block_bytes: int) -> list[object]:
    from detector.sources.file import _Reader

    r = _Reader(str(path), limit)
    r.whole = False
    r.block_bytes = block_bytes
    out: list[object] = []
    for _ in range(10_000):
        got = r._read_blocks(n) if blocks else r._read_lines(n, at_eof_final=True)
        out.append(got)
        if got[2]:
            break
    r.close()
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"a", b"bc", b"\r", b"\n", b"\r\n", b"xxxxxxxxxxx", b"y" * 30, b"\n\n"]),
        max_size=40,
    ),
    st.integers(min_value=1, max_value=7),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=12),
)
def test_block_reading_matches_line_reading(
    parts: list[bytes], n: int, block: int, limit: int
) -> None:
    """Files read to their end go through blocks; the units, line numbers and end-of-file
    signals are those of the line-at-a-time reader (the follow-mode path)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.log"
        path.write_bytes(b"".join(parts))
        assert _read_all(path, limit, n, True, block) == _read_all(path, limit, n, False, block)
