"""Findings: ``Anomaly`` objects -> OCSF 1.8.0 Detection Findings (class 2004), with lifecycles.

Contract:
* ``IncidentTracker.observe(anomalies, now_ts)`` groups anomalies into incidents keyed by
  ``(finding_type, subject.key())`` and returns the OCSF findings to emit for that batch, in a
  deterministic order: ``activity_id`` 1 Create for a new incident, 2 Update for a continuing one
  (rate limited: at most one per ``update_min_interval_s`` of event time unless the integer risk
  rose), then 3 Close for incidents quiet for more than ``close_after_quiet_s`` as of ``now_ts``.
  ``tick(now_ts)`` emits only those Closes (call it when windows close without anomalies).
* Quiet is measured in EVENT time between the end of the last anomalous window and the end of
  the next one: an anomaly continues its incident iff ``window_end - last_seen <=
  close_after_quiet_s``; ``tick(t)`` closes iff ``t - last_seen > close_after_quiet_s``. Both use
  the same rule, so calling ``tick`` before or after ``observe`` for a window gives the same result.
* One incident = one ``finding_info.uid`` (= ``metadata.correlation_uid``) across Create, Updates
  and Close. It is a uuid5 over finding type, subject key and first window start, so replaying the
  same telemetry yields the same uids; ``metadata.uid`` (one per emitted event) is a uuid5 of the
  incident uid and a per-incident sequence number, equally deterministic. Receivers dedupe on it.
* Every timestamp is event time in epoch milliseconds: ``time`` is the end of the newest window
  (Create/Update) or ``last_seen + close_after_quiet_s`` (Close on silence: when the incident
  became quiet, independent of how often ``tick`` runs); an eviction or ``close_all(now_ts)``
  closes at the event time it happens. Wall clock never enters a finding.
* ``status_id``: 1 New for Create and Update (nobody has reviewed it yet), 99 Other with
  ``status`` "Closed" and the reason in ``status_detail`` for Close (OCSF 4 Resolved means
  "reviewed and remediated", which an automatic close on silence is not).
* At most ``max_open`` incidents are open; opening one more closes the least recently seen one
  (a Close with ``status_detail`` saying so), counted in ``stats["evicted"]``.
* ``get_state()``/``set_state()`` round-trip through JSON for checkpoints. ``Anomaly.baseline``
  and ``Anomaly.evidence`` should hold JSON-like values; numpy scalars/arrays are converted, any
  other object is stringified.
* Findings validate against ``jsonschema/1.8.0/detection_finding.schema.json`` (no profiles):
  everything OCSF has no attribute for goes under ``unmapped``.
* ``attach_remediation`` fills OCSF ``remediation`` (used by the response stage);
  ``finding_summary`` renders one line for the console sink from the OCSF dict alone.
"""

from __future__ import annotations

import ipaddress
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

from detector import __version__
from detector.anomalies import CONTEXT, Anomaly, Subject, severity_id

OCSF_VERSION: Final = "1.8.0"
CLASS_UID: Final = 2004
CATEGORY_UID: Final = 2
CLASS_NAME: Final = "Detection Finding"
CATEGORY_NAME: Final = "Findings"

CREATE: Final = 1
UPDATE: Final = 2
CLOSE: Final = 3
ACTIVITY_NAMES: Final[dict[int, str]] = {CREATE: "Create", UPDATE: "Update", CLOSE: "Close"}

# status_id is "set by the consumer" in OCSF: 1 New = not yet reviewed, which is true of both a
# Create and an Update from us (2 "In Progress" means an analyst is reviewing it, which the
# detector cannot know). 4 "Resolved" means reviewed and remediated, which an automatic close on
# silence is not, so a Close is 99 Other with status "Closed" and the reason in status_detail.
STATUS_NEW: Final = 1
STATUS_OTHER: Final = 99
SEVERITY_NAMES: Final[dict[int, str]] = {
    0: "Unknown",
    1: "Informational",
    2: "Low",
    3: "Medium",
    4: "High",
    5: "Critical",
    6: "Fatal",
}
# OCSF risk_level_id: 0 Info, 1 Low, 2 Medium, 3 High, 4 Critical (one below severity_id).
RISK_LEVEL_NAMES: Final[dict[int, str]] = {
    0: "Info",
    1: "Low",
    2: "Medium",
    3: "High",
    4: "Critical",
}
CONFIDENCE_NAMES: Final[dict[int, str]] = {1: "Low", 2: "Medium", 3: "High"}

