"""Offline runs over recorded telemetry: ``detector train`` and ``detector replay``.

Contract:
* Inputs are files or folders (every file inside, recursively), plain or gzip, any mix of the
  formats of DESIGN.md §4: each record's format is sniffed (``auto``). Event time only: a
  replay runs as fast as the machine allows and gives the same result every time.
* ``train(inputs, out_dir)`` learns every baseline, holding out the last ``calibration_share``
  of the training span (by event time, read from the first and last records of each input) to
  calibrate the models' scores, and writes a new artifact version (``artifacts.save``).
* ``replay(model_dir, inputs, out_dir)`` scores the telemetry with a saved artifact and writes
  ``out_dir/findings.jsonl`` (one OCSF Detection Finding per line, ``time`` = event time in ms)
  and ``out_dir/actions.jsonl`` (one line per remediation action the playbooks would take).
  Online learning goes on during the replay (windows that raised findings excepted), as in the
  service.
* ``cluster_from_filename``: each file is its own stream whose static cluster is the first
  dot-separated part of its name (``prod-eu.k8s_audit.jsonl``), for inputs such as audit logs
  that do not name their cluster (the simulator writes files that way).
* A progress bar on stderr shows how far the input has been read, on a terminal only.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector import artifacts
from detector.decoders import get_decoder
from detector.errors import DecodeError, InfrastructureError, PartialDecode
from detector.flows import EdgeWindow
from detector.pipeline import Pipeline, PipelineSettings, PipelineStats
from detector.scoring import Scorer, Thresholds
from detector.sources import Batch, StaticAttrs
from detector.sources.file import FileSource, open_maybe_gzip

if TYPE_CHECKING:
    from detector.detection import DetectionStage


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named, and every file under folders named, sorted; missing paths are errors."""
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file() and not f.name.startswith(".") and f.name != "labels.jsonl"
                )
            )
        elif p.is_file():
            out.append(p)
        else:
            raise InfrastructureError(f"no such input: {p}")
    if not out:
        raise InfrastructureError("no input files")
    return out


def _first_last_lines(path: Path, n: int = 5) -> list[bytes]:
    with open_maybe_gzip(path) as fh:
        head = [fh.readline().rstrip(b"\r\n") for _ in range(n)]
        if isinstance(fh, gzip.GzipFile):
            tail: list[bytes] = []
            for line in fh:  # gzip cannot seek from the end: stream through (C speed)
                tail.append(line)
                if len(tail) > n:
                    tail.pop(0)
        else:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - 64 * 1024))
            tail = fh.read().splitlines()[-n:]
    return [x.rstrip(b"\r\n") for x in head + tail if x.strip()]


def event_span(paths: Sequence[Path]) -> tuple[float, float]:
    """(first, last) event time over the inputs, from the first and last records of each."""
    decode = get_decoder("auto")
    lo, hi = float("inf"), float("-inf")
    for p in paths:
        for line in _first_last_lines(p):
            try:
                recs = decode(line, None, None)
            except PartialDecode as e:
                recs = e.records
            except DecodeError:
                continue
            for r in recs:
                lo, hi = min(lo, r.ts), max(hi, r.ts)
    if lo > hi:
        raise InfrastructureError("could not read an event time from the first or last records")
    return lo, hi


