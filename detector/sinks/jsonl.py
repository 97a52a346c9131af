"""JSON-lines sink: every closed edge window as one JSON object per line.

Contract: appends to ``path`` (created with its folder), flushing after every emit so a reader
sees whole lines; an I/O error raises ``InfrastructureError`` (a sink that cannot write must not
let offsets be committed). Field names are those of ``flows.EdgeWindow``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import IO

import orjson

from detector.errors import InfrastructureError
from detector.flows import EdgeWindow


def window_to_dict(w: EdgeWindow) -> dict[str, object]:
    d = dataclasses.asdict(w)
    d["src_ips"] = list(w.src_ips)
    return d


class JsonlSink:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] | None = None

    async def emit(self, windows: list[EdgeWindow]) -> None:
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open across emits
            self._fh.write(b"".join(orjson.dumps(window_to_dict(w)) + b"\n" for w in windows))
            self._fh.flush()
        except OSError as e:
            raise InfrastructureError(f"cannot write {self.path}: {e.strerror or e}") from None

    async def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
