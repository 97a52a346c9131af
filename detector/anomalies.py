"""Anomalies: what the baselines and the scorer say about a window, before it becomes a finding.

This is the contract between ``baselines/`` + ``scoring.py`` (which produce ``Anomaly`` objects)
and ``findings.py`` (which turns them into OCSF Detection Findings with a lifecycle) and the
response stage (which picks actions by ``finding_type``, ``severity`` and ``confidence``).

Contract:
* ``pattern`` is the OCSF ``observed_pattern``: ``UNSEEN``, ``RARE``, ``SURGE``, ``DROP``,
  ``BURST``, ``FANOUT``, ``OUTLIER`` (multivariate), ``GLOBAL_SHIFT``.
* ``finding_type`` names what happened in domain words (``FINDING_TYPES``); ``category`` says
  whether it is a ``security`` finding (an attack is plausible), ``operational`` (availability,
  latency: reported, never remediated) or ``context`` (a global change explained once).
* ``subject`` is who/what the incident is about; its ``key()`` groups windows into one incident
  (one ``finding_info.uid``), so it must not contain window-specific values.
* ``p_value`` is calibrated: the probability of something at least this unusual under the
  baseline, after calibration against the model's own training scores. ``risk`` in [0, 100] is
  ``min(100, -10·log10(p_value))``; the thresholds in config act on it.
* ``observed``/``expected`` are in the unit of ``feature`` (requests per window, bytes, ...).
  ``baseline`` describes what it was compared with in words and numbers (model, period, bin,
  number of windows). ``contributions`` lists the top features with their share of the score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

SECURITY: Final = "security"
OPERATIONAL: Final = "operational"
CONTEXT: Final = "context"

# finding_type -> (category, human title template)
FINDING_TYPES: Final[dict[str, tuple[str, str]]] = {
    "new_edge": (SECURITY, "New edge: {src} called {dst} for the first time"),
    "lateral_movement": (SECURITY, "Lateral movement: {src} reached services it never called"),
    "credential_replay": (SECURITY, "Credential used from an unexpected cluster: {src}"),
    "new_route": (SECURITY, "New route on {dst} called by {src}"),
    "rare_edge": (SECURITY, "Rarely seen edge: {src} -> {dst}"),
    "exfiltration": (SECURITY, "Exfiltration suspected: bytes out of {dst} to {src} surged"),
    "rate_surge": (SECURITY, "Request surge: {src} -> {dst}"),
    "auth_failure_burst": (SECURITY, "Authentication failure burst from {src}"),
    "denied_burst": (SECURITY, "Burst of denied requests from {src}"),
    "scan": (SECURITY, "Scanning / policy probing: {src} reached many destinations"),
    "k8s_api_abuse": (SECURITY, "Kubernetes API abuse by {src}"),
    "multivariate_outlier": (SECURITY, "Unusual behaviour of edge {src} -> {dst}"),
    "availability": (OPERATIONAL, "Availability degraded on {dst}"),
    "latency": (OPERATIONAL, "Latency degraded on {dst}"),
    "traffic_drop": (OPERATIONAL, "Traffic dropped: {src} -> {dst}"),
    "global_shift": (CONTEXT, "Mesh-wide traffic change ({detail})"),
}


@dataclass(frozen=True, slots=True)
class Subject:
    """Who/what an incident is about. Unknown parts are None."""

    principal: str | None = None  # caller identity (SPIFFE id, k8s user, "anonymous")
    src_cluster: str | None = None
    src_ip: str | None = None
    dst_service: str | None = None
    dst_namespace: str | None = None
    dst_cluster: str | None = None

    def key(self) -> tuple[str | None, ...]:
        return (
            self.principal,
            self.src_cluster,
            self.src_ip,
            self.dst_service,
            self.dst_namespace,
            self.dst_cluster,
        )

    @property
    def src(self) -> str:
        who = self.principal or self.src_ip or "unknown caller"
        return f"{who}@{self.src_cluster}" if self.src_cluster else who

    @property
    def dst(self) -> str:
        if not self.dst_service:
            return "many services"
        svc = f"{self.dst_service}.{self.dst_namespace}" if self.dst_namespace else self.dst_service
        return f"{svc}@{self.dst_cluster}" if self.dst_cluster else svc


@dataclass(frozen=True, slots=True)
class Anomaly:
    finding_type: str
    pattern: str
    subject: Subject
    window_start: float
    window_end: float
    model: str  # the baseline that raised it, e.g. "novelty", "seasonal", "bursts"
    feature: str  # what was measured, e.g. "requests", "bytes_out", "distinct_destinations"
    observed: float
    expected: float | None
    p_value: float
    baseline: dict[str, Any] = field(default_factory=dict)
    contributions: tuple[tuple[str, float], ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)
    confidence: float = 0.5  # 0..1: how sure the model is this is not noise

    @property
    def category(self) -> str:
        return FINDING_TYPES.get(self.finding_type, (SECURITY, ""))[0]

    @property
    def risk(self) -> float:
        return risk_from_p(self.p_value)

    @property
    def title(self) -> str:
        tpl = FINDING_TYPES.get(self.finding_type, (SECURITY, "{src} -> {dst}"))[1]
        detail = self.evidence.get("detail", self.feature)
        return tpl.format(src=self.subject.src, dst=self.subject.dst, detail=detail)


def risk_from_p(p: float) -> float:
    """Calibrated p-value -> risk in [0, 100] (10 per decade of improbability)."""
    if p <= 0:
        return 100.0
    return max(0.0, min(100.0, -10.0 * math.log10(p)))


def severity_id(risk: float) -> int:
    """OCSF severity_id from risk: 1 informational .. 5 critical."""
    if risk >= 90:
        return 5
    if risk >= 70:
        return 4
    if risk >= 50:
        return 3
    if risk >= 30:
        return 2
    return 1
