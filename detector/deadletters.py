"""Dead letters: bad input units kept, bounded, with their source position and reason.

Contract:
* ``add(stream, offset, reason, data)`` never raises and never blocks for long: it counts the
  unit by ``reason``, keeps the newest ``max_records`` in memory, and appends one JSON line
  (``{"stream","offset","reason","detail","size","data"}``; ``data`` is the first ``keep_bytes``
  bytes, as text when it is UTF-8, else base64 with ``"encoding":"base64"``) to ``path`` when set,
  rolling the file over once (``.1``) at ``max_file_bytes``.
* Counting is exact; what is kept is bounded. A write failure is counted, not raised: losing a
  dead letter must not stop the good data around it.
"""

from __future__ import annotations

import base64
import collections
import os
from pathlib import Path
from typing import Any

import orjson


class DeadLetters:
    def __init__(
        self,
        path: str | Path | None = None,
        max_records: int = 10_000,
        max_file_bytes: int = 64 * 1024 * 1024,
        keep_bytes: int = 4096,
    ) -> None:
        self.path = Path(path) if path else None
        self.max_file_bytes = max_file_bytes
        self.keep_bytes = keep_bytes
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_records)
        self.write_failures = 0
        self._fh: Any = None
        self._written = 0

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(
        self, stream: str, offset: int | None, reason: str, data: bytes, detail: str = ""
    ) -> None:
        self.by_reason[reason] += 1
        kept = data[: self.keep_bytes]
        entry: dict[str, Any] = {
            "stream": stream,
            "offset": offset,
            "reason": reason,
            "detail": detail[:500],
            "size": len(data),
        }
        try:
            entry["data"] = kept.decode("utf-8")
        except UnicodeDecodeError:
            entry["data"] = base64.b64encode(kept).decode("ascii")
            entry["encoding"] = "base64"
        self.recent.append(entry)
        if self.path is not None:
            self._write(entry)

    def _write(self, entry: dict[str, Any]) -> None:
        try:
            if self._fh is None:
                assert self.path is not None
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open across calls
                self._written = self._fh.tell()
            line = orjson.dumps(entry) + b"\n"
            if self._written + len(line) > self.max_file_bytes:
                self._fh.close()
                assert self.path is not None
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._fh = open(self.path, "ab")  # noqa: SIM115
                self._written = 0
            self._fh.write(line)
            self._written += len(line)
        except OSError:
            self.write_failures += 1

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError:
                self.write_failures += 1

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                self.write_failures += 1
            self._fh = None
