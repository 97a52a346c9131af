"""The detection stage of a running pipeline: closed windows -> scores -> OCSF findings.

Contract: ``DetectionStage`` is a window sink (``pipeline.WindowSink``). For every batch of
closed windows it runs the scorer (calibrated baselines loaded from a model artifact, online
learning on), feeds the anomalies to the incident tracker, and hands the resulting findings
(create/update/close, event-time ``time``) to every finding sink before returning, so input
offsets are committed only past findings that were delivered. ``close()`` closes the sinks;
open incidents stay open (a restart picks them up from the next checkpoint, not from here).
``from_config`` builds it from the ``detection`` section of the config.

Scale-out (``detector.exchange``): every replica scores every window time, and ``owns`` says
which anomalies this replica reports (those of the internal partitions it owns); the anomalies
of the last ``HISTORY`` window times are kept so that a replica taking a partition over reports
what its previous owner had not (``report_history``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TextIO

from detector.anomalies import Anomaly, Subject
from detector.findings import IncidentTracker, finding_summary
from detector.flows import EdgeWindow
from detector.instrumentation import Metrics, count_labels, finding_labels
from detector.scoring import AllowRule, Scorer, Thresholds
from detector.tracing import tracer

HISTORY = 240  # window times of anomalies kept for takeovers (scale-out): 4 h of 60 s windows


class FindingSink(Protocol):
    async def emit(self, findings: Sequence[Mapping[str, Any]]) -> None: ...

    async def close(self) -> None: ...


class ConsoleFindings:
    """One line per finding event on a text stream (stdout by default)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    async def emit(self, findings: Sequence[Mapping[str, Any]]) -> None:
        try:
            for f in findings:
                self.out.write("FINDING " + finding_summary(f) + "\n")
            self.out.flush()
        except BrokenPipeError:
            pass

    async def close(self) -> None:
        return None


class RemediationActivities:
    """Action records -> OCSF Remediation Activity events on a webhook sink."""

    def __init__(self, webhooks: Any) -> None:
        self.webhooks = webhooks

    async def emit(self, findings: Sequence[Mapping[str, Any]]) -> None:
        from detector.remediation import to_ocsf

        await self.webhooks.emit_actions([to_ocsf(a) for a in findings])

    async def close(self) -> None:
        return None  # the webhook sink is closed as a finding sink


