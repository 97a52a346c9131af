"""Alertmanager v2 push: open incidents as alerts (``POST <url>/api/v2/alerts``).

Contract:
* ``AlertmanagerSink`` is a ``detection.FindingSink``. ``emit`` folds findings into the set of
  active alerts and returns at once: Alertmanager holds *state* (which alerts fire now), not a
  log of events, and the client is expected to re-send active alerts periodically anyway - so
  this sink runs its own simple loop instead of the durable outbox. Every
  ``resend_interval_s`` (and right after a change) it posts all active alerts, with
  ``endsAt = now + 4 * resend_interval_s`` so that, should the detector die, Alertmanager
  resolves them by itself shortly after the re-sends stop. A failed post is retried on the next
  round; nothing else needs remembering. After a restart, an incident re-appears with its next
  Update (or expires as above).
* Labels are bounded, never identities: ``alertname`` (finding type), ``severity``,
  ``category``, ``src_cluster``, ``dst_cluster`` plus configured ``static_labels``. Principal,
  IP, service, incident uid and the description go to annotations. Since Alertmanager
  identifies an alert by its labels, concurrent incidents with the same labels are one alert:
  its annotations count them and list (a bounded number of) their uids; it ends when the last
  of them closes.
* A Close (``activity_id`` 3) removes the incident; when its alert has no incident left it is
  sent once more with ``endsAt`` = now (resolved), retried until a post succeeds (for at most
  one hour). An incident whose labels change (severity rose) moves to the new alert and the
  old one resolves if it became empty.
* ``startsAt`` is the earliest ``first_seen_time`` (event time) of the alert's incidents.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from detector.delivery.retry import Clock, RealClock
from detector.delivery.settings import AlertmanagerSettings

log = logging.getLogger(__name__)

LABEL_KEYS: Final = ("alertname", "severity", "category", "src_cluster", "dst_cluster")
MAX_LABEL_VALUE: Final = 128
MAX_LISTED_UIDS: Final = 20
RESOLVED_KEEP_S: Final = 3600.0
LabelKey = tuple[tuple[str, str], ...]


def _rfc3339(t: float) -> str:
    d = dt.datetime.fromtimestamp(t, tz=dt.UTC)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_labels(finding: Mapping[str, Any], static: Mapping[str, str]) -> dict[str, str]:
    """The bounded label set of a finding's alert (see the module contract)."""
    un = finding.get("unmapped") or {}
    edge = un.get("edge") or {}
    meta = finding.get("metadata") or {}
    info = finding.get("finding_info") or {}
    types = info.get("types") or []
    values = {
        "alertname": un.get("finding_type") or meta.get("event_code") or (types[:1] or [""])[0],
        "severity": str(finding.get("severity") or "").lower(),
        "category": un.get("category") or (types[1] if len(types) > 1 else ""),
        "src_cluster": edge.get("src_cluster"),
        "dst_cluster": edge.get("dst_cluster"),
    }
    labels = {k: str(v) for k, v in static.items()}
    for k in LABEL_KEYS:
        v = values.get(k)
        if v:
            labels[k] = str(v)[:MAX_LABEL_VALUE]
    labels.setdefault("alertname", "DetectorFinding")
    return labels


def _annotations(finding: Mapping[str, Any]) -> dict[str, str]:
    info = finding.get("finding_info") or {}
    un = finding.get("unmapped") or {}
    edge = un.get("edge") or {}
    out = {
        "summary": str(info.get("title") or ""),
        "description": str(finding.get("message") or info.get("desc") or ""),
        "incident_uid": str(info.get("uid") or ""),
        "risk_score": str(finding.get("risk_score", "")),
        "edge": str(edge.get("text") or ""),
        "src_principal": str(edge.get("src_principal") or ""),
        "src_ip": str(edge.get("src_ip") or ""),
        "dst_service": str(edge.get("dst_service") or ""),
        "dst_namespace": str(edge.get("dst_namespace") or ""),
    }
    return {k: v for k, v in out.items() if v}


@dataclass(slots=True)
class _Alert:
    labels: dict[str, str]
    incidents: dict[str, float] = field(default_factory=dict)  # uid -> first_seen (epoch s)
    annotations: dict[str, str] = field(default_factory=dict)
    resolved_at: float | None = None


