"""Stdin source: lines from standard input, one stream named ``stdin``.

Contract: lines are read in a worker thread (stdin may be a pipe, a file or a terminal, and a
blocking read must not stall the event loop) and delivered as soon as they arrive, one batch per
read; positions are 1-based line numbers; EOF ends the stream
(``end=True``). Oversized lines are cut as the file source does. ``commit`` is a no-op.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Mapping
from typing import IO

from detector.sources import Batch, StaticAttrs


class StdinSource:
    def __init__(
        self,
        fmt: str = "auto",
        static: StaticAttrs | None = None,
        batch_lines: int = 500,
        max_record_bytes: int = 1024 * 1024,
        stream: IO[bytes] | None = None,
        name: str = "stdin",
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.static = static or StaticAttrs()
        self.batch_lines = batch_lines
        self.max_record_bytes = max_record_bytes
        self._stream = stream
        self._stopped = False

    def _read_chunk(self, fh: IO[bytes]) -> bytes:
        # read1: whatever is available (one raw read), so a pipe's lines flow without waiting
        # for a full buffer.
        read1 = getattr(fh, "read1", None)
        return bytes(read1(1 << 16) if read1 is not None else fh.read(1 << 16))

    async def batches(self) -> AsyncIterator[Batch]:
        fh = self._stream or sys.stdin.buffer
        limit = self.max_record_bytes
        line_no = 0
        partial = b""
        skipping = False  # inside an oversized line: drop bytes up to its newline
        while not self._stopped:
            chunk = await asyncio.to_thread(self._read_chunk, fh)
            eof = not chunk
            if skipping and chunk:
                nl = chunk.find(b"\n")
                if nl < 0:
                    continue  # still inside the oversized line
                chunk, skipping = chunk[nl + 1 :], False
            lines = (partial + chunk).split(b"\n") if chunk else [partial]
            partial = b"" if eof else lines.pop()
            units: list[bytes] = []
            nums: list[int] = []
            for line in lines:
                line_no += 1
                line = line.rstrip(b"\r")
                if line:
                    units.append(line[: limit + 1])
                    nums.append(line_no)
            if len(partial) > limit:
                line_no += 1
                units.append(partial[: limit + 1])
                nums.append(line_no)
                partial = b""
                skipping = True
            if units or eof:
                yield Batch("stdin", self.fmt, units, nums, self.static, end=eof)
            if eof:
                return

    async def commit(self, positions: Mapping[str, int]) -> None:
        return None

    async def stop(self) -> None:
        self._stopped = True
