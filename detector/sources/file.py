"""File source: many files at once, plain or gzip, optionally followed as they grow.

Contract:
* Each file is one stream named by its path; positions are 1-based line numbers. Files are read
  round-robin, ``batch_lines`` lines at a time, so event time advances in step across files
  (one file per cluster replays correctly). Each file is announced with an empty batch first and
  its last batch carries ``end=True`` (not in follow mode, where files never end).
* Lines are delivered without their line ending. A line longer than ``max_record_bytes`` is
  delivered cut to ``max_record_bytes + 1`` bytes (the pipeline rejects it as oversized) and the
  rest of it is skipped without being held in memory.
* Files read to their end are read in blocks split at newlines (a call per block, not per
  line); followed files a line at a time. Both give the same units and line numbers.
* ``follow``: at end of file, poll every ``poll_interval_s``; a partial last line waits for its
  newline; a truncated or replaced file (rotation) is reopened from the start.
* A file that is not line-oriented (binary, e.g. an OTLP protobuf export, or one JSON document
  pretty-printed over many lines) is delivered whole as one unit at position 1.
* A file that cannot be opened raises ``InfrastructureError`` naming it. ``.gz`` is detected by
  its magic bytes, not its name.
* ``commit`` is a no-op: files are replayed from the start.
"""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from detector.errors import InfrastructureError
from detector.sources import Batch, StaticAttrs


def open_maybe_gzip(path: str | Path) -> IO[bytes]:
    """Open ``path`` for binary reading, transparently un-gzipping it if it is gzip."""
    fh: IO[bytes] = open(path, "rb")  # noqa: SIM115 - returned to the caller
    magic = fh.read(2)
    fh.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