class AlertmanagerSink:
    """Active incidents as Alertmanager alerts, re-sent periodically (see module contract)."""

    def __init__(self, settings: AlertmanagerSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or RealClock()
        self._alerts: dict[LabelKey, _Alert] = {}
        self._where: dict[str, LabelKey] = {}  # incident uid -> its alert
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.posts_ok = 0
        self.posts_failed = 0

    # -- state --------------------------------------------------------------------------------

    def _detach(self, uid: str, now: float) -> None:
        key = self._where.pop(uid, None)
        if key is None:
            return
        alert = self._alerts[key]
        alert.incidents.pop(uid, None)
        if not alert.incidents:
            alert.resolved_at = now

    def observe(self, findings: Sequence[Mapping[str, Any]], now: float | None = None) -> None:
        """Fold findings into the alert state (no I/O)."""
        t = self.clock.now() if now is None else now
        for f in findings:
            uid = str((f.get("finding_info") or {}).get("uid") or "")
            if not uid:
                continue
            if f.get("activity_id") == 3:
                self._detach(uid, t)
                continue
            labels = alert_labels(f, self.settings.static_labels)
            key: LabelKey = tuple(sorted(labels.items()))
            if self._where.get(uid) != key:
                self._detach(uid, t)
            alert = self._alerts.get(key)
            if alert is None or alert.resolved_at is not None:
                alert = self._alerts[key] = _Alert(labels)
            first = (f.get("finding_info") or {}).get("first_seen_time") or f.get("time") or 0
            alert.incidents[uid] = float(first) / 1000.0 if first else t
            alert.annotations = _annotations(f)
            self._where[uid] = key

    def payload(self, now: float | None = None) -> list[dict[str, Any]]:
        """The POST body for this round: active alerts and not yet acknowledged resolutions."""
        t = self.clock.now() if now is None else now
        out = []
        for a in self._alerts.values():
            ann = dict(a.annotations)
            if a.resolved_at is None:
                uids = sorted(a.incidents)
                ann["incidents"] = str(len(uids))
                ann["incident_uids"] = ",".join(uids[:MAX_LISTED_UIDS])
                starts = min(a.incidents.values())
                ends = t + 4 * self.settings.resend_interval_s
            else:
                starts = min(a.incidents.values(), default=a.resolved_at)
                ends = a.resolved_at
            item: dict[str, Any] = {
                "labels": dict(a.labels),
                "annotations": ann,
                "startsAt": _rfc3339(min(starts, ends)),
                "endsAt": _rfc3339(ends),
            }
            if self.settings.generator_url:
                item["generatorURL"] = self.settings.generator_url
            out.append(item)
        return out

    def _acknowledged(self, now: float) -> None:
        for key in [k for k, a in self._alerts.items() if a.resolved_at is not None]:
            del self._alerts[key]

    def _expire_resolved(self, now: float) -> None:
        for key in [
            k
            for k, a in self._alerts.items()
            if a.resolved_at is not None and now - a.resolved_at > RESOLVED_KEEP_S
        ]:
            del self._alerts[key]

    # -- sink ---------------------------------------------------------------------------------

    async def emit(self, findings: Sequence[Mapping[str, Any]]) -> None:
        self.observe(findings)
        if self._task is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s)
            )
            self._task = asyncio.create_task(self._loop(), name="alertmanager")
        self._wake.set()

    async def push(self) -> bool:
        """Post the current payload to every URL; True if all accepted it."""
        now = self.clock.now()
        self._expire_resolved(now)
        body = self.payload(now)
        if not body:
            return True
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s)
            )
        ok = True
        for url in self.settings.urls:
            try:
                async with self._session.post(
                    url.rstrip("/") + "/api/v2/alerts", json=body
                ) as resp:
                    await resp.read()
                    good = 200 <= resp.status < 300
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                log.warning("alertmanager %s: %s", url, e)
                good = False
            ok &= good
            if good:
                self.posts_ok += 1
            else:
                self.posts_failed += 1
        if ok:
            self._acknowledged(now)
        return ok

    async def _loop(self) -> None:
        interval = self.settings.resend_interval_s
        while True:
            self._wake.clear()
            ok = await self.push()
            wait = interval if ok else min(interval, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.clock.real_s(wait))

    async def close(self) -> None:
        """Stop the loop after one last push (so closes reach Alertmanager)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.push(), timeout=self.settings.timeout_s)
        if self._session is not None:
            await self._session.close()
            self._session = None