# OCSF analytic.type_id: 1 Rule, 2 Behavioral, 3 Statistical, 4 Learning (ML/DL), 99 Other.
# Keyed by Anomaly.model; an unknown model is Statistical because every model hands us a
# calibrated tail probability. Models added later register here (one line).
ANALYTIC_TYPES: Final[dict[str, tuple[int, str]]] = {
    "novelty": (2, "Behavioral"),
    "seasonal": (3, "Statistical"),
    "bursts": (3, "Statistical"),
    "fanout": (3, "Statistical"),
    "context": (3, "Statistical"),
    "global_shift": (3, "Statistical"),
    "multivariate": (4, "Learning (ML/DL)"),
    "isolation_forest": (4, "Learning (ML/DL)"),
    "rule": (1, "Rule"),
}
DEFAULT_ANALYTIC_TYPE: Final = (3, "Statistical")

# anomaly.observation_type: OCSF suggests "Frequency Analysis", "Volume Analysis", ...
OBSERVATION_TYPES: Final[dict[str, str]] = {
    "UNSEEN": "Frequency Analysis",
    "RARE": "Frequency Analysis",
    "SURGE": "Volume Analysis",
    "DROP": "Volume Analysis",
    "BURST": "Volume Analysis",
    "FANOUT": "Distribution Analysis",
    "OUTLIER": "Multivariate Analysis",
    "GLOBAL_SHIFT": "Volume Analysis",
}

# Observable type_ids from the OCSF 1.8.0 dictionary/objects: 2 ip_t, 31 user.uid,
# 38 resource_details.name, 99 Other (see `type`).
OBS_IP: Final = (2, "IP Address")
OBS_USER_UID: Final = (31, "User: uid")
OBS_RESOURCE_NAME: Final = (38, "Resource Details: name")
OBS_OTHER: Final = 99

# Fixed namespace so incident uids are the same in every process and release.
_UID_NAMESPACE: Final = uuid.UUID("6f1b3c2e-5a7d-5e0f-9c43-2d8e1b7a4f10")
_STATE_VERSION: Final = 1
_MAX_LISTED: Final = 10  # src_ips / routes listed in a finding


def ms(ts: float) -> int:
    """Epoch seconds -> OCSF timestamp_t (integer milliseconds)."""
    return round(float(ts) * 1000.0)  # float(): numpy scalars round to numpy types


def incident_uid(finding_type: str, subject: Subject, first_window_start: float) -> str:
    """The deterministic ``finding_info.uid`` of the incident that starts with this window."""
    name = repr((finding_type, subject.key(), ms(first_window_start)))
    return str(uuid.uuid5(_UID_NAMESPACE, name))


# -- formatting ------------------------------------------------------------------------------


def _num(x: float) -> str:
    """A number as a plain machine-readable string (OCSF observation.value is a string)."""
    if not math.isfinite(x):
        return str(x)
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}"


def _human(x: float | None, feature: str) -> str:
    """A number in the unit its feature implies, for people."""
    if x is None:
        return "none"
    if not math.isfinite(x):
        return str(x)
    f = feature.lower()
    if "bytes" in f:
        v = float(x)
        for unit in ("B", "kB", "MB", "GB", "TB"):
            if abs(v) < 1000 or unit == "TB":
                return f"{v:.0f} {unit}" if unit == "B" else f"{v:.3g} {unit}"
            v /= 1000
    if f.endswith("_ms") or "latency" in f:
        return f"{x:.3g} ms"
    if f.endswith(("ratio", "_share", "_fraction")):
        return f"{100 * x:.3g}%"
    if float(x).is_integer():
        return f"{int(x)}"
    return f"{x:.3g}"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + "Z"


