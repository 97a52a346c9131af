"""Findings JSON-lines sink: every OCSF Detection Finding as one JSON object per line.

Contract: ``emit(findings)`` appends each finding (an OCSF dict from ``detector.findings``) as
one line to ``path`` (created with its folder on first use), then flushes, so a reader never
sees a half-written batch line and the pipeline may commit offsets once ``emit`` returns. Any
``OSError`` (disk full, permission, folder gone) raises ``InfrastructureError``: a sink that
cannot write must stop offsets from being committed. A finding that is not JSON-serialisable is
a programming error and raises ``TypeError`` (orjson's) rather than being dropped silently.
Keys are written in insertion order; ``sort_keys=True`` sorts them (stable diffs of replays).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from detector.errors import InfrastructureError


class FindingsJsonlSink:
    def __init__(self, path: str | Path, sort_keys: bool = False) -> None:
        self.path = Path(path)
        self._opts = orjson.OPT_APPEND_NEWLINE | (orjson.OPT_SORT_KEYS if sort_keys else 0)
        self._fh: IO[bytes] | None = None
        self.written = 0

    async def emit(self, findings: Sequence[Mapping[str, Any]]) -> None:
        if not findings:
            return
        # Serialise the whole batch before touching the file: a bad finding then writes nothing.
        data = b"".join(orjson.dumps(f, option=self._opts) for f in findings)
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open across emits
            self._fh.write(data)
            self._fh.flush()
        except OSError as e:
            raise InfrastructureError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.written += len(findings)

    async def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as e:
                raise InfrastructureError(f"cannot close {self.path}: {e.strerror or e}") from None
            finally:
                self._fh = None
