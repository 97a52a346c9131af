"""Benchmark: decode + resolve + aggregate from a file, against a bare read + orjson.loads loop.

What it does, in one run:
1. generates ``--records`` (default 300,000) access-log lines with the built-in simulator
   (Istio JSON lines of about 1 KB, and Istio text lines) into temporary files;
2. measures, each in its own child process pinned to one core (``os.sched_setaffinity``), the
   best of ``--repeat`` (default 3) runs of:
   (a) ``bare``: read the file in blocks, split lines, ``orjson.loads`` each line;
   (b) ``decode``: the same reading, the format's decoder on each line;
   (c) ``core``: the same reading, ``Pipeline.process_batch`` on batches of 2,000 lines, closing
       ready windows after each batch and flushing at the end (as ``Pipeline.run`` does);
   (d) ``run``: the whole async ``Pipeline.run`` over a ``FileSource``;
   as records/s and each child's peak RSS, with the ratio to the bare loop;
3. with ``--edges K`` (e.g. 100000), the JSON lines are rewritten so the callers
   (``downstream_peer_uri_san``) cycle through K distinct SPIFFE ids and the event time is
   squeezed into ``--edges-span-s`` seconds (default 180: three one-minute windows), so up to K
   edges are open at once; the same modes then report records/s and peak RSS.

It prints a compact table; it never passes or fails (DESIGN.md §9). The header says whether the
compiled hot path is in use (``DETECTOR_PURE_PYTHON=1`` measures the pure-Python one). The
machine may be shared and noisy: best of ``--repeat``.

    .venv/bin/python benchmarks/bench_file.py [--records N] [--repeat R] [--edges K]
        [--formats envoy_json,envoy_text] [--modes bare,decode,core,run]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z, a window boundary
BATCH = 2000
BLOCK = 1 << 22  # bytes read at a time by the in-process modes
MODES = ("bare", "decode", "core", "run")


# -- data --------------------------------------------------------------------------------------


def _lines(fmt: str, n: int) -> Iterator[bytes]:
    from detector.simulation import generate

    opts: dict[str, object] = {"formats": (fmt,)}
    if fmt == "envoy_text":
        opts["text_share"] = 1.0  # every sidecar logs text
    made = 0
    start = T0
    while made < n:  # about 22 lines/s of event time with the default mesh
        end = start + 3600.0
        for f, _cluster, _ts, unit in generate(start, end, **opts):
            if f != fmt:
                continue
            yield unit
            made += 1
            if made >= n:
                return
        start = end


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_data(path: Path, fmt: str, n: int, edges: int = 0, span_s: float = 180.0) -> int:
    size = 0
    with path.open("wb") as f:
        for i, unit in enumerate(_lines(fmt, n)):
            if edges:
                d = orjson.loads(unit)
                d["downstream_peer_uri_san"] = (
                    f"spiffe://cluster.local/ns/ns-{(i % edges) % 997}/sa/caller-{i % edges}"
                )
                d["start_time"] = _iso(T0 + span_s * i / n)
                unit = orjson.dumps(d)
            f.write(unit)
            f.write(b"\n")
            size += len(unit) + 1
    return size


# -- measurements (child process) --------------------------------------------------------------


def _blocks(path: str) -> Iterator[list[bytes]]:
    """Lines of ``path`` without their newline, a few thousand at a time."""
    with open(path, "rb") as f:
        tail = b""
        while True:
            chunk = f.read(BLOCK)
            if not chunk:
                break
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            yield lines
        if tail:
            yield [tail]


def _settings():  # type: ignore[no-untyped-def]
    from detector.pipeline import PipelineSettings

    return PipelineSettings(window_s=60.0, allowed_lateness_s=10.0, idle_stream_s=600.0)


def m_bare(path: str, fmt: str) -> int:
    loads = orjson.loads
    n = 0
    if fmt == "envoy_json":
        for lines in _blocks(path):
            for line in lines:
                loads(line)
            n += len(lines)
    else:  # text: the closest "do nothing" is a UTF-8 decode of each line
        for lines in _blocks(path):
            for line in lines:
                line.decode("utf-8", "replace")
            n += len(lines)
    return n


def m_decode(path: str, fmt: str) -> int:
    from detector.decoders import get_decoder

    decode = get_decoder(fmt)
    n = 0
    for lines in _blocks(path):
        off = n
        for line in lines:
            off += 1
            decode(line, path, off)
        n += len(lines)
    return n


def m_core(path: str, fmt: str) -> int:
    from detector.pipeline import Pipeline
    from detector.sources import Batch, StaticAttrs

    p = Pipeline(_settings())
    static = StaticAttrs()
    agg = p.aggregator
    n = 0
    windows = 0
    p.process_batch(Batch(path, fmt, [], [], static))
    for lines in _blocks(path):
        for i in range(0, len(lines), BATCH):
            units = lines[i : i + BATCH]
            offs = list(range(n + 1, n + 1 + len(units)))
            n += len(units)
            p.process_batch(Batch(path, fmt, units, offs, static))
            windows += len(agg.close_ready())
    p.process_batch(Batch(path, fmt, [], [], static, end=True))
    windows += len(agg.flush())
    if p.stats.bad_units:
        print(f"warning: {p.stats.bad_units} bad units {p.stats.bad_by_reason}", file=sys.stderr)
    return n


def m_run(path: str, fmt: str) -> int:
    from detector.pipeline import Pipeline
    from detector.sources.file import FileSource

    p = Pipeline(_settings())
    stats = asyncio.run(p.run([FileSource([path], fmt=fmt, batch_lines=BATCH)]))
    return stats.units


def child(mode: str, path: str, fmt: str, repeat: int) -> None:
    fn = {"bare": m_bare, "decode": m_decode, "core": m_core, "run": m_run}[mode]
    best = 0.0
    n = 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn(path, fmt)
        dt = time.perf_counter() - t
        best = max(best, n / dt)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "n": n, "rate": best, "rss_mb": rss_mb}))


def _hot_path() -> str:
    """Which core the children run: compiled (``detector._fastpath``) or pure Python."""
    from detector import fastpath

    return "compiled" if fastpath.COMPILED else "pure-python"


def pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


# -- driver ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--edges", type=int, default=0, help="distinct callers (JSON only)")
    ap.add_argument("--edges-span-s", type=float, default=180.0)
    ap.add_argument("--formats", default="envoy_json,envoy_text")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--keep", help="directory to write (and reuse) the data files in")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "FMT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        pin()
        child(a.child[0], a.child[1], a.child[2], a.repeat)
        return

    formats = ["envoy_json"] if a.edges else a.formats.split(",")
    modes = a.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_file") as tmp:
        d = Path(a.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        print(
            f"records={a.records:,} repeat={a.repeat} edges={a.edges or '-'} "
            f"python={sys.version.split()[0]} cpus={os.cpu_count()} hot path={_hot_path()}"
        )
        print(
            f"{'format':<11} {'mode':<7} {'records/s':>11} {'us/rec':>7} {'x bare':>7} "
            f"{'RSS MB':>7}"
        )
        for fmt in formats:
            name = f"{fmt}-{a.records}" + (f"-e{a.edges}-s{a.edges_span_s:g}" if a.edges else "")
            path = d / f"{name}.log"
            if not path.exists():
                t = time.perf_counter()
                size = write_data(path, fmt, a.records, a.edges, a.edges_span_s)
                print(
                    f"# wrote {path.name}: {size / 1e6:.0f} MB, {size / a.records:.0f} B/line "
                    f"in {time.perf_counter() - t:.1f}s"
                )
            bare = 0.0
            for mode in modes:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--repeat",
                        str(a.repeat),
                        "--child",
                        mode,
                        str(path),
                        fmt,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                if out.stderr.strip():
                    print("#", out.stderr.strip().replace("\n", "\n# "))
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if mode == "bare":
                    bare = r["rate"]
                ratio = f"{r['rate'] / bare:7.2f}" if bare else f"{'-':>7}"
                print(
                    f"{fmt:<11} {mode:<7} {r['rate']:>11,.0f} {1e6 / r['rate']:>7.2f} {ratio} "
                    f"{r['rss_mb']:>7.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
