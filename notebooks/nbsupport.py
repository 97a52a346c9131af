"""Plumbing shared by the notebooks: run the detector's library calls from a Jupyter kernel and
record what the plots need. Nothing here changes how the detector decides.

* ``blocking(fn, ...)``: ``detector.replay.train`` and friends drive an asyncio pipeline with
  ``asyncio.run``, which cannot be called from the kernel's own running event loop; this runs
  them in a worker thread (with its own loop) and waits.
* ``replay_recording(...)``: ``detector.replay.replay`` itself (the same pipeline, scorer,
  incident tracker, playbooks and ``findings.jsonl``/``actions.jsonl`` files), with the
  scorer's ``Thresholds`` swapped for ones that also record every fused, calibrated score they
  are asked about, above the threshold or not, and a sink keeping the windows of a few edges.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from detector.anomalies import Anomaly
from detector.flows import EdgeWindow
from detector.pipeline import PipelineStats
from detector.replay import replay
from detector.scoring import Scorer, Thresholds

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
    recorder = EdgeRecorder(set(edges))
    recordings: list[RecordingThresholds] = []

    def record_scores(scorer: Scorer) -> None:
        recording = RecordingThresholds(
            **{f.name: getattr(scorer.thresholds, f.name) for f in fields(Thresholds)}
        )
        scorer.thresholds = recording
        recordings.append(recording)

    r = blocking(
        replay,
        model,
        inputs,
        out_dir,
        cluster_from_filename=True,
        prepare=record_scores,
        extra_sinks=[recorder],
    )
    return Recording(r.stats, recordings[0].scores, recorder, r.findings, dict(r.by_type))