def _duration(s: float) -> str:
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:.0f} h"
    if s >= 120 and s % 60 == 0:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def _jsonable(v: Any) -> Any:
    """Best effort JSON-safe copy (tuples/sets -> lists, non-finite floats -> strings)."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if hasattr(v, "tolist") and callable(v.tolist):
        return _jsonable(v.tolist())  # numpy scalars and arrays from the models
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, set | frozenset):
        return sorted((_jsonable(x) for x in v), key=str)
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return str(v)


def baseline_description(a: Anomaly) -> str:
    """What the observation was compared with, in words (the model's own words if it gave any)."""
    desc = a.baseline.get("description")
    if isinstance(desc, str) and desc:
        return desc
    windows = _jsonable(a.baseline.get("windows_learned", a.baseline.get("windows")))
    if isinstance(windows, int | float):
        return f"{a.model} baseline, {int(windows)} windows"
    return f"{a.model} baseline"


def _valid_ip(s: Any) -> bool:
    if not isinstance(s, str):
        return False
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def _src_ips(a: Anomaly) -> list[str]:
    ips: list[str] = []
    if a.subject.src_ip:
        ips.append(a.subject.src_ip)
    ev = a.evidence.get("src_ips")
    if isinstance(ev, list | tuple | set | frozenset):
        ips.extend(str(x) for x in sorted(ev, key=str))
    return list(dict.fromkeys(ips))[:_MAX_LISTED]


def _routes(a: Anomaly) -> list[str]:
    for key in ("routes", "new_routes"):
        ev = a.evidence.get(key)
        if isinstance(ev, Mapping):
            return [str(r) for r in sorted(ev, key=str)][:_MAX_LISTED]
        if isinstance(ev, list | tuple | set | frozenset):
            return [str(r) for r in sorted(ev, key=str)][:_MAX_LISTED]
    return []


def _edge_text(s: Subject) -> str:
    if not (s.principal or s.src_ip or s.src_cluster) and not s.dst_service:
        return "whole mesh"
    if not s.dst_service:
        return s.src
    if not (s.principal or s.src_ip or s.src_cluster):
        return s.dst
    return f"{s.src} -> {s.dst}"


def _target_type(s: Subject) -> str:
    has_src = bool(s.principal or s.src_ip or s.src_cluster)
    if has_src and s.dst_service:
        return "Service Mesh Edge"
    if has_src:
        return "Workload Identity"
    if s.dst_service:
        return "Kubernetes Service"
    return "Service Mesh"


def anomaly_sentence(a: Anomaly) -> str:
    """The measurement: observed vs expected, the baseline it was compared with, and p."""
    window = a.window_end - a.window_start
    feature = a.feature.replace("_", " ")
    expected = f"≈ {_human(a.expected, a.feature)}" if a.expected is not None else "none"
    return (
        f"{feature} {_human(a.observed, a.feature)} in {_duration(window)} "
        f"(window ending {_utc(a.window_end)}); expected {expected} "
        f"({baseline_description(a)}); p = {a.p_value:.1g} [{a.pattern}, {a.model}]"
    )


# -- incidents -------------------------------------------------------------------------------


def subject_to_dict(s: Subject) -> dict[str, str | None]:
    return {f.name: getattr(s, f.name) for f in fields(Subject)}


def anomaly_to_dict(a: Anomaly) -> dict[str, Any]:
    """JSON form of an Anomaly (for checkpoints)."""
    return {
        "finding_type": a.finding_type,
        "pattern": a.pattern,
        "subject": subject_to_dict(a.subject),
        "window_start": float(a.window_start),
        "window_end": float(a.window_end),
        "model": a.model,
        "feature": a.feature,
        "observed": _jsonable(a.observed),
        "expected": _jsonable(a.expected),
        "p_value": _jsonable(float(a.p_value)),
        "baseline": _jsonable(a.baseline),
        "contributions": [[str(n), _jsonable(float(s))] for n, s in a.contributions],
        "evidence": _jsonable(a.evidence),
        "confidence": float(a.confidence),
    }


def anomaly_from_dict(d: Mapping[str, Any]) -> Anomaly:
    def num(v: Any) -> float:
        return float(v)  # "nan"/"inf" strings from _jsonable parse back too

    return Anomaly(
        finding_type=d["finding_type"],
        pattern=d["pattern"],
        subject=Subject(**d["subject"]),
        window_start=float(d["window_start"]),
        window_end=float(d["window_end"]),
        model=d["model"],
        feature=d["feature"],
        observed=num(d["observed"]),
        expected=None if d["expected"] is None else num(d["expected"]),
        p_value=float(d["p_value"]),
        baseline=dict(d["baseline"]),
        contributions=tuple((str(n), float(s)) for n, s in d["contributions"]),
        evidence=dict(d["evidence"]),
        confidence=float(d["confidence"]),
    )


@dataclass(slots=True)
class Incident:
    """One open incident: what every finding of its lifecycle is rendered from."""

    uid: str
    finding_type: str
    subject: Subject
    first_seen: float  # start of the first anomalous window
    created: float  # end of the first anomalous window (time of the Create)
    last_seen: float  # end of the newest anomalous window
    windows: int = 0  # distinct anomalous windows
    anomalies: int = 0  # anomalies folded in (several models may flag one window)
    peak_risk: float = 0.0
    last_emit_ts: float = 0.0  # event time of the last emitted Create/Update
    last_emit_risk: int = -1
    suppressed: int = 0  # updates not emitted because of the rate limit
    seq: int = 0  # events emitted for this incident (metadata.sequence)
    current: list[Anomaly] = field(default_factory=list)  # newest window's anomalies, by risk

    @property
    def key(self) -> tuple[str, tuple[str | None, ...]]:
        return (self.finding_type, self.subject.key())

    def to_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "finding_type": self.finding_type,
            "subject": subject_to_dict(self.subject),
            "first_seen": self.first_seen,
            "created": self.created,
            "last_seen": self.last_seen,
            "windows": self.windows,
            "anomalies": self.anomalies,
            "peak_risk": self.peak_risk,
            "last_emit_ts": self.last_emit_ts,
            "last_emit_risk": self.last_emit_risk,
            "suppressed": self.suppressed,
            "seq": self.seq,
            "current": [anomaly_to_dict(a) for a in self.current],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Incident:
        return cls(
            uid=d["uid"],
            finding_type=d["finding_type"],
            subject=Subject(**d["subject"]),
            first_seen=float(d["first_seen"]),
            created=float(d["created"]),
            last_seen=float(d["last_seen"]),
            windows=int(d["windows"]),
            anomalies=int(d["anomalies"]),
            peak_risk=float(d["peak_risk"]),
            last_emit_ts=float(d["last_emit_ts"]),
            last_emit_risk=int(d["last_emit_risk"]),
            suppressed=int(d["suppressed"]),
            seq=int(d["seq"]),
            current=[anomaly_from_dict(a) for a in d["current"]],
        )


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    close_after_quiet_s: float = 900.0
    update_min_interval_s: float = 300.0
    max_open: int = 10_000

    def __post_init__(self) -> None:
        if self.close_after_quiet_s <= 0 or self.update_min_interval_s < 0 or self.max_open < 1:
            raise ValueError(
                "close_after_quiet_s must be > 0, update_min_interval_s >= 0, max_open >= 1"
            )


def _sort_key(a: Anomaly) -> tuple[Any, ...]:
    # Deterministic processing order whatever order the scorer produced them in.
    return (
        a.window_end,
        a.window_start,
        a.finding_type,
        tuple("" if k is None else k for k in a.subject.key()),
        -a.risk,
        a.model,
        a.feature,
        a.observed,
    )


class IncidentTracker:
    """Groups anomalies into incidents and renders their OCSF lifecycle events."""

    def __init__(
        self,
        close_after_quiet_s: float = 900.0,
        update_min_interval_s: float = 300.0,
        max_open: int = 10_000,
    ) -> None:
        self.config = TrackerConfig(close_after_quiet_s, update_min_interval_s, max_open)
        self._open: dict[tuple[str, tuple[str | None, ...]], Incident] = {}
        self.stats: dict[str, int] = {
            "created": 0,
            "updated": 0,
            "updates_suppressed": 0,
            "closed": 0,
            "evicted": 0,
        }

    @property
    def open_incidents(self) -> list[Incident]:
        return list(self._open.values())

    def observe(self, anomalies: Sequence[Anomaly], now_ts: float) -> list[dict[str, Any]]:
        """Fold a batch of anomalies in; return the findings to emit (Creates/Updates, Closes)."""
        out: list[dict[str, Any]] = []
        # Incidents touched by this batch, in first-touch order -> is it new in this batch?
        pending: dict[tuple[str, tuple[str | None, ...]], bool] = {}
        quiet = self.config.close_after_quiet_s
        for a in sorted(anomalies, key=_sort_key):
            key = (a.finding_type, a.subject.key())
            inc = self._open.get(key)
            if inc is not None and a.window_end - inc.last_seen > quiet:
                # The old incident went quiet before this anomaly: close it, start a new one.
                # Done here (not only in tick) so results do not depend on tick cadence.
                out.extend(self._flush(inc, pending))
                out.append(self._close(inc, reason="quiet"))
                inc = None
            if inc is None:
                if len(self._open) >= self.config.max_open:
                    out.extend(self._evict_oldest(pending, at=a.window_end))
                inc = Incident(
                    uid=incident_uid(a.finding_type, a.subject, a.window_start),
                    finding_type=a.finding_type,
                    subject=a.subject,
                    first_seen=float(a.window_start),
                    created=float(a.window_end),
                    last_seen=float(a.window_end),
                    windows=1,
                    current=[a],
                )
                self._open[key] = inc
                pending[key] = True
            else:
                if a.window_end > inc.last_seen:
                    inc.windows += 1
                    inc.last_seen = float(a.window_end)
                    inc.current = [a]
                elif a.window_end == inc.last_seen:
                    inc.current.append(a)  # another model/feature on the same window
                else:
                    # A late anomaly for an older window counts, but the newest stays on show.
                    inc.windows += 1
                    inc.first_seen = min(inc.first_seen, float(a.window_start))
                pending.setdefault(key, False)
            inc.anomalies += 1
            inc.peak_risk = max(inc.peak_risk, float(a.risk))
        for key in list(pending):
            inc = self._open[key]
            out.extend(self._flush(inc, pending))
        out.extend(self.tick(now_ts))
        return out

    def _flush(
        self, inc: Incident, pending: dict[tuple[str, tuple[str | None, ...]], bool]
    ) -> list[dict[str, Any]]:
        """Emit the Create, or the Update if the rate limit allows it, for a touched incident."""
        if inc.key not in pending:
            return []
        is_new = pending.pop(inc.key)
        inc.current.sort(key=lambda x: (-x.risk, x.model, x.feature))
        risk_int = round(inc.peak_risk)
        if is_new:
            self.stats["created"] += 1
            return [self._emit(inc, CREATE, risk_int)]
        if (
            inc.last_seen - inc.last_emit_ts >= self.config.update_min_interval_s
            or risk_int > inc.last_emit_risk
        ):
            self.stats["updated"] += 1
            return [self._emit(inc, UPDATE, risk_int)]
        inc.suppressed += 1
        self.stats["updates_suppressed"] += 1
        return []

    def tick(self, now_ts: float) -> list[dict[str, Any]]:
        """Close incidents with no anomaly for more than ``close_after_quiet_s`` by ``now_ts``."""
        quiet = self.config.close_after_quiet_s
        due = [inc for inc in self._open.values() if now_ts - inc.last_seen > quiet]
        due.sort(key=lambda i: (i.last_seen, i.uid))
        return [self._close(inc, reason="quiet") for inc in due]

    def close_all(
        self, now_ts: float | None = None, reason: str = "end of input"
    ) -> list[dict[str, Any]]:
        """Close every open incident, e.g. at the end of a replay (a service checkpoints instead).

        Close time is ``now_ts`` (event time), or each incident's ``last_seen`` if not given.
        """
        due = sorted(self._open.values(), key=lambda i: (i.last_seen, i.uid))
        return [self._close(inc, reason=reason, at=now_ts) for inc in due]

    # -- state ---------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "incidents": [inc.to_dict() for inc in self._open.values()],
            "stats": dict(self.stats),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported incident state version {state.get('version')!r}")
        incidents = [Incident.from_dict(d) for d in state["incidents"]]
        self._open = {inc.key: inc for inc in incidents}
        self.stats.update({k: int(v) for k, v in state.get("stats", {}).items()})

    def export_incidents(self, belongs: Callable[[Subject], bool]) -> list[dict[str, Any]]:
        """The open incidents whose subject ``belongs`` (state handover between replicas)."""
        return [inc.to_dict() for inc in self._open.values() if belongs(inc.subject)]

    def release_incidents(self, belongs: Callable[[Subject], bool]) -> int:
        """Forget (without closing) the open incidents whose subject ``belongs``: another
        replica carries them on."""
        gone = [k for k, inc in self._open.items() if belongs(inc.subject)]
        for k in gone:
            del self._open[k]
        return len(gone)

    def adopt_incidents(self, incidents: Iterable[Mapping[str, Any]]) -> int:
        """Carry on incidents another replica opened (same uid, same sequence); an incident
        already open here is kept as it is."""
        n = 0
        for d in incidents:
            inc = Incident.from_dict(d)
            if inc.key not in self._open:
                self._open[inc.key] = inc
                n += 1
        return n

    # -- internals -----------------------------------------------------------------------------

    def _evict_oldest(
        self, pending: dict[tuple[str, tuple[str | None, ...]], bool], at: float
    ) -> list[dict[str, Any]]:
        # Least recently seen goes first: it is the closest to closing on its own anyway.
        # Incidents touched in this batch are spared unless nothing else is left.
        candidates = [i for k, i in self._open.items() if k not in pending] or list(
            self._open.values()
        )
        victim = min(candidates, key=lambda i: (i.last_seen, i.first_seen, i.uid))
        self.stats["evicted"] += 1
        return [*self._flush(victim, pending), self._close(victim, reason="evicted", at=at)]

    def _close(self, inc: Incident, reason: str, at: float | None = None) -> dict[str, Any]:
        """Close ``inc``: at ``last_seen + close_after_quiet_s`` when quiet, else at ``at``."""
        self._open.pop(inc.key, None)
        self.stats["closed"] += 1
        if reason == "quiet":
            t = inc.last_seen + self.config.close_after_quiet_s
        else:
            t = max(inc.last_seen, at if at is not None else inc.last_seen)
        return self._emit(inc, CLOSE, round(inc.peak_risk), t, reason=reason)

    def _emit(
        self, inc: Incident, activity: int, risk_int: int, t: float | None = None, reason: str = ""
    ) -> dict[str, Any]:
        inc.seq += 1
        if activity != CLOSE:
            inc.last_emit_ts = inc.last_seen
            inc.last_emit_risk = risk_int
        t = inc.last_seen if t is None else t
        return render_finding(
            inc, activity, t, quiet_s=self.config.close_after_quiet_s, close_reason=reason
        )


# -- rendering -------------------------------------------------------------------------------


def _analysis(a: Anomaly) -> dict[str, Any]:
    obs_type = OBSERVATION_TYPES.get(a.pattern, "Anomaly Analysis")
    span = {
        "start_time": ms(a.window_start),
        "end_time": ms(a.window_end),
        "duration_secs": round(float(a.window_end - a.window_start)),
    }
    observed: dict[str, Any] = {"value": _num(a.observed), "timespan": span}
    baseline_obs: dict[str, Any] = {"value": "none" if a.expected is None else _num(a.expected)}
    windows = _jsonable(a.baseline.get("windows_learned", a.baseline.get("windows")))
    if isinstance(windows, int | float) and not isinstance(windows, bool) and windows >= 0:
        # How many windows the expectation rests on: OCSF observation.count.
        baseline_obs["count"] = int(windows)
    b_start = _jsonable(a.baseline.get("training_start"))
    b_end = _jsonable(a.baseline.get("training_end"))
    if isinstance(b_start, int | float) and isinstance(b_end, int | float):
        baseline_obs["timespan"] = {"start_time": ms(b_start), "end_time": ms(b_end)}
    return {
        "analysis_targets": [{"name": _edge_text(a.subject), "type": _target_type(a.subject)}],
        "anomalies": [
            {
                "observation_parameter": a.feature,
                "observation_type": obs_type,
                "observed_pattern": a.pattern,
                "observations": [observed],
            }
        ],
        "baselines": [
            {
                "observation_parameter": a.feature,
                "observation_type": obs_type,
                "observations": [baseline_obs],
            }
        ],
    }


def _user_type(principal: str) -> tuple[int, str]:
    if principal.startswith("spiffe://") or principal.startswith("system:serviceaccount:"):
        return 4, "Service"
    if principal.startswith("system:"):
        return 3, "System"
    return 0, "Unknown"


def _entities(
    s: Subject, ips: list[str], a: Anomaly
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """evidences, resources and observables for the subject (only what is known)."""
    evidence: dict[str, Any] = {
        "name": _edge_text(s),
        "data": {
            "feature": a.feature,
            "observed": _jsonable(a.observed),
            "expected": _jsonable(a.expected),
            "window_start": ms(a.window_start),
            "window_end": ms(a.window_end),
        },
    }
    resources: list[dict[str, Any]] = []
    observables: list[dict[str, Any]] = []
    good_ips = [ip for ip in ips if _valid_ip(ip)]
    if s.principal:
        type_id, type_name = _user_type(s.principal)
        evidence["actor"] = {"user": {"uid": s.principal, "type_id": type_id, "type": type_name}}
        observables.append(
            {
                "name": "evidences[0].actor.user.uid",
                "type_id": OBS_USER_UID[0],
                "type": OBS_USER_UID[1],
                "value": s.principal,
            }
        )
    if s.principal or good_ips or s.src_cluster:
        src: dict[str, Any] = {"name": s.src}
        if good_ips:
            src["ip"] = good_ips[0]
        evidence["src_endpoint"] = src
        actor_res: dict[str, Any] = {
            "name": s.principal or (good_ips[0] if good_ips else s.src),
            "uid": s.src,
            "type": "Workload Identity" if s.principal else "Network Source",
            "role_id": 2,
            "role": "Actor",
        }
        if s.src_cluster:
            actor_res["tags"] = [{"name": "k8s.cluster.name", "value": s.src_cluster}]
        resources.append(actor_res)
    if s.dst_service:
        dst: dict[str, Any] = {"svc_name": s.dst_service, "name": s.dst}
        evidence["dst_endpoint"] = dst
        target: dict[str, Any] = {
            "name": s.dst_service,
            "uid": s.dst,
            "type": "Kubernetes Service",
            "role_id": 1,
            "role": "Target",
        }
        if s.dst_namespace:
            target["namespace"] = s.dst_namespace
        if s.dst_cluster:
            target["tags"] = [{"name": "k8s.cluster.name", "value": s.dst_cluster}]
        resources.append(target)
        observables.append(
            {
                "name": f"resources[{len(resources) - 1}].name",
                "type_id": OBS_RESOURCE_NAME[0],
                "type": OBS_RESOURCE_NAME[1],
                "value": s.dst_service,
            }
        )
    for name, cluster in (("src_cluster", s.src_cluster), ("dst_cluster", s.dst_cluster)):
        if cluster:
            observables.append(
                {
                    "name": f"unmapped.edge.{name}",
                    "type_id": OBS_OTHER,
                    "type": "Kubernetes Cluster",
                    "value": cluster,
                }
            )
    for i, ip in enumerate(good_ips):
        observables.append(
            {"name": f"unmapped.src_ips[{i}]", "type_id": OBS_IP[0], "type": OBS_IP[1], "value": ip}
        )
    return [evidence], resources, observables


def _close_reason(reason: str, quiet_s: float) -> str:
    if reason == "quiet":
        return f"no anomaly for {_duration(quiet_s)}"
    if reason == "evicted":
        return "evicted: too many open incidents (max_open)"
    return reason


def _message(inc: Incident, activity: int, a: Anomaly, quiet_s: float, reason: str) -> str:
    if activity == CLOSE:
        why = _close_reason(reason, quiet_s)
        return (
            f"Closed ({why}): {a.title}; {inc.windows} anomalous window(s) from "
            f"{_utc(inc.first_seen)} to {_utc(inc.last_seen)}, peak risk {inc.peak_risk:.0f}; "
            f"last: {anomaly_sentence(a)}."
        )
    ongoing = (
        f" Ongoing: {inc.windows} anomalous windows since {_utc(inc.first_seen)}."
        if activity == UPDATE
        else ""
    )
    return f"{a.title}: {anomaly_sentence(a)}.{ongoing}"


def _desc(inc: Incident, a: Anomaly, others: list[Anomaly]) -> str:
    parts = [
        f"{a.title}.",
        f"Observed {a.feature} = {_human(a.observed, a.feature)} against an expectation of "
        f"{_human(a.expected, a.feature)} ({baseline_description(a)}).",
        f"Pattern {a.pattern} raised by the {a.model} model; calibrated p = {a.p_value:.2g}, "
        f"risk {a.risk:.0f}/100, confidence {a.confidence:.2f}.",
    ]
    if a.contributions:
        top = ", ".join(f"{n} {100 * s:.0f}%" for n, s in a.contributions if s > 0)
        if top:
            parts.append(f"Contributions: {top}.")
    if others:
        parts.append(
            "Also flagged in this window: "
            + "; ".join(f"{o.feature} {_human(o.observed, o.feature)} ({o.model})" for o in others)
            + "."
        )
    parts.append(
        f"Incident: {inc.windows} anomalous window(s) since {_utc(inc.first_seen)}, "
        f"peak risk {inc.peak_risk:.0f}."
    )
    return " ".join(parts)


def render_finding(
    inc: Incident, activity: int, t: float, quiet_s: float = 0.0, close_reason: str = ""
) -> dict[str, Any]:
    """The OCSF Detection Finding for one lifecycle event of ``inc`` at event time ``t``."""
    a = inc.current[0]  # highest-risk anomaly of the newest window
    others = inc.current[1:]
    risk_int = max(0, min(100, round(inc.peak_risk)))
    sev = severity_id(inc.peak_risk)
    conf_score = max(0, min(100, round(100 * float(a.confidence))))
    conf_id = 3 if a.confidence >= 0.75 else 2 if a.confidence >= 0.4 else 1
    analytic_type_id, analytic_type = ANALYTIC_TYPES.get(a.model, DEFAULT_ANALYTIC_TYPE)
    ips = _src_ips(a)
    evidences, resources, observables = _entities(inc.subject, ips, a)
    s = inc.subject

    finding_info: dict[str, Any] = {
        "uid": inc.uid,
        "title": a.title,
        "desc": _desc(inc, a, others),
        "types": [inc.finding_type, a.category],
        "first_seen_time": ms(inc.first_seen),
        "last_seen_time": ms(inc.last_seen),
        "created_time": ms(inc.created),
        "modified_time": ms(t),
        "analytic": {
            "name": a.model,
            "uid": f"detector/{a.model}",
            "type_id": analytic_type_id,
            "type": analytic_type,
            "category": a.category,
            "version": __version__,
        },
    }
    related = sorted({o.model for o in others if o.model != a.model})
    if related:
        finding_info["related_analytics"] = [
            {
                "name": m,
                "uid": f"detector/{m}",
                "type_id": ANALYTIC_TYPES.get(m, DEFAULT_ANALYTIC_TYPE)[0],
                "type": ANALYTIC_TYPES.get(m, DEFAULT_ANALYTIC_TYPE)[1],
            }
            for m in related
        ]
    data_sources = a.evidence.get("data_sources")
    if isinstance(data_sources, list | tuple) and data_sources:
        finding_info["data_sources"] = [str(d) for d in data_sources]

    finding: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": CLASS_NAME,
        "category_uid": CATEGORY_UID,
        "category_name": CATEGORY_NAME,
        "activity_id": activity,
        "activity_name": ACTIVITY_NAMES[activity],
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"{CLASS_NAME}: {ACTIVITY_NAMES[activity]}",
        "time": ms(t),
        "start_time": ms(inc.first_seen),
        "end_time": ms(inc.last_seen),
        "duration": ms(inc.last_seen) - ms(inc.first_seen),
        "count": inc.windows,
        "message": _message(inc, activity, a, quiet_s, close_reason),
        "severity_id": sev,
        "severity": SEVERITY_NAMES[sev],
        "risk_score": risk_int,
        "risk_level_id": sev - 1 if sev >= 1 else 0,
        "risk_level": RISK_LEVEL_NAMES[sev - 1 if sev >= 1 else 0],
        "confidence_score": conf_score,
        "confidence_id": conf_id,
        "confidence": CONFIDENCE_NAMES[conf_id],
        # Context findings explain many edges at once; a Close is no new signal.
        "is_alert": activity != CLOSE and a.category != CONTEXT,
        "finding_info": finding_info,
        "anomaly_analyses": [_analysis(x) for x in inc.current],
        "evidences": evidences,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": "detector",
                "vendor_name": "detector project",
                "version": __version__,
            },
            "uid": str(uuid.uuid5(uuid.UUID(inc.uid), str(inc.seq))),
            "correlation_uid": inc.uid,
            "sequence": inc.seq,
            "event_code": inc.finding_type,
        },
        "unmapped": {
            "edge": {
                "text": _edge_text(s),
                "src_principal": s.principal,
                "src_cluster": s.src_cluster,
                "src_ip": s.src_ip,
                "dst_service": s.dst_service,
                "dst_namespace": s.dst_namespace,
                "dst_cluster": s.dst_cluster,
            },
            "finding_type": inc.finding_type,
            "category": a.category,
            "pattern": a.pattern,
            "model": a.model,
            "feature": a.feature,
            "observed": _jsonable(a.observed),
            "expected": _jsonable(a.expected),
            "p_value": _jsonable(float(a.p_value)),
            "risk": round(a.risk, 2),
            "window_s": float(a.window_end - a.window_start),
            "src_ips": ips,
            "routes": _routes(a),
            "model_baseline": _jsonable(a.baseline),
            "contributions": [
                {"feature": str(n), "share": _jsonable(float(v))} for n, v in a.contributions
            ],
            "evidence": _jsonable(a.evidence),
            "incident": {
                "windows": inc.windows,
                "anomalies": inc.anomalies,
                "peak_risk": round(inc.peak_risk, 2),
                "updates_suppressed": inc.suppressed,
            },
        },
    }
    if activity == CLOSE:
        finding["status_id"] = STATUS_OTHER
        finding["status"] = "Closed"
        finding["status_detail"] = f"closed: {_close_reason(close_reason, quiet_s)}"
    else:
        finding["status_id"] = STATUS_NEW
        finding["status"] = "New"
    if resources:
        finding["resources"] = resources
    if observables:
        finding["observables"] = observables
    return finding