class DetectionStage:
    """Windows -> scorer -> incidents -> (responder) -> findings and action records.

    With a responder, every finding batch goes through the playbooks and rails before it is
    emitted: findings that got remediation actions carry OCSF ``remediation`` naming them, and
    the action records (and TTL restores) go to ``action_sinks`` after the findings.
    """

    def __init__(
        self,
        scorer: Scorer,
        tracker: IncidentTracker,
        sinks: Sequence[FindingSink],
        responder: Any = None,
        action_sinks: Sequence[FindingSink] = (),
    ):
        self.scorer = scorer
        self.tracker = tracker
        # Scale-out: the anomalies this replica reports (None: all); see the module docstring.
        self.owns: Callable[[Anomaly], bool] | None = None
        self.history: deque[tuple[float, list[Anomaly]]] = deque(maxlen=HISTORY)
        self.extra_state: Callable[[], dict[str, Any]] | None = None  # checkpointed beside
        self.restored: dict[str, Any] | None = None  # the checkpoint this stage resumed from
        self.sinks = list(sinks)
        self.responder = responder
        self.action_sinks = list(action_sinks)
        self.findings = 0
        self.actions = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.checkpointer: Any = None  # detector.checkpoint.Checkpointer
        self.snapshot_dir: str | None = None
        self.snapshot_interval_s = 86_400.0
        self.window_s = 60.0  # of the model's windows (snapshots record it)
        self._last_snapshot_ts: float | None = None
        self._last_ts: float | None = None
        self.by_type: dict[str, int] = {}  # anomalies raised, by finding type
        # For metrics (exported by ``export_metrics``): cumulative counts by bounded labels, and
        # the loaded model's last training event time (``from_config`` sets it).
        self.finding_counts: dict[tuple[str, str, str, str], int] = {}
        self.action_counts: dict[tuple[str, str], int] = {}
        self.model_trained_ts: float | None = None

    async def emit(self, windows: list[EdgeWindow]) -> None:
        by_time: dict[float, list[EdgeWindow]] = {}
        for w in windows:
            by_time.setdefault(w.window_start, []).append(w)
        out: list[dict[str, Any]] = []
        actions: list[dict[str, Any]] = []
        tr = tracer()
        for t in sorted(by_time):
            batch = by_time[t]
            now = batch[0].window_end
            with tr.start_as_current_span("detector.score_window") as span:
                found, acts = self._score(batch, now)
                span.set_attribute("detector.window_start", t)
                span.set_attribute("detector.edge_windows", len(batch))
                span.set_attribute("detector.findings", len(found))
                span.set_attribute("detector.actions", len(acts))
            out += found
            actions += acts
        await self._deliver(out, actions)
        if by_time:
            self._after(max(by_time) + windows[0].window_end - windows[0].window_start)

    def _score(
        self, batch: list[EdgeWindow], now: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """One window time: anomalies -> incidents' findings -> (actions)."""
        anomalies = self.scorer.process(batch)
        if self.owns is not None:
            self.history.append((now, anomalies))
            anomalies = [a for a in anomalies if self.owns(a)]
        return self._report(anomalies, now)

    def _report(
        self, anomalies: list[Anomaly], now: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        for a in anomalies:
            self.by_type[a.finding_type] = self.by_type.get(a.finding_type, 0) + 1
        found = self.tracker.observe(anomalies, now) + self.tracker.tick(now)
        acts: list[dict[str, Any]] = []
        if self.responder is not None:
            acts = self.responder.on_findings(found, now) + self.responder.tick(now)
            _attach(found, acts)
        return found, acts

    async def report_history(self, belongs: Callable[[Anomaly], bool]) -> int:
        """Report the anomalies of the kept window times for which ``belongs`` holds (a
        partition just taken over, from its previous owner's horizon on); returns how many."""
        out: list[dict[str, Any]] = []
        actions: list[dict[str, Any]] = []
        n = 0
        for now, anomalies in list(self.history):
            mine = [a for a in anomalies if belongs(a)]
            if mine:
                found, acts = self._report(mine, now)
                out += found
                actions += acts
                n += len(mine)
        await self._deliver(out, actions)
        return n

    async def _deliver(self, out: list[dict[str, Any]], actions: list[dict[str, Any]]) -> None:
        if out:
            for sink in self.sinks:
                await sink.emit(out)
            self.findings += len(out)
            count_labels((finding_labels(f) for f in out), self.finding_counts)
        if actions:
            for sink in self.action_sinks:
                await sink.emit(actions)
            self.actions += len(actions)
            count_labels(_action_labels(actions), self.action_counts)

    def _after(self, event_ts: float) -> None:
        """Checkpoint and snapshot on their event-time schedules."""
        self._last_ts = event_ts
        if self.checkpointer is not None and self.checkpointer.due(event_ts):
            self.checkpointer.save(self, event_ts)
        if self.snapshot_dir is not None:
            if self._last_snapshot_ts is None:
                self._last_snapshot_ts = event_ts
            elif event_ts - self._last_snapshot_ts >= self.snapshot_interval_s:
                from detector.checkpoint import snapshot

                snapshot(self.snapshot_dir, self.scorer, self.window_s, event_ts)
                self._last_snapshot_ts = event_ts

    def decide(self, action_id: str, decision: str, now_ts: float) -> dict[str, Any] | None:
        """An approver's verified decision (the approval endpoint calls this): the updated
        records (the action and the actions paired with it) go to the action sinks at once."""
        if self.responder is None:
            return None
        rec: dict[str, Any] | None = self.responder.decide(action_id, decision, now_ts)
        if rec is not None and self.action_sinks:
            changed = [rec] + [
                self.responder.actions[p]
                for p in rec.get("pair", [])
                if p in self.responder.actions
            ]
            task = asyncio.get_running_loop().create_task(self._emit_actions(changed))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return rec

    async def _emit_actions(self, actions: list[dict[str, Any]]) -> None:
        for sink in self.action_sinks:
            await sink.emit(actions)
        self.actions += len(actions)
        count_labels(_action_labels(actions), self.action_counts)

    async def export_metrics(self, m: Metrics, wall: float, slow: bool) -> None:
        """Counts and gauges into ``m`` (the pipeline calls this after closed-window batches;
        ``slow`` when its periodic refresh is due: outbox counts query the database)."""
        m.observe_findings(self.finding_counts)
        m.observe_actions(self.action_counts)
        if self.model_trained_ts is not None:
            m.model_age.set(max(0.0, wall - self.model_trained_ts))
        for sink in self.sinks:
            stats = getattr(sink, "stats", None)
            if callable(stats):
                m.observe_deliveries(stats())
            outbox = getattr(sink, "outbox", None)
            if slow and outbox is not None and not getattr(outbox, "closed", True):
                with contextlib.suppress(Exception):  # metrics never fail the pipeline
                    m.set_outbox(await outbox.counts())

    @property
    def failed(self) -> bool:
        """For readiness: a delivery sink whose workers died."""
        return any(getattr(s, "healthy", True) is False for s in self.sinks)

    # -- state handover between replicas (``detector.repartition``) ----------------------------

    def export_incidents(self, belongs: Callable[[Subject], bool]) -> list[dict[str, Any]]:
        return self.tracker.export_incidents(belongs)

    def release_incidents(self, belongs: Callable[[Subject], bool]) -> int:
        return self.tracker.release_incidents(belongs)

    def adopt_incidents(self, incidents: Iterable[Mapping[str, Any]]) -> int:
        return self.tracker.adopt_incidents(incidents)

    async def close(self) -> None:
        if self.checkpointer is not None and self._last_ts is not None:
            self.checkpointer.save(self, self._last_ts)  # shutdown: nothing learned is lost
        for sink in self.sinks + self.action_sinks:
            await sink.close()


def _action_labels(actions: Sequence[Mapping[str, Any]]) -> Iterable[tuple[str, str]]:
    return ((str(a.get("kind", "unknown")), str(a.get("state", "unknown"))) for a in actions)


def _trained_ts(art: Any) -> float | None:
    """The artifact's last training event time (manifest ``training.last_event_ts``)."""
    ts = (art.manifest.get("training") or {}).get("last_event_ts")
    return float(ts) if isinstance(ts, int | float) else None


def _attach(findings: list[dict[str, Any]], actions: list[dict[str, Any]]) -> None:
    """Name, in each finding, the remediation actions taken (or proposed) for its incident."""
    from detector.findings import attach_remediation
    from detector.remediation.actions import describe

    by_incident: dict[str, list[dict[str, Any]]] = {}
    for a in actions:
        if (
            a.get("kind") in ("tighten_policy", "revoke_credential")
            and a.get("state") != "suppressed"
        ):
            by_incident.setdefault(str(a.get("incident_uid")), []).append(a)
    for f in findings:
        acts = by_incident.get(str(f.get("finding_info", {}).get("uid")))
        if acts:
            desc = "; ".join(f"{a.get('state')}: {describe(a)}" for a in acts)
            attach_remediation(f, desc, [str(a["action_id"]) for a in acts])


def thresholds_from_config(cfg: Any) -> Thresholds:
    t = Thresholds()
    if cfg is None:
        return t
    t.min_risk = cfg.min_risk
    t.operational_min_risk = cfg.operational_min_risk
    t.context_min_risk = cfg.context_min_risk
    t.per_type.update(cfg.per_type)
    return t


def allow_from_config(rules: Sequence[Any]) -> list[AllowRule]:
    return [
        AllowRule(
            principal=r.principal,
            src_cluster=r.src_cluster,
            dst_service=r.dst_service,
            dst_cluster=r.dst_cluster,
            finding_types=tuple(r.finding_types),
        )
        for r in rules
    ]


def responder_for(scorer: Scorer, response: Any) -> Any:
    """The response stage over the scorer's learned novelty baseline (blast radii)."""
    from detector.remediation import Responder, ResponseConfig

    novelty: Any = next((m for m in scorer.models if m.name == "novelty"), None)
    return Responder(response or ResponseConfig(), baseline=novelty)


def scorer_and_tracker(art: Any, detection: Any = None) -> tuple[Scorer, IncidentTracker]:
    """A scorer from a loaded artifact and an incident tracker, both configured by the
    ``detection`` section of a config (the defaults when None)."""
    if detection is None:
        return art.scorer(), IncidentTracker()
    scorer = art.scorer(
        thresholds=thresholds_from_config(detection.thresholds),
        allow=allow_from_config(detection.allow),
        learn_online=detection.learn_online,
    )
    inc = detection.incidents
    tracker = IncidentTracker(
        close_after_quiet_s=inc.close_after_quiet_s,
        update_min_interval_s=inc.update_min_interval_s,
        max_open=inc.max_open,
    )
    return scorer, tracker


def from_config(cfg: Any, console: bool) -> DetectionStage:
    """The stage for a ``DetectorConfig`` whose ``detection.model`` is set."""
    from detector import artifacts

    d = cfg.detection
    art = artifacts.load(d.model)
    scorer, tracker = scorer_and_tracker(art, d)
    ckpt = None
    state = None
    if d.checkpoint_path:
        from detector.checkpoint import Checkpointer

        ckpt = Checkpointer(d.checkpoint_path, d.checkpoint_interval_s, art.version)
        state = ckpt.load()
        if state is not None:  # resume: what was learned online since the model was written
            restored = Scorer.from_state(state["scorer"])
            scorer.models, scorer.calibrators = restored.models, restored.calibrators
            scorer.first_ts, scorer.last_ts = restored.first_ts, restored.last_ts
            tracker.set_state(state["tracker"])
    sinks: list[FindingSink] = []
    if console:
        sinks.append(ConsoleFindings())
    if cfg.sinks.findings_jsonl.path:
        from detector.sinks.findings_jsonl import FindingsJsonlSink

        sinks.append(FindingsJsonlSink(cfg.sinks.findings_jsonl.path))
    action_sinks: list[FindingSink] = []
    if cfg.sinks.actions_jsonl.path:
        from detector.sinks.findings_jsonl import FindingsJsonlSink

        action_sinks.append(FindingsJsonlSink(cfg.sinks.actions_jsonl.path))
    if cfg.delivery.webhooks:
        from detector.delivery import WebhookSink

        webhooks = WebhookSink.from_settings(cfg.delivery)
        sinks.append(webhooks)
        action_sinks.append(RemediationActivities(webhooks))
    if cfg.delivery.alertmanager is not None:
        from detector.delivery import AlertmanagerSink

        sinks.append(AlertmanagerSink(cfg.delivery.alertmanager))
    responder = responder_for(scorer, cfg.response)
    if state is not None and state.get("responder") is not None:
        responder.set_state(state["responder"])
    stage = DetectionStage(scorer, tracker, sinks, responder, action_sinks)
    stage.checkpointer = ckpt
    stage.restored = state
    stage.snapshot_dir = d.snapshot_dir
    stage.snapshot_interval_s = d.snapshot_interval_s
    stage.window_s = float(art.manifest.get("window_s", 60.0))
    stage.model_trained_ts = _trained_ts(art)
    return stage
