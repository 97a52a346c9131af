"""Benchmark: replay throughput with and without scoring, and what scoring costs per window.

What it does, in one run, on the same generated data:
1. simulates ``--train-hours`` (default 6) of training and ``--test-hours`` (default 2) of test
   traffic with the default scenarios (the files ``detector simulate`` writes) and trains a
   model on the first (as ``detector train --cluster-from-filename`` does); with ``--keep DIR``
   the data and the model are kept there and reused by later runs;
2. measures, each in its own child process pinned to one core, the best of ``--repeat``
   (default 3) runs of:
   (a) ``aggregate``: replay's input path (file sources, decode, resolve, aggregate) into a
       window sink that only counts: records/s without scoring;
   (b) ``replay``: ``replay.replay`` as ``detector replay`` runs it (scoring, incidents,
       findings and actions written): records/s;
   (c) ``scoring``: the closed windows of (a), captured once, through the detection stage alone
       (a fresh scorer from the artifact each run, sinks writing JSON lines as in a replay):
       ms per window time, us per edge window, and us per input record amortised.
   Records/s are over the pipeline's own elapsed time (``PipelineStats.elapsed_s``), so loading
   the artifact (which refits the forest) is left out of (a) and (b) alike;
3. prints a compact table. It never passes or fails (DESIGN.md §9); the machine may be shared
   and noisy: best of ``--repeat``.

    .venv/bin/python benchmarks/bench_replay.py [--train-hours H] [--test-hours H]
        [--repeat R] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("aggregate", "replay", "scoring")


# -- data --------------------------------------------------------------------------------------


def prepare(d: Path, train_hours: float, test_hours: float) -> tuple[Path, Path]:
    """Simulated train/test files and a model trained on the first, made once per ``d``."""
    sim, models = d / "sim", d / "models"
    if not (sim / "manifest.json").exists():
        from detector.simulation import default_scenarios, write_files

        t0 = 1_767_571_200.0  # 2026-01-05T00:00:00Z, ``detector simulate``'s default start
        train_s, test_s = train_hours * 3600, test_hours * 3600
        t = time.perf_counter()
        write_files(
            sim,
            train_start=t0,
            train_s=train_s,
            test_s=test_s,
            scenarios=default_scenarios(t0 + train_s, test_s),
        )
        print(f"# simulated {train_hours:g} h + {test_hours:g} h in {time.perf_counter() - t:.0f}s")
    if not any(models.glob("v*")):
        from detector.replay import train

        t = time.perf_counter()
        train([sim / "train"], models, cluster_from_filename=True)
        print(f"# trained in {time.perf_counter() - t:.0f}s")
    return sim / "test", models


# -- measured modes (each in a pinned child process) -------------------------------------------


def _windows(test: Path) -> tuple[list[list[Any]], Any]:
    """Replay's input path into a window sink that keeps the closed windows."""
    from detector.pipeline import PipelineSettings
    from detector.replay import _run, _WindowCollector, expand_inputs

    got: list[list[Any]] = []
    sink = _WindowCollector(lambda ws: got.append(list(ws)))
    _, stats = _run(
        expand_inputs([test]), PipelineSettings(allowed_lateness_s=30.0), sink, "", True
    )
    return got, stats


def m_aggregate(test: Path, models: Path, out: Path) -> dict[str, float]:
    from detector.pipeline import PipelineSettings
    from detector.replay import _run, _WindowCollector, expand_inputs

    sink = _WindowCollector(lambda ws: None)
    _, stats = _run(
        expand_inputs([test]), PipelineSettings(allowed_lateness_s=30.0), sink, "", True
    )
    return {"records": stats.records, "seconds": stats.elapsed_s, "edge_windows": sink.windows}


def m_replay(test: Path, models: Path, out: Path) -> dict[str, float]:
    from detector.replay import replay

    r = replay(models, [test], out, cluster_from_filename=True)
    return {"records": r.stats.records, "seconds": r.stats.elapsed_s, "findings": r.findings}


_CAPTURED: tuple[list[list[Any]], Any] | None = None


def m_scoring(test: Path, models: Path, out: Path) -> dict[str, float]:
    from detector import artifacts
    from detector.detection import scorer_and_tracker
    from detector.replay import findings_stage

    global _CAPTURED
    if _CAPTURED is None:  # decode and aggregate once; only the detection stage is timed
        _CAPTURED = _windows(test)
    emits, stats = _CAPTURED
    scorer, tracker = scorer_and_tracker(artifacts.load(models))
    stage = findings_stage(scorer, tracker, out)

    async def run() -> float:
        t = time.perf_counter()
        for ws in emits:
            await stage.emit(ws)
        await stage.close()
        return time.perf_counter() - t

    seconds = asyncio.run(run())
    return {
        "records": stats.records,
        "seconds": seconds,
        "window_times": scorer.stats.window_times,
        "edge_windows": scorer.stats.edge_windows,
        "findings": stage.findings,
    }


def child(mode: str, test: Path, models: Path, out: Path, repeat: int) -> None:
    fn = {"aggregate": m_aggregate, "replay": m_replay, "scoring": m_scoring}[mode]
    best: dict[str, float] | None = None
    for _ in range(repeat):
        r = fn(test, models, out)
        if best is None or r["seconds"] < best["seconds"]:
            best = r
    print(json.dumps({"mode": mode, **(best or {})}))


def pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


# -- driver ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--train-hours", type=float, default=6.0)
    ap.add_argument("--test-hours", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--keep", help="directory to write (and reuse) the data and model in")
    ap.add_argument(
        "--child", nargs=4, metavar=("MODE", "TEST", "MODELS", "OUT"), help=argparse.SUPPRESS
    )
    a = ap.parse_args()
    if a.child:
        pin()
        mode, test, models, out = a.child
        child(mode, Path(test), Path(models), Path(out), a.repeat)
        return

    with tempfile.TemporaryDirectory(prefix="bench_replay") as tmp:
        d = Path(a.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        test, models = prepare(d, a.train_hours, a.test_hours)
        # the spans of the data measured (a reused --keep directory may hold other spans)
        spans = json.loads((d / "sim" / "manifest.json").read_text())["spans"]
        hours = {k: (v["end"] - v["start"]) / 3600 for k, v in spans.items()}
        print(
            f"data={d if a.keep else 'generated'} "
            f"train={hours['train']:g}h test={hours['test']:g}h repeat={a.repeat} "
            f"python={sys.version.split()[0]} cpus={os.cpu_count()}"
        )
        results: dict[str, dict[str, float]] = {}
        for mode in a.modes.split(","):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--repeat",
                    str(a.repeat),
                    "--child",
                    mode,
                    str(test),
                    str(models),
                    str(Path(tmp) / f"out-{mode}"),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{'mode':<10} {'records':>10} {'seconds':>8} {'records/s':>10} {'us/rec':>7}")
        for mode, r in results.items():
            rate = r["records"] / r["seconds"]
            print(
                f"{mode:<10} {int(r['records']):>10,} {r['seconds']:>8.2f} {rate:>10,.0f} "
                f"{1e6 / rate:>7.2f}"
            )
        s = results.get("scoring")
        if s:
            print(
                f"scoring: {s['window_times']:.0f} window times, {s['edge_windows']:.0f} edge "
                f"windows, {s['findings']:.0f} finding events: "
                f"{1e3 * s['seconds'] / s['window_times']:.2f} ms per window time, "
                f"{1e6 * s['seconds'] / s['edge_windows']:.1f} us per edge window, "
                f"{1e6 * s['seconds'] / s['records']:.2f} us per record"
            )


if __name__ == "__main__":
    main()
