"""Scoring: run every baseline over each closed window time, calibrate, fuse, threshold, learn.

Contract:
* ``Scorer.process(windows)`` takes closed edge windows (any number of window times, in any
  order), handles them window time by window time in event-time order, and returns the
  ``Anomaly`` objects that cross the thresholds: at most one per subject per window time, with
  the fused, calibrated p-value.
* Calibration: each model's raw p-values are mapped to the share of held-out training
  edge-windows on which the model said something at least as extreme (never below the raw
  value; beyond the training range the tail ratio is carried on). Fusion: per subject, the
  harmonic mean p-value of the models that spoke (valid under dependence between models).
* Thresholds (``Thresholds``) live in one place: a minimum risk per category and per finding
  type. Allow-list rules drop anomalies about known-good edges.
* Poisoning resistance: windows of an edge or caller that raised a finding in this window time
  are not learned; a window time that shifted the whole mesh is not learned at all.
* Training (``fit``): learn-only until ``split_ts``; from there on every window time is first
  scored raw (feeding the calibrators and deciding what not to learn), then learned.
* A model raising an exception is counted (``model_errors``) and skipped: scoring goes on.
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from detector.anomalies import CONTEXT, OPERATIONAL, Anomaly, risk_from_p
from detector.baselines import Baseline
from detector.baselines.bursts import BurstModel
from detector.baselines.features import WindowBatch, caller_key
from detector.baselines.multivariate import MultivariateModel
from detector.baselines.novelty import NoveltyModel
from detector.baselines.seasonal import SeasonalModel
from detector.flows import EdgeWindow

log = logging.getLogger(__name__)

MODEL_CLASSES: dict[str, type[Any]] = {
    "novelty": NoveltyModel,
    "seasonal": SeasonalModel,
    "bursts": BurstModel,
    "multivariate": MultivariateModel,
}


class Calibrator:
    """Raw p-values of one model -> calibrated p-values, from held-out training scores."""

    KEEP_BELOW = 0.05  # only the tail matters; the bulk is never near a threshold

    def __init__(self) -> None:
        self.tail: list[float] = []  # sorted raw p-values <= KEEP_BELOW seen while calibrating
        self.n = 0  # edge-windows scored while calibrating

    def observe(self, raw_ps: Iterable[float], n_tests: int) -> None:
        for p in raw_ps:
            if p <= self.KEEP_BELOW:
                bisect.insort(self.tail, p)
        self.n += n_tests

    def calibrate(self, p: float) -> float:
        if self.n == 0:
            return p
        k = bisect.bisect_right(self.tail, p)
        if k >= 5:
            return max(p, (k + 1) / (self.n + 1))
        # Beyond the observed tail: carry on the tail's ratio of empirical to raw rates.
        ratio = 1.0
        if len(self.tail) >= 5:
            ref = self.tail[4]
            ratio = max(1.0, (5 + 1) / (self.n + 1) / ref) if ref > 0 else 1.0
        return min(1.0, p * ratio)

    def get_state(self) -> dict[str, Any]:
        return {"tail": self.tail, "n": self.n}

    def set_state(self, state: dict[str, Any]) -> None:
        self.tail = sorted(float(x) for x in state["tail"])
        self.n = int(state["n"])


@dataclass(frozen=True)
class AllowRule:
    """Known-good traffic, as globs. Without ``finding_types`` the matching edge windows are
    not scored at all (still learned); with them, only anomalies of those types whose subject
    matches are dropped."""

    principal: str = "*"
    src_cluster: str = "*"
    dst_service: str = "*"
    dst_cluster: str = "*"
    finding_types: tuple[str, ...] = ()

    def matches_window(self, w: EdgeWindow) -> bool:
        return not self.finding_types and all(
            fnmatch.fnmatchcase(value, pattern)
            for value, pattern in (
                (w.src_principal, self.principal),
                (w.src_cluster, self.src_cluster),
                (w.dst_service, self.dst_service),
                (w.dst_cluster, self.dst_cluster),
            )
        )

    def matches(self, a: Anomaly) -> bool:
        s = a.subject
        if self.finding_types and a.finding_type not in self.finding_types:
            return False
        return all(
            fnmatch.fnmatchcase(value or "", pattern)
            for value, pattern in (
                (s.principal, self.principal),
                (s.src_cluster, self.src_cluster),
                (s.dst_service, self.dst_service),
                (s.dst_cluster, self.dst_cluster),
            )
        )


# Novelty evidence is bounded by the training size: with no new-cluster event in n caller
# windows the best estimate of its rate is ~1/n (1e-4 to 1e-5 for days of a small mesh), so the
# identity-level novelty types get their own, lower thresholds by default.
DEFAULT_TYPE_THRESHOLDS: dict[str, float] = {
    "credential_replay": 40.0,
    "lateral_movement": 40.0,
    "k8s_api_abuse": 40.0,
}


@dataclass
class Thresholds:
    """Minimum risk (10 per decade of improbability: 60 = p < 1e-6) for a finding."""

    min_risk: float = 60.0  # security findings
    operational_min_risk: float = 60.0
    context_min_risk: float = 50.0
    per_type: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_THRESHOLDS))

    def passes(self, a: Anomaly) -> bool:
        limit = self.per_type.get(a.finding_type)
        if limit is None:
            cat = a.category
            limit = (
                self.context_min_risk
                if cat == CONTEXT
                else self.operational_min_risk
                if cat == OPERATIONAL
                else self.min_risk
            )
        return a.risk >= limit


def default_models() -> list[Baseline]:
    return [NoveltyModel(), SeasonalModel(), BurstModel(), MultivariateModel()]


@dataclass
class ScorerStats:
    window_times: int = 0
    edge_windows: int = 0
    anomalies_raw: int = 0
    anomalies_emitted: int = 0
    learned_skipped: int = 0
    model_errors: int = 0


class Scorer:
    def __init__(
        self,
        models: Sequence[Baseline] | None = None,
        thresholds: Thresholds | None = None,
        allow: Sequence[AllowRule] = (),
        calibrators: dict[str, Calibrator] | None = None,
        learn_online: bool = True,
    ) -> None:
        self.models = list(models) if models is not None else default_models()
        self.thresholds = thresholds or Thresholds()
        self.allow = list(allow)
        self._window_rules = [r for r in self.allow if not r.finding_types]
        self._type_rules = [r for r in self.allow if r.finding_types]
        self.calibrators = calibrators or {m.name: Calibrator() for m in self.models}
        self.learn_online = learn_online
        self.stats = ScorerStats()
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self._fitted = False

    # -- the loop ----------------------------------------------------------------------------

    def process(self, windows: Sequence[EdgeWindow]) -> list[Anomaly]:
        out: list[Anomaly] = []
        for batch in _batches(windows):
            out.extend(self.process_batch(batch))
        return out

    def process_batch(self, batch: WindowBatch) -> list[Anomaly]:
        self._note_time(batch)
        scored: WindowBatch | None = batch
        if self._window_rules:
            keep = [
                w for w in batch.windows if not any(r.matches_window(w) for r in self._window_rules)
            ]
            scored = WindowBatch(keep, batch.window_start, batch.window_s) if keep else None
        raw = self._score_raw(scored) if scored is not None else []
        calibrated = [
            replace(a, p_value=self.calibrators[a.model].calibrate(a.p_value))
            if a.model in self.calibrators
            else a
            for a in raw
        ]
        emitted = [a for a in self._fuse(calibrated) if self.thresholds.passes(a)]
        emitted = [a for a in emitted if not any(r.matches(a) for r in self._type_rules)]
        self.stats.anomalies_emitted += len(emitted)
        if self.learn_online:
            self._learn_unflagged(batch, emitted)
        return emitted

    def train(self, windows: Sequence[EdgeWindow], split_ts: float) -> None:
        """Training step: learn before ``split_ts``; after it, score raw (to calibrate) first.

        Call with windows in event-time order, then ``finish_training()`` once.
        """
        for batch in _batches(windows):
            self._note_time(batch)
            if batch.window_start < split_ts:
                self._learn(batch, set(), set())
                continue
            if not self._fitted:
                self._fit_offline()
                self._fitted = True
            raw = self._score_raw(batch)
            for m in self.models:
                ps = [a.p_value for a in raw if a.model == m.name]
                self.calibrators[m.name].observe(ps, len(batch.windows))
            flagged = [a for a in self._fuse(raw) if self.thresholds.passes(a)]
            self.stats.anomalies_emitted += len(flagged)
            self._learn_unflagged(batch, flagged)

    def finish_training(self) -> None:
        self._fit_offline()
        self._fitted = True

    # -- steps -------------------------------------------------------------------------------

    def _note_time(self, batch: WindowBatch) -> None:
        self.stats.window_times += 1
        self.stats.edge_windows += len(batch.windows)
        if self.first_ts is None or batch.window_start < self.first_ts:
            self.first_ts = batch.window_start
        if self.last_ts is None or batch.window_end > self.last_ts:
            self.last_ts = batch.window_end

    def _score_raw(self, batch: WindowBatch) -> list[Anomaly]:
        raw: list[Anomaly] = []
        seasonal = next((m for m in self.models if isinstance(m, SeasonalModel)), None)
        if seasonal is not None:
            batch.traffic_scale = seasonal.traffic_scale(batch)
        for m in self.models:
            try:
                raw.extend(m.score(batch))
            except Exception:  # a model bug must not stop detection by the others
                self.stats.model_errors += 1
                log.exception("baseline %s failed on window %s", m.name, batch.window_start)
        self.stats.anomalies_raw += len(raw)
        return raw

    def _fuse(self, anomalies: list[Anomaly]) -> list[Anomaly]:
        groups: dict[tuple[Any, ...], list[Anomaly]] = {}
        for a in anomalies:
            groups.setdefault(a.subject.key(), []).append(a)
        out = []
        for group in groups.values():
            best = min(group, key=lambda a: a.p_value)
            per_model: dict[str, float] = {}
            for a in group:
                per_model[a.model] = min(per_model.get(a.model, 1.0), a.p_value)
            if len(per_model) > 1:
                # harmonic mean p-value: robust to dependence between the models
                hmp = len(per_model) / sum(1.0 / max(p, 1e-300) for p in per_model.values())
                fused = min(best.p_value, hmp) if hmp < best.p_value else best.p_value
                others = tuple(
                    (f"{a.model}:{a.finding_type}:{a.feature}", round(risk_from_p(a.p_value), 1))
                    for a in sorted(group, key=lambda a: a.p_value)
                    if a is not best
                )[:5]
                best = replace(
                    best,
                    p_value=fused,
                    contributions=best.contributions + others,
                    confidence=min(1.0, best.confidence + 0.1 * (len(per_model) - 1)),
                )
            out.append(best)
        return out

    def _learn_unflagged(self, batch: WindowBatch, flagged: list[Anomaly]) -> None:
        if any(a.finding_type == "global_shift" for a in flagged):
            self.stats.learned_skipped += len(batch.windows)
            return
        edges: set[str] = set()
        callers: set[str] = set()
        for a in flagged:
            s = a.subject
            if s.principal is None:
                continue
            if s.dst_service is None:
                callers.add(f"{s.principal}|{s.src_cluster}")
            else:
                edges.add(
                    f"{s.principal}|{s.src_cluster}|{s.dst_namespace or ''}|"
                    f"{s.dst_service}|{s.dst_cluster}"
                )
        self._learn(batch, edges, callers)

    def _learn(self, batch: WindowBatch, edges: set[str], callers: set[str]) -> None:
        if edges or callers:
            keep = [
                i
                for i, (w, key) in enumerate(zip(batch.windows, batch.keys, strict=True))
                if key not in edges and caller_key(w) not in callers
            ]
            self.stats.learned_skipped += len(batch.windows) - len(keep)
            if not keep:
                return
            if len(keep) < len(batch.windows):
                batch = batch.subset(keep)
        for m in self.models:
            try:
                m.learn(batch)
            except Exception:
                self.stats.model_errors += 1
                log.exception("baseline %s failed to learn window %s", m.name, batch.window_start)

    def _fit_offline(self) -> None:
        for m in self.models:
            fit = getattr(m, "fit", None)
            if fit is not None:
                fit()

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "models": {
                m.name: {"params": m.get_params(), "state": m.get_state()} for m in self.models
            },
            "calibrators": {k: c.get_state() for k, c in self.calibrators.items()},
            "span": [self.first_ts, self.last_ts],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], **kwargs: Any) -> Scorer:
        models: list[Baseline] = []
        for name, entry in state["models"].items():
            model = MODEL_CLASSES[name](**entry["params"])
            model.set_state(entry["state"])
            models.append(model)
        calibrators = {}
        for name, cs in state["calibrators"].items():
            c = Calibrator()
            c.set_state(cs)
            calibrators[name] = c
        scorer = cls(models, calibrators=calibrators, **kwargs)
        scorer.first_ts, scorer.last_ts = state.get("span", [None, None])
        scorer._fitted = True
        return scorer


def _batches(windows: Sequence[EdgeWindow]) -> list[WindowBatch]:
    by_time: dict[float, list[EdgeWindow]] = {}
    for w in windows:
        by_time.setdefault(w.window_start, []).append(w)
    return [WindowBatch.of(by_time[t]) for t in sorted(by_time)]


__all__ = ["AllowRule", "Calibrator", "Scorer", "Thresholds", "default_models"]
