"""Plumbing shared by the notebooks: run the detector's library calls from a Jupyter kernel and
record what the plots need. Nothing here changes how the detector decides.

* ``blocking(fn, ...)``: ``detector.replay.train`` and friends drive an asyncio pipeline with
  ``asyncio.run``, which cannot be called from the kernel's own running event loop; this runs
  them in a worker thread (with its own loop) and waits.
* ``replay_recording(...)``: what ``detector.replay.replay`` does (the same pipeline, scorer,
  incident tracker, playbooks and ``findings.jsonl``/``actions.jsonl`` files), except that the
  scorer's ``Thresholds`` also record every fused, calibrated score they are asked about, above
  the threshold or not, and the windows of a few chosen edges are kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from detector import artifacts
from detector.anomalies import Anomaly
from detector.detection import DetectionStage, responder_for, scorer_and_tracker
from detector.flows import EdgeWindow
from detector.pipeline import Pipeline, PipelineSettings, PipelineStats
from detector.replay import cluster_of, expand_inputs
from detector.scoring import Thresholds
from detector.sinks.findings_jsonl import FindingsJsonlSink
from detector.sources import StaticAttrs
from detector.sources.file import FileSource

T = TypeVar("T")


def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread (see the module docstring)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


@dataclass(frozen=True)
class Score:
    """One fused, calibrated score of one subject in one window time."""

    t: float  # window start (epoch s)
    finding_type: str
    category: str  # security | operational | context
    risk: float
    limit: float  # the threshold of its type
    src: str  # principal@cluster ("unknown caller" when the subject has none)
    dst: str  # service.namespace@cluster, or "many services"
    targets: tuple[str, ...]  # destinations a caller-level anomaly names
    observed: float
    expected: float | None
    feature: str


@dataclass
class RecordingThresholds(Thresholds):
    """The scorer's thresholds, unchanged, keeping every score they are asked about."""

    scores: list[Score] = field(default_factory=list)

    def limit(self, a: Anomaly) -> float:
        lim = self.per_type.get(a.finding_type)
        if lim is not None:
            return lim
        return {"context": self.context_min_risk, "operational": self.operational_min_risk}.get(
            a.category, self.min_risk
        )

    def passes(self, a: Anomaly) -> bool:
        ev = a.evidence
        targets = tuple(
            str(x) for x in list(ev.get("new_destinations", [])) + list(ev.get("targets", []))
        )
        self.scores.append(
            Score(
                a.window_start,
                a.finding_type,
                a.category,
                a.risk,
                self.limit(a),
                a.subject.src,
                a.subject.dst,
                targets,
                a.observed,
                a.expected,
                a.feature,
            )
        )
        return super().passes(a)


@dataclass
class EdgeRecorder:
    """A window sink keeping the windows of the chosen edges and the mesh-wide request total."""

    edges: set[str]
    windows: dict[str, list[EdgeWindow]] = field(default_factory=dict)
    mesh_total: dict[float, int] = field(default_factory=dict)

    async def emit(self, windows: list[EdgeWindow]) -> None:
        for w in windows:
            self.mesh_total[w.window_start] = self.mesh_total.get(w.window_start, 0) + w.total
            if w.edge in self.edges:
                self.windows.setdefault(w.edge, []).append(w)

    async def close(self) -> None:
        return None


@dataclass
class Recording:
    stats: PipelineStats
    scores: list[Score]
    edges: EdgeRecorder
    findings: int
    by_type: dict[str, int]


def replay_recording(
    model: str | Path, inputs: Iterable[str | Path], out_dir: str | Path, edges: Iterable[str] = ()
) -> Recording:
    """``detector.replay.replay(model, inputs, out_dir, cluster_from_filename=True)``, recording
    the scores and the windows of ``edges`` (as ``EdgeWindow.edge`` spells them)."""
    art = artifacts.load(model)
    paths = expand_inputs(inputs)
    settings = PipelineSettings(allowed_lateness_s=30.0)
    settings.window_s = float(art.manifest.get("window_s", settings.window_s))
    scorer, tracker = scorer_and_tracker(art)
    recording = RecordingThresholds(
        **{f.name: getattr(scorer.thresholds, f.name) for f in fields(Thresholds)}
    )
    scorer.thresholds = recording
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("findings.jsonl", "actions.jsonl"):
        (out / name).unlink(missing_ok=True)
    stage = DetectionStage(
        scorer,
        tracker,
        [FindingsJsonlSink(out / "findings.jsonl")],
        responder_for(scorer, None),
        [FindingsJsonlSink(out / "actions.jsonl")],
    )
    recorder = EdgeRecorder(set(edges))
    sources = [
        FileSource(
            [p],
            fmt="auto",
            static=StaticAttrs(cluster=cluster_of(p)),
            max_record_bytes=settings.max_record_bytes,
            name=cluster_of(p),
        )
        for p in paths
    ]

    async def run() -> PipelineStats:
        try:
            return await Pipeline(settings, sinks=[stage, recorder]).run(sources)
        finally:
            await stage.close()

    stats = blocking(asyncio.run, run())
    (out / "actions.jsonl").touch()
    return Recording(stats, recording.scores, recorder, stage.findings, dict(stage.by_type))
