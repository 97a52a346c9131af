"""Labelled evaluation: findings of a replay against the simulator's ground truth.

Contract:
* ``evaluate(labels, findings, test_span)`` matches every security finding (OCSF Detection
  Finding, activity create or update) to the labelled scenarios it overlaps: in time
  (``[start, end + grace_s]``) and in subject (its caller ``principal@cluster`` is one of the
  scenario's principals, or its destination ``service.namespace@cluster`` one of its
  services; ``*`` matches every service).
* Per attack: detected, time to detect (first matching finding's event time minus the
  scenario's start), matching incidents, and precision (matching security incidents over all
  security incidents created while it ran). A trap is passed when no security incident
  matches it. False positives are security incidents created outside every attack, per hour
  of test traffic. Operational and context findings are counted apart: they are not alarms
  for the SOC.
* ``format_report`` renders the table ``make eval`` prints; ``Report.to_dict`` the same as JSON.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

SECURITY = "security"


@dataclass
class ScenarioResult:
    name: str
    kind: str  # attack | trap
    start: float
    end: float
    incidents: set[str] = field(default_factory=set)
    first_detection: float | None = None
    types: set[str] = field(default_factory=set)
    created_during: int = 0  # security incidents created while it ran (precision denominator)
    actions: set[str] = field(default_factory=set)  # remediation actions on its incidents

    @property
    def detected(self) -> bool:
        return self.first_detection is not None

    @property
    def ttd_s(self) -> float | None:
        return None if self.first_detection is None else self.first_detection - self.start

    @property
    def precision(self) -> float | None:
        if not self.created_during:
            return None
        return min(1.0, len(self.incidents) / self.created_during)


@dataclass
class Report:
    scenarios: list[ScenarioResult]
    test_hours: float
    false_positives: list[dict[str, Any]]
    operational: int
    context: int
    security_incidents: int
    actions_on_false_positives: int = 0

    @property
    def attacks(self) -> list[ScenarioResult]:
        return [s for s in self.scenarios if s.kind == "attack"]

    @property
    def traps(self) -> list[ScenarioResult]:
        return [s for s in self.scenarios if s.kind == "trap"]

    @property
    def recall(self) -> float:
        a = self.attacks
        return sum(s.detected for s in a) / len(a) if a else 0.0

    @property
    def median_ttd_s(self) -> float | None:
        t = [s.ttd_s for s in self.attacks if s.ttd_s is not None]
        return statistics.median(t) if t else None

    @property
    def fp_per_hour(self) -> float:
        return len(self.false_positives) / self.test_hours if self.test_hours else 0.0

    @property
    def traps_flagged(self) -> list[str]:
        return [s.name for s in self.traps if s.incidents]

    @property
    def traps_remediated(self) -> list[str]:
        return [s.name for s in self.traps if s.actions]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recall": self.recall,
            "median_ttd_s": self.median_ttd_s,
            "fp_per_hour": self.fp_per_hour,
            "false_positives": len(self.false_positives),
            "test_hours": self.test_hours,
            "traps_flagged": self.traps_flagged,
            "traps_remediated": self.traps_remediated,
            "actions_on_false_positives": self.actions_on_false_positives,
            "security_incidents": self.security_incidents,
            "operational_findings": self.operational,
            "context_findings": self.context,
            "scenarios": [
                {
                    "scenario": s.name,
                    "kind": s.kind,
                    "detected": s.detected,
                    "ttd_s": s.ttd_s,
                    "incidents": len(s.incidents),
                    "precision": s.precision,
                    "remediation_actions": len(s.actions),
                    "finding_types": sorted(s.types),
                }
                for s in self.scenarios
            ],
            "false_positive_examples": self.false_positives[:10],
        }


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                out.append(orjson.loads(line))
    return out


def _subject(f: Mapping[str, Any]) -> tuple[str | None, str | None]:
    edge = f.get("unmapped", {}).get("edge", {})
    who = edge.get("src_principal")
    caller = f"{who}@{edge.get('src_cluster')}" if who else None
    svc = edge.get("dst_service")
    dst = None
    if svc:
        ns = edge.get("dst_namespace")
        dst = f"{svc}.{ns}@{edge.get('dst_cluster')}" if ns else f"{svc}@{edge.get('dst_cluster')}"
    return caller, dst


def _matches(
    label: Mapping[str, Any], caller: str | None, dst: str | None, extra: Sequence[str]
) -> bool:
    principals = set(label.get("principals", ()))
    services = set(label.get("services", ()))
    if "*" in services:
        return True
    if caller is not None and caller in principals:
        return True
    if dst is not None and dst in services:
        return True
    return any(x in services for x in extra)


REMEDIATIONS = ("tighten_policy", "revoke_credential")


def evaluate(
    labels: Iterable[Mapping[str, Any]],
    findings: Iterable[Mapping[str, Any]],
    test_span: tuple[float, float],
    grace_s: float = 300.0,
    actions: Iterable[Mapping[str, Any]] = (),
) -> Report:
    """See the module docstring; ``actions``: records of ``actions.jsonl`` (remediation
    actions count when proposed, approved or applied, not when a rail suppressed them)."""
    labs = sorted(labels, key=lambda x: x["start_ts"])
    results = [
        ScenarioResult(x["scenario"], x["kind"], float(x["start_ts"]), float(x["end_ts"]))
        for x in labs
    ]
    fps: list[dict[str, Any]] = []
    operational = context = security = 0
    created: set[str] = set()
    for f in findings:
        un = f.get("unmapped", {})
        category = un.get("category", SECURITY)
        activity = f.get("activity_id")
        uid = f.get("finding_info", {}).get("uid", "")
        t = f.get("time", 0) / 1000.0
        if activity not in (1, 2):
            continue
        if category != SECURITY:
            if activity == 1:
                operational += category != "context"
                context += category == "context"
            continue
        caller, dst = _subject(f)
        ev = un.get("evidence", {})
        # caller-level findings name what they reached: new destinations, burst targets
        extra = [str(x) for x in ev.get("new_destinations", []) + ev.get("targets", [])]
        matched = False
        for lab, res in zip(labs, results, strict=True):
            if not (res.start - 60.0 <= t <= res.end + grace_s):
                continue
            if _matches(lab, caller, dst, extra):
                matched = True
                res.incidents.add(uid)
                res.types.add(str(un.get("finding_type")))
                if res.first_detection is None or t < res.first_detection:
                    res.first_detection = t
        if activity == 1 and uid not in created:
            created.add(uid)
            security += 1
            for res in results:
                if res.kind == "attack" and res.start - 60.0 <= t <= res.end + grace_s:
                    res.created_during += 1
            if not any(r.kind == "attack" and uid in r.incidents for r in results) and not matched:
                fps.append(_fp_summary(f))
            elif matched and not any(r.kind == "attack" and uid in r.incidents for r in results):
                fps.append(_fp_summary(f))  # matched only traps: still a false alarm
    # traps: first_detection is meaningless; an incident matching them is a failure, unless
    # it is an attack's (scenarios can overlap in time, and a "*" trap matches everything)
    attack_incidents = {u for r in results if r.kind == "attack" for u in r.incidents}
    for r in results:
        if r.kind == "trap":
            r.first_detection = None
            r.incidents -= attack_incidents
    fp_uids = {str(fp["uid"]) for fp in fps}
    on_fp = 0
    for a in actions:
        if a.get("kind") not in REMEDIATIONS or a.get("state") == "suppressed":
            continue
        inc = str(a.get("incident_uid"))
        for r in results:
            if inc in r.incidents:
                r.actions.add(str(a.get("action_id")))
        on_fp += inc in fp_uids
    hours = max(0.0, test_span[1] - test_span[0]) / 3600.0
    return Report(results, hours, fps, operational, context, security, on_fp)


def _fp_summary(f: Mapping[str, Any]) -> dict[str, Any]:
    un = f.get("unmapped", {})
    return {
        "uid": f.get("finding_info", {}).get("uid"),
        "time": f.get("time"),
        "finding_type": un.get("finding_type"),
        "edge": un.get("edge", {}).get("text"),
        "risk": un.get("risk"),
        "message": f.get("message"),
    }


def _fmt_s(s: float | None) -> str:
    return "-" if s is None else f"{s:.0f} s"


def format_report(r: Report) -> str:
    lines = [
        f"{'scenario':28} {'kind':6} {'detected':8} {'time to detect':>14} {'incidents':>9} "
        f"{'precision':>9} {'remediated':>10}  finding types",
    ]
    for s in r.scenarios:
        det = "yes" if s.detected else ("-" if s.kind == "trap" else "NO")
        if s.kind == "trap":
            det = "FLAGGED" if s.incidents else "quiet"
        prec = "-" if s.precision is None or s.kind == "trap" else f"{s.precision:.2f}"
        lines.append(
            f"{s.name:28} {s.kind:6} {det:8} {_fmt_s(s.ttd_s):>14} {len(s.incidents):>9} "
            f"{prec:>9} {len(s.actions) or '-':>10}  {', '.join(sorted(s.types)) or '-'}"
        )
    med = r.median_ttd_s
    lines += [
        "",
        f"recall {r.recall:.2f} ({sum(s.detected for s in r.attacks)}/{len(r.attacks)} attacks); "
        f"median time to detect {_fmt_s(med)}; "
        f"false positives {len(r.false_positives)} in {r.test_hours:.1f} h = "
        f"{r.fp_per_hour * 8:.2f} per 8 h; traps flagged: "
        f"{', '.join(r.traps_flagged) or 'none'}; traps remediated: "
        f"{', '.join(r.traps_remediated) or 'none'}; actions on false positives: "
        f"{r.actions_on_false_positives}",
        f"security incidents {r.security_incidents}; operational findings {r.operational}; "
        f"context findings {r.context}",
    ]
    for fp in r.false_positives[:5]:
        lines.append(f"  false positive: {fp['finding_type']} {fp['edge']} (risk {fp['risk']})")
    return "\n".join(lines)