class _Progress:
    def __init__(self, paths: Sequence[Path], label: str) -> None:
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            total = sum(_uncompressed_size(p) for p in paths)
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr)

    def __call__(self, batch: Batch) -> None:
        if self.bar is not None:
            self.bar.update(sum(len(u) + 1 for u in batch.units))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _uncompressed_size(p: Path) -> int:
    try:
        with open(p, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return os.path.getsize(p)
            fh.seek(-4, os.SEEK_END)  # gzip trailer: uncompressed size mod 2**32
            return int.from_bytes(fh.read(4), "little")
    except OSError:
        return 0


@dataclass
class _WindowCollector:
    """A window sink that hands closed windows to a function, in event-time order."""

    fn: Any
    windows: int = 0

    async def emit(self, windows: list[EdgeWindow]) -> None:
        self.windows += len(windows)
        self.fn(windows)

    async def close(self) -> None:
        return None


def cluster_of(path: Path) -> str:
    """The cluster a file is named after: ``prod-eu.envoy_json.jsonl.gz`` -> ``prod-eu``."""
    return path.name.split(".", 1)[0]


def _run(
    paths: Sequence[Path],
    settings: PipelineSettings,
    sink: Any,
    label: str,
    cluster_from_filename: bool = False,
    extra_sinks: Sequence[Any] = (),
) -> tuple[Pipeline, PipelineStats]:
    progress = _Progress(paths, label)
    pipeline = Pipeline(settings, sinks=[sink, *extra_sinks], on_progress=progress)
    mb = settings.max_record_bytes
    if cluster_from_filename:
        # one stream per file, each naming its cluster (as a topic per cluster would)
        sources: list[Any] = [
            FileSource(
                [p],
                fmt="auto",
                static=StaticAttrs(cluster=cluster_of(p)),
                max_record_bytes=mb,
                name=cluster_of(p),
            )
            for p in paths
        ]
    else:
        sources = [FileSource(paths, fmt="auto", max_record_bytes=mb)]
    try:
        stats = asyncio.run(pipeline.run(sources))
    finally:
        progress.close()
    return pipeline, stats


@dataclass
class TrainResult:
    version_dir: Path
    stats: PipelineStats
    scorer: Scorer
    span: tuple[float, float]
    split_ts: float


def train(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    settings: PipelineSettings | None = None,
    calibration_share: float = 0.3,
    thresholds: Thresholds | None = None,
    cluster_from_filename: bool = False,
) -> TrainResult:
    paths = expand_inputs(inputs)
    settings = settings or PipelineSettings(allowed_lateness_s=30.0)
    lo, hi = event_span(paths)
    split = lo + (hi - lo) * (1.0 - calibration_share)
    scorer = Scorer(thresholds=thresholds)
    collector = _WindowCollector(lambda ws: scorer.train(ws, split))
    _, stats = _run(paths, settings, collector, "train", cluster_from_filename)
    vdir = finish_training(
        scorer,
        stats,
        out_dir,
        settings.window_s,
        split,
        calibration_share,
        inputs=[str(p) for p in paths],
    )
    return TrainResult(vdir, stats, scorer, (lo, hi), split)


def finish_training(
    scorer: Scorer,
    stats: PipelineStats,
    out_dir: str | Path,
    window_s: float,
    split: float,
    calibration_share: float,
    inputs: list[str],
) -> Path:
    """Fit the offline parts and write the artifact, with its training span and metrics."""
    scorer.finish_training()
    metrics = {
        "records": stats.records,
        "bad_units": stats.bad_units,
        "late_records": stats.late,
        "edge_windows": scorer.stats.edge_windows,
        "window_times": scorer.stats.window_times,
        "calibration_edge_windows": {k: c.n for k, c in scorer.calibrators.items()},
        "calibration_tail_sizes": {k: len(c.tail) for k, c in scorer.calibrators.items()},
        "flagged_while_calibrating": scorer.stats.anomalies_emitted,
        "windows_not_learned": scorer.stats.learned_skipped,
    }
    training = {
        "inputs": inputs,
        "first_event_ts": scorer.first_ts,
        "last_event_ts": scorer.last_ts,
        "calibration_from_ts": split,
        "calibration_share": calibration_share,
    }
    return artifacts.save(out_dir, scorer, window_s, training, metrics)


@dataclass
class ReplayResult:
    findings: int
    actions: int
    stats: PipelineStats
    scorer: Scorer
    by_type: dict[str, int] = field(default_factory=dict)


def findings_stage(
    scorer: Scorer, tracker: Any, out_dir: str | Path, response: Any = None
) -> DetectionStage:
    """A detection stage writing ``findings.jsonl`` and ``actions.jsonl`` in ``out_dir``: both
    files start empty, and ``actions.jsonl`` exists even when no playbook fires."""
    from detector.detection import DetectionStage, responder_for
    from detector.sinks.findings_jsonl import FindingsJsonlSink

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("findings.jsonl", "actions.jsonl"):  # a replay starts fresh files
        (out / name).unlink(missing_ok=True)
    (out / "actions.jsonl").touch()
    return DetectionStage(
        scorer,
        tracker,
        [FindingsJsonlSink(out / "findings.jsonl")],
        responder_for(scorer, response),
        [FindingsJsonlSink(out / "actions.jsonl")],
    )


def replay(
    model: str | Path,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    settings: PipelineSettings | None = None,
    cluster_from_filename: bool = False,
    detection: Any = None,
    response: Any = None,
    *,
    prepare: Callable[[Scorer], None] | None = None,
    extra_sinks: Sequence[Any] = (),
) -> ReplayResult:
    """``detection``: the ``detection`` section of a config (thresholds, allow-list, incident
    settings); the defaults when None. ``prepare(scorer)`` runs before the first record (the
    notebooks swap in thresholds that record every score); ``extra_sinks`` see the same closed
    windows as the detection stage."""
    from detector.detection import scorer_and_tracker

    art = artifacts.load(model)
    paths = expand_inputs(inputs)
    settings = settings or PipelineSettings(allowed_lateness_s=30.0)
    settings.window_s = float(art.manifest.get("window_s", settings.window_s))
    scorer, tracker = scorer_and_tracker(art, detection)
    if prepare is not None:
        prepare(scorer)
    stage = findings_stage(scorer, tracker, out_dir, response)
    try:
        _, stats = _run(paths, settings, stage, "replay", cluster_from_filename, extra_sinks)
    finally:
        asyncio.run(stage.close())
    return ReplayResult(stage.findings, stage.actions, stats, scorer, dict(stage.by_type))
