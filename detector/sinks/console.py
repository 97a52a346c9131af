"""Console sink: a human-readable line per closed window, and the busiest edges in it.

Contract: writes to the given text stream (stdout by default); marks an edge ``NEW`` the first
time it is ever seen and shows auth failures and denials per window, so the embedded demo shows
telemetry flowing and what the detector makes of it. Never raises on a broken pipe (the reader
went away: e.g. ``detector run | head``).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from detector.flows import EdgeWindow


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.0f}TB"


class ConsoleSink:
    def __init__(self, out: TextIO | None = None, top_edges: int = 8) -> None:
        self.out = out or sys.stdout
        self.top_edges = top_edges
        self._seen: set[tuple[str, str, str, str, str]] = set()
        self._broken = False

    async def emit(self, windows: list[EdgeWindow]) -> None:
        if self._broken or not windows:
            return
        by_window: dict[float, list[EdgeWindow]] = {}
        for w in windows:
            by_window.setdefault(w.window_start, []).append(w)
        lines: list[str] = []
        for start in sorted(by_window):
            ws = by_window[start]
            total = sum(w.total for w in ws)
            fails = sum(w.unauthenticated for w in ws)
            denied = sum(w.denied for w in ws)
            errors = sum(w.errors for w in ws)
            new = []
            for w in ws:
                key = (
                    w.src_principal,
                    w.src_cluster,
                    w.dst_namespace,
                    w.dst_service,
                    w.dst_cluster,
                )
                if key not in self._seen:
                    self._seen.add(key)
                    new.append(w)
            stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(start))
            lines.append(
                f"[{stamp}Z] {len(ws):4d} edges {total:7d} records  errors {errors:5d}  "
                f"denied {denied:4d}  unauthenticated {fails:4d}  new edges {len(new)}"
            )
            if self.top_edges:
                busiest = sorted(ws, key=lambda w: w.total, reverse=True)[: self.top_edges]
                for w in busiest:
                    flag = " NEW" if w in new else ""
                    lat = f"p90 {w.latency_p90_ms:.0f}ms" if w.latency_p90_ms is not None else ""
                    lines.append(
                        f"    {w.total:6d}  {w.edge}  out {_fmt_bytes(w.bytes_out)} {lat}{flag}"
                    )
                # Failures matter even on quiet edges: show them although they are not busy.
                noisy = [w for w in ws if (w.unauthenticated or w.denied) and w not in busiest]
                for w in sorted(noisy, key=lambda w: w.unauthenticated + w.denied, reverse=True)[
                    : self.top_edges
                ]:
                    lines.append(
                        f"    {w.total:6d}  {w.edge}  denied {w.denied} "
                        f"unauthenticated {w.unauthenticated}"
                    )
        try:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        except BrokenPipeError:
            self._broken = True

    async def close(self) -> None:
        return None