class _Reader:
    """One file being read: its handle, line number and partial-line buffer."""

    def __init__(self, path: str, max_record_bytes: int) -> None:
        self.path = path
        self.limit = max_record_bytes
        self.line_no = 0
        self.pending = b""
        self.fh: IO[bytes] | None = None
        self.ino: int | None = None
        self.done = False
        self.whole = False  # the file is one unit (binary protobuf, pretty-printed JSON)
        # Block reading (files read to their end, not followed): lines split but not yet
        # delivered, the next of them, the bytes after the last newline, and whether the rest
        # of an oversized line is being skipped.
        self.block_bytes = 1 << 20
        self._lines: list[bytes] = []
        self._next = 0
        self._tail = b""
        self._skip = False
        self._blocks = False
        self.open()
        self.whole = self._is_document()

    def _is_document(self) -> bool:
        """Not line-oriented: a binary message or one JSON document over many lines.

        OTLP exports saved to a file (``.binpb``, or ``otlp_json`` pretty-printed as in the
        OTLP examples) hold one message; splitting them at newlines would break them.
        """
        assert self.fh is not None
        head = self.fh.peek(4096)[:4096] if hasattr(self.fh, "peek") else b""
        if not head:
            return False
        first = head.split(b"\n", 1)[0].strip()
        if first in (b"{", b"["):
            return True
        # binary from its very start (a protobuf message); garbage later in a text log is not
        start = head[:64]
        if b"\x00" in start:
            return True
        try:
            start.decode("utf-8")
        except UnicodeDecodeError as e:
            return e.start < len(start) - 4  # not just a multi-byte char cut at the end
        return False

    def open(self) -> None:
        try:
            self.fh = open_maybe_gzip(self.path)
            self.ino = os.fstat(self.fh.fileno()).st_ino if hasattr(self.fh, "fileno") else None
        except OSError as e:
            raise InfrastructureError(f"cannot open {self.path}: {e.strerror or e}") from None

    def read(self, n: int, at_eof_final: bool) -> tuple[list[bytes], list[int], bool]:
        """Up to ``n`` lines; returns (units, line numbers, reached end of file)."""
        assert self.fh is not None
        if self.whole:
            if self.line_no:
                return [], [], True
            self.line_no = 1
            data = self.fh.read(self.limit + 1)  # more than the limit is rejected as oversized
            return ([data] if data.strip() else []), ([1] if data.strip() else []), True
        if (at_eof_final and not self.pending) or self._blocks:
            self._blocks = True
            try:
                return self._read_blocks(n)
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise InfrastructureError(f"cannot read {self.path}: {e}") from None
        return self._read_lines(n, at_eof_final)

    def _read_blocks(self, n: int) -> tuple[list[bytes], list[int], bool]:
        """``_read_lines`` for a file read to its end: the same units and line numbers, from
        blocks split at newlines a whole block at a time instead of a call per line."""
        assert self.fh is not None
        maxb = self.limit
        limit = maxb + 1
        units: list[bytes] = []
        nums: list[int] = []
        while len(units) < n:
            if self._next < len(self._lines):
                take = self._lines[self._next : self._next + n - len(units)]
                self._next += len(take)
                # a line within the limit loses its "\r"; a longer one is cut (rejected later)
                cut = [
                    (ln[:-1] if ln[-1:] == b"\r" else ln) if len(ln) <= maxb else ln[:limit]
                    for ln in take
                ]
                base = self.line_no
                self.line_no += len(cut)
                if all(cut):
                    units.extend(cut)
                    nums.extend(range(base + 1, base + 1 + len(cut)))
                else:  # empty lines count, but are not units
                    units.extend(u for u in cut if u)
                    nums.extend(base + j for j, u in enumerate(cut, 1) if u)
                continue
            chunk = self.fh.read(self.block_bytes)
            if self._skip:  # the rest of an oversized line, up to its newline
                if not chunk:
                    self._skip = False
                    return units, nums, True
                nl = chunk.find(b"\n")
                if nl < 0:
                    continue
                self._skip = False
                chunk = chunk[nl + 1 :]
                if not chunk:
                    continue
            if not chunk:
                tail = self._tail
                self._tail = b""
                if tail:  # a last line without its newline, taken as it is
                    self.line_no += 1
                    units.append(tail[:limit])
                    nums.append(self.line_no)
                    if len(units) >= n:
                        return units, nums, False  # the end is reported by the next call
                return units, nums, True
            data = self._tail + chunk if self._tail else chunk
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) >= limit:
                    # an oversized line with no newline yet: its head now, the rest skipped
                    self.line_no += 1
                    units.append(data[:limit])
                    nums.append(self.line_no)
                    self._tail = b""
                    self._skip = True
                else:
                    self._tail = data
                continue
            self._lines = data[:end].split(b"\n")
            self._next = 0
            self._tail = data[end + 1 :]
        return units, nums, False

    def _read_lines(self, n: int, at_eof_final: bool) -> tuple[list[bytes], list[int], bool]:
        """Up to ``n`` lines, a call per line (followed files: partial lines wait here)."""
        assert self.fh is not None
        units: list[bytes] = []
        nums: list[int] = []
        readline = self.fh.readline
        limit = self.limit + 1
        eof = False
        try:
            while len(units) < n:
                line = readline(limit)
                if not line:
                    eof = True
                    break
                if self.pending:
                    line = self.pending + line
                    self.pending = b""
                if line.endswith(b"\n"):
                    line = line[:-1]
                    if line.endswith(b"\r"):
                        line = line[:-1]
                elif len(line) >= limit:
                    # Oversized: keep the head only, skip the rest of the line unread.
                    while True:
                        rest = readline(1 << 16)
                        if not rest or rest.endswith(b"\n"):
                            break
                    line = line[:limit]
                elif not at_eof_final:
                    self.pending = line  # partial last line of a growing file: wait for it
                    eof = True
                    break
                self.line_no += 1
                if line:
                    units.append(line)
                    nums.append(self.line_no)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            # A corrupt or truncated .gz: what was read so far is good, the rest is lost.
            raise InfrastructureError(f"cannot read {self.path}: {e}") from None
        return units, nums, eof

    def rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        assert self.fh is not None
        pos = self.fh.tell() if not isinstance(self.fh, gzip.GzipFile) else 0
        return (self.ino is not None and st.st_ino != self.ino) or st.st_size < pos

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class FileSource:
    def __init__(
        self,
        paths: Sequence[str | Path],
        fmt: str = "auto",
        static: StaticAttrs | None = None,
        follow: bool = False,
        poll_interval_s: float = 0.5,
        batch_lines: int = 2000,
        max_record_bytes: int = 1024 * 1024,
        name: str = "file",
    ) -> None:
        self.name = name
        self.paths = [str(p) for p in paths]
        self.fmt = fmt
        self.static = static or StaticAttrs()
        self.follow = follow
        self.poll_interval_s = poll_interval_s
        self.batch_lines = batch_lines
        self.max_record_bytes = max_record_bytes
        self._stopped = False
        self.bytes_total = sum(_size(p) for p in self.paths)

    async def batches(self) -> AsyncIterator[Batch]:
        readers = [_Reader(p, self.max_record_bytes) for p in self.paths]
        try:
            for r in readers:
                yield Batch(r.path, self.fmt, [], [], self.static)
            active = list(readers)
            while active and not self._stopped:
                progressed = False
                for r in list(active):
                    units, nums, eof = r.read(self.batch_lines, at_eof_final=not self.follow)
                    if units:
                        progressed = True
                    if eof and not self.follow:
                        active.remove(r)
                        r.close()
                        yield Batch(r.path, self.fmt, units, nums, self.static, end=True)
                        continue
                    if units:
                        yield Batch(r.path, self.fmt, units, nums, self.static)
                    if eof and self.follow and r.rotated():
                        r.close()
                        r.pending = b""
                        r.open()
                if not progressed:
                    if not self.follow:
                        continue
                    await asyncio.sleep(self.poll_interval_s)
                else:
                    await asyncio.sleep(0)  # let the pipeline run: backpressure, fairness
        finally:
            for r in readers:
                r.close()

    def position_bytes(self) -> int:
        """Bytes consumed so far over all files (for progress bars); approximate for gzip."""
        return 0

    async def commit(self, positions: Mapping[str, int]) -> None:
        return None

    async def stop(self) -> None:
        self._stopped = True


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