# -- helpers for other stages ----------------------------------------------------------------


def attach_remediation(
    finding: dict[str, Any],
    desc: str,
    references: Iterable[str] = (),
    kb_articles: Iterable[str] = (),
) -> dict[str, Any]:
    """Fill OCSF ``remediation`` {desc, references[], kb_articles[]} in place; returns ``finding``.

    ``desc`` says what to do (or what was done), ``references`` are URLs/ids of the rendered
    policy or runbook. A second call replaces the first (one remediation per finding in OCSF).
    """
    if not desc.strip():
        raise ValueError("remediation desc must not be empty")
    rem: dict[str, Any] = {"desc": desc}
    refs = [str(r) for r in references]
    if refs:
        rem["references"] = refs
    kbs = [str(k) for k in kb_articles]
    if kbs:
        rem["kb_articles"] = kbs
    finding["remediation"] = rem
    return finding


def finding_summary(finding: Mapping[str, Any]) -> str:
    """One line for the console: activity, severity, risk, title, measurement, incident uid."""
    info = finding.get("finding_info", {})
    activity = str(finding.get("activity_name", finding.get("activity_id", "?"))).upper()
    sev = finding.get("severity") or SEVERITY_NAMES.get(int(finding.get("severity_id", 0)), "?")
    stamp = _utc(finding.get("time", 0) / 1000.0)
    line = (
        f"[{stamp}] {activity:<6} {sev:<13} risk {finding.get('risk_score', 0):>3}  "
        f"{info.get('title', '?')}"
    )
    un = finding.get("unmapped", {})
    if "feature" in un:
        feature = str(un["feature"])
        obs = un.get("observed")
        exp = un.get("expected")
        obs_s = _human(float(obs), feature) if isinstance(obs, int | float) else str(obs)
        exp_s = _human(float(exp), feature) if isinstance(exp, int | float) else "none"
        line += f"  | {feature} {obs_s} vs ≈{exp_s}"
        if isinstance(un.get("p_value"), int | float):
            line += f", p={un['p_value']:.1g}"
    line += f"  | {finding.get('count', 1)} win  | {str(info.get('uid', '?'))[:8]}"
    return line
