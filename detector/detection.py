"""The detection stage of a running pipeline: closed windows -> scores -> OCSF findings.

Contract: ``DetectionStage`` is a window sink (``pipeline.WindowSink``). For every batch of
closed windows it runs the scorer (calibrated baselines loaded from a model artifact, online
learning on), feeds the anomalies to the incident tracker, and hands the resulting findings
(create/update/close, event-time ``time``) to every finding sink before returning, so input
offsets are committed only past findings that were delivered. ``close()`` closes the sinks;
open incidents stay open (a restart picks them up from the next checkpoint, not from here).
``from_config`` builds it from the ``detection`` section of the config.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TextIO

from detector.findings import IncidentTracker, finding_summary
from detector.flows import EdgeWindow
from detector.scoring import AllowRule, Scorer, Thresholds


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
        self.sinks = list(sinks)
        self.responder = responder
        self.action_sinks = list(action_sinks)
        self.findings = 0
        self.actions = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.by_type: dict[str, int] = {}  # anomalies raised, by finding type

    async def emit(self, windows: list[EdgeWindow]) -> None:
        by_time: dict[float, list[EdgeWindow]] = {}
        for w in windows:
            by_time.setdefault(w.window_start, []).append(w)
        out: list[dict[str, Any]] = []
        actions: list[dict[str, Any]] = []
        for t in sorted(by_time):
            batch = by_time[t]
            now = batch[0].window_end
            anomalies = self.scorer.process(batch)
            for a in anomalies:
                self.by_type[a.finding_type] = self.by_type.get(a.finding_type, 0) + 1
            found = self.tracker.observe(anomalies, now) + self.tracker.tick(now)
            if self.responder is not None:
                acts = self.responder.on_findings(found, now) + self.responder.tick(now)
                _attach(found, acts)
                actions += acts
            out += found
        if out:
            for sink in self.sinks:
                await sink.emit(out)
            self.findings += len(out)
        if actions:
            for sink in self.action_sinks:
                await sink.emit(actions)
            self.actions += len(actions)

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

    @property
    def failed(self) -> bool:
        """For readiness: a delivery sink whose workers died."""
        return any(getattr(s, "healthy", True) is False for s in self.sinks)

    async def close(self) -> None:
        for sink in self.sinks + self.action_sinks:
            await sink.close()


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

    scorer, tracker = scorer_and_tracker(artifacts.load(cfg.detection.model), cfg.detection)
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
    return DetectionStage(scorer, tracker, sinks, responder_for(scorer, cfg.response), action_sinks)
