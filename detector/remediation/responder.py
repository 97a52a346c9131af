"""The response stage: OCSF findings in, remediation action records out, rails enforced.

Contract:
* ``Responder(config, baseline)``: ``config`` is a ``ResponseConfig`` (defaults: dry run);
  ``baseline`` is the novelty model (``edges_``), used for blast radii and NetworkPolicy
  sources; without it blast radii are unknown, which the rails treat as above the limit.
* ``on_findings(findings, now_ts)`` acts on Create (1) and Update (2) findings only (a Close
  means the incident went quiet, maybe because the DENY works: expiry is left to the TTL).
  The first matching playbook rule gives the actions; per finding they are emitted in apply
  order: policies, then revokes, then notifications. Returns the records that are new or whose
  state changed (an Update of an incident whose actions exist returns nothing: dedup by
  incident uid + kind + target, which is what ``action_id`` is derived from).
* Rails, in order: category (operational/context never remediated), kill switch, protected
  identities/namespaces, rendering, pairing (a revoke needs its time-boxed DENY: one is added
  when the rule has none, and it lasts at least the credential lifetime), budgets (a finding's
  remediation actions are admitted together or not at all), then approval: ``mode: approval``,
  ``require_approval`` rules, and a blast radius above ``max_blast_radius_edges`` (or unknown)
  leave an action ``proposed`` with signed links. A suppressed action is recorded once per rail.
* States: dry run -> ``proposed`` (simulated: it still expires, and ``tick`` reports the
  restore with ``dry_run: true``, so replays show whole lifecycles); auto -> ``approved``
  (cleared for the delivery stage, which calls ``mark_applied``); approval -> ``proposed`` until
  ``decide`` (approving a revoke approves its DENY; denying a DENY denies its revoke), or
  ``denied`` when the links expire. Approval restarts the TTL clock.
* ``tick(now_ts)`` returns ``Restore`` records for live actions past ``expires_ts`` (state ->
  ``restored``) and expires stale approvals. Restores run even with the kill switch on.
* ``get_state``/``set_state`` round-trip through JSON. Times are event time (epoch s) except
  approval link expiry, which the HTTP handler checks against its own clock.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from detector.anomalies import FINDING_TYPES, SECURITY
from detector.remediation import blast, rails
from detector.remediation.actions import (
    APPLIED,
    APPROVED,
    DENIED,
    LIVE,
    PROPOSED,
    RESTORED,
    SUPPRESSED,
    action_id,
    restore_record,
)
from detector.remediation.credentials import render_revoke
from detector.remediation.playbooks import (
    NEVER_REMEDIATED,
    NOTIFY,
    REMEDIATION_KINDS,
    REVOKE,
    TIGHTEN,
    Notify,
    ResponseConfig,
    RevokeCredential,
    TightenPolicy,
    select_rule,
)
from detector.remediation.policies import (
    Operation,
    Stamp,
    legitimate_sources,
    operation_from_finding,
    render_cilium_deny,
    render_istio_deny,
    render_networkpolicy,
    rfc3339,
)
from detector.remediation.targets import Target

_STATE_VERSION: Final = 1
_RETAIN_S: Final = 2 * 86_400.0  # finished records kept this long for dedup and audit
_ACTABLE: Final = frozenset({1, 2})  # OCSF activity_id Create, Update


@dataclass
class _Candidate:
    rec: dict[str, Any]
    skip: bool = False  # an action with this id already exists (dedup)
    pair: list[_Candidate] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.rec["kind"])

    @property
    def suppressed(self) -> bool:
        return self.rec.get("suppressed_by") is not None

    def suppress(self, rail: str, why: str) -> None:
        if not self.suppressed:
            self.rec["suppressed_by"] = rail
            self.rec["suppressed_reason"] = why


class Responder:
    def __init__(
        self, config: ResponseConfig | None = None, baseline: blast.EdgeBaseline | None = None
    ) -> None:
        self.cfg = config or ResponseConfig()
        self.baseline = baseline
        self.actions: dict[str, dict[str, Any]] = {}
        self.budget = rails.Budget(self.cfg.budgets)
        self.killed = False
        self.stats: Counter[str] = Counter()

    # -- public API ----------------------------------------------------------------------------

    def kill(self, on: bool = True) -> None:
        """Runtime kill switch (kept in checkpoints)."""
        self.killed = on

    def on_findings(
        self, findings: Iterable[Mapping[str, Any]], now_ts: float
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.cfg.enabled:
            return out
        for f in findings:
            if f.get("activity_id") in _ACTABLE:
                out.extend(self._respond(f, now_ts))
        return out

    def tick(self, now_ts: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for aid in sorted(self.actions):
            rec = self.actions[aid]
            simulated = rec.get("dry_run") and rec["state"] == PROPOSED
            if rec["kind"] != NOTIFY and (rec["state"] in LIVE or simulated):
                if now_ts >= rec["expires_ts"]:
                    self._move(rec, RESTORED, now_ts)
                    if rec.get("objects") or rec.get("restore") or simulated:
                        out.append(restore_record(rec, now_ts))
                        self.stats["restores"] += 1
            elif rec["state"] == PROPOSED and not rec.get("dry_run"):
                exp = (rec.get("approval") or {}).get("expires_ts")
                if exp is not None and now_ts > exp:
                    self._move(rec, DENIED, now_ts, note="approval links expired")
        for aid in [a for a, r in self.actions.items() if self._finished(r, now_ts)]:
            del self.actions[aid]
        return out

    def decide(self, action_id_: str, decision: str, now_ts: float) -> dict[str, Any] | None:
        """An approval decision (already verified by the caller); the updated record."""
        rec = self.actions.get(action_id_)
        if rec is None:
            return None
        if rec["state"] != PROPOSED or rec.get("dry_run"):
            return rec  # decided before, or a dry run (which never applies anything)
        if decision == rails.APPROVE:
            self._approve(rec, now_ts)
            if rec["kind"] == REVOKE:
                for pid in rec.get("pair", []):
                    p = self.actions.get(pid)
                    if p is not None and p["state"] == PROPOSED:
                        self._approve(p, now_ts)
        else:
            self._move(rec, DENIED, now_ts, note="denied by approver")
            if rec["kind"] == TIGHTEN:
                for pid in rec.get("pair", []):  # a revoke without its DENY is not allowed
                    p = self.actions.get(pid)
                    if p is not None and p["state"] == PROPOSED:
                        self._move(p, DENIED, now_ts, note="its paired DENY was denied")
        return rec

    def mark_applied(self, action_id_: str, now_ts: float) -> dict[str, Any] | None:
        rec = self.actions.get(action_id_)
        if rec is not None and rec["state"] == APPROVED:
            self._move(rec, APPLIED, now_ts)
        return rec

    def get_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "actions": copy.deepcopy(self.actions),
            "budget": self.budget.get_state(),
            "killed": self.killed,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported responder state version {state.get('version')!r}")
        self.actions = copy.deepcopy(dict(state["actions"]))
        self.budget.set_state(list(state["budget"]))
        self.killed = bool(state["killed"])

    # -- internals -----------------------------------------------------------------------------

    def _edges(self) -> Mapping[str, Sequence[float]] | None:
        return self.baseline.edges_ if self.baseline is not None else None

    @staticmethod
    def _finished(rec: Mapping[str, Any], now: float) -> bool:
        if rec["state"] not in (RESTORED, DENIED, SUPPRESSED):
            return False
        return now - float(rec["history"][-1][1]) > _RETAIN_S

    def _move(self, rec: dict[str, Any], state: str, now: float, note: str = "") -> None:
        rec["state"] = state
        rec["history"].append([state, now] + ([note] if note else []))

    def _approve(self, rec: dict[str, Any], now: float) -> None:
        # the TTL counts from approval: a DENY must still cover the credential's lifetime
        rec["expires_ts"] = now + float(rec["ttl_s"])
        rec["expires_at"] = rfc3339(rec["expires_ts"])
        for obj in rec.get("objects", []):
            obj["metadata"]["annotations"]["detector/expires-at"] = rec["expires_at"]
        self._move(rec, APPROVED, now, note="approved")

    def _respond(self, f: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
        un = f.get("unmapped", {}) or {}
        ftype = str(un.get("finding_type") or f.get("metadata", {}).get("event_code", ""))
        category = str(un.get("category") or FINDING_TYPES.get(ftype, (SECURITY, ""))[0])
        if FINDING_TYPES.get(ftype, (category, ""))[0] in NEVER_REMEDIATED:
            category = FINDING_TYPES[ftype][0]  # the stricter of the two wins
        sev = int(f.get("severity_id", 0))
        conf = int(f.get("confidence_score", 0))
        rule = select_rule(list(self.cfg.playbooks), ftype, category, sev, conf)
        if rule is None:
            return []
        info = f.get("finding_info", {}) or {}
        incident = str(f.get("metadata", {}).get("correlation_uid") or info.get("uid"))
        target = Target.from_finding(f)
        reason = {
            "finding_uid": info.get("uid"),
            "finding_type": ftype,
            "category": category,
            "title": info.get("title"),
            "risk": un.get("risk"),
            "risk_score": f.get("risk_score"),
            "severity_id": sev,
            "confidence_score": conf,
            "playbook": rule.name,
        }
        specs = list(rule.actions)
        tightens: list[TightenPolicy] = [s for s in specs if isinstance(s, TightenPolicy)]
        revokes = [s for s in specs if isinstance(s, RevokeCredential)]
        notifies = [s for s in specs if isinstance(s, Notify)]

        revoke_cands = [self._revoke(s, target, f, incident, reason, now) for s in revokes]
        lifetimes = [float(c.rec["ttl_s"]) for c in revoke_cands if not c.suppressed]
        pair_ttl = max(lifetimes, default=0.0)
        if revoke_cands and not tightens:
            tightens = [TightenPolicy(flavour=self.cfg.pair_flavour)]  # the mandatory DENY
        op = operation_from_finding(f)
        deny_cands = [
            self._tighten(s, target, op, incident, reason, now, pair_ttl) for s in tightens
        ]
        for r in revoke_cands:
            r.pair = deny_cands
            r.rec["pair"] = [d.rec["action_id"] for d in deny_cands]
            for d in deny_cands:
                d.rec.setdefault("pair", []).append(r.rec["action_id"])
        rem = deny_cands + revoke_cands
        notify_cands = [
            self._notify(s, target, incident, reason, now, [c.rec["action_id"] for c in rem])
            for s in notifies
        ]
        for c in rem + notify_cands:
            old = self.actions.get(c.rec["action_id"])
            c.skip = old is not None and old["state"] != SUPPRESSED

        self._rails(rem, category, target, now)
        self._approval_rail(rem, rule.require_approval, now)
        return self._commit(rem + notify_cands, now)

    def _rails(self, rem: list[_Candidate], category: str, target: Target, now: float) -> None:
        if category in NEVER_REMEDIATED:
            for c in rem:
                c.suppress(rails.CATEGORY, f"{category} findings are never remediated")
        elif rails.kill_switch_on(self.cfg, self.killed):
            for c in rem:
                c.suppress(rails.KILL_SWITCH, "kill switch is on")
        elif why := rails.protected_reason(target, self.cfg.protected):
            for c in rem:
                c.suppress(rails.PROTECTED, why)
        for c in rem:
            if (
                c.kind == REVOKE
                and not c.suppressed
                and not (c.pair and all(map(self._deny_ok, c.pair)))
            ):
                c.suppress(rails.PAIRING, "its time-boxed DENY could not be admitted")
        new = [c for c in rem if not c.skip and not c.suppressed]
        if new:
            who = target.principal or target.src_ip or "unknown"
            cluster = target.dst_cluster or target.src_cluster or "unknown"
            over = self.budget.admits(now, who, cluster, len(new))
            if over:
                for c in new:
                    c.suppress(rails.BUDGET, over)
            else:
                self.budget.spend(now, who, cluster, len(new))

    def _deny_ok(self, d: _Candidate) -> bool:
        if d.skip:  # exists already: fine while it is pending or in force
            return self.actions[d.rec["action_id"]]["state"] in (PROPOSED, APPROVED, APPLIED)
        return not d.suppressed

    def _approval_rail(self, rem: list[_Candidate], rule_requires: bool, now: float) -> None:
        limit = self.cfg.max_blast_radius_edges
        for c in rem:
            why = []
            if self.cfg.mode == "approval":
                why.append("approval mode")
            if rule_requires:
                why.append("playbook requires approval")
            count = c.rec["blast_radius"].get("count")
            if count is None:
                why.append("blast radius unknown (no baseline)")
            elif count > limit:
                why.append(f"blast radius {count} learned edges > {limit}")
            if why:
                c.rec["requires_approval"] = True
                c.rec["approval_reason"] = "; ".join(why)
        # a revoke and its DENY are decided together
        for c in rem:
            if c.kind == REVOKE and any(p.rec["requires_approval"] for p in [c, *c.pair]):
                for p in [c, *c.pair]:
                    if not p.rec["requires_approval"]:
                        p.rec["requires_approval"] = True
                        p.rec["approval_reason"] = "paired with an action that needs approval"

    def _commit(self, cands: list[_Candidate], now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        secret = self.cfg.approval.secret
        for c in cands:
            if c.skip:
                self.stats["deduplicated"] += 1
                continue
            rec = c.rec
            aid = rec["action_id"]
            if c.suppressed:
                old = self.actions.get(aid)
                if old is not None and old.get("suppressed_by") == rec["suppressed_by"]:
                    continue  # already recorded as suppressed by this rail
                state = SUPPRESSED
                self.stats[f"suppressed_{rec['suppressed_by']}"] += 1
            elif self.cfg.mode == "dry_run":
                state = PROPOSED
            elif rec["requires_approval"]:
                state = PROPOSED
                if secret:
                    rec["approval"] = rails.approval_links(
                        self.cfg.approval.base_url, secret, aid, now, self.cfg.approval.link_ttl_s
                    )
                else:
                    rec["notes"].append("no approval secret configured: links not issued")
            else:
                state = APPROVED
            rec["state"] = state
            rec["history"] = [[state, now]]
            self.actions[aid] = rec
            self.stats[state] += 1
            out.append(copy.deepcopy(rec))
        return out

    def _base(
        self,
        kind: str,
        key: str,
        target: Target,
        incident: str,
        reason: dict[str, Any],
        now: float,
        ttl: float,
    ) -> dict[str, Any]:
        return {
            "action_id": action_id(incident, kind, key),
            "kind": kind,
            "target_key": key,
            "state": PROPOSED,
            "suppressed_by": None,
            "mode": self.cfg.mode,
            "dry_run": self.cfg.mode == "dry_run",
            "incident_uid": incident,
            "target": target.to_dict(),
            "ttl_s": ttl,
            "created_ts": now,
            "expires_ts": now + ttl,
            "expires_at": rfc3339(now + ttl),
            "requires_approval": False,
            "reason": dict(reason),
            "notes": [],
            "history": [],
        }

    def _tighten(
        self,
        spec: TightenPolicy,
        target: Target,
        op: Operation,
        incident: str,
        reason: dict[str, Any],
        now: float,
        pair_ttl: float,
    ) -> _Candidate:
        ttl = max(spec.ttl_s or self.cfg.default_ttl_s, pair_ttl)
        who = target.principal or target.src_ip
        key = (
            f"{spec.flavour}:{who}@{target.src_cluster}->"
            f"{target.dst_service}.{target.dst_namespace}@{target.dst_cluster}"
        )
        rec = self._base(TIGHTEN, key, target, incident, reason, now, ttl)
        rec["flavour"] = spec.flavour
        rec["clusters"] = [target.dst_cluster] if target.dst_cluster else ["*"]
        stamp = Stamp(rec["action_id"], incident, str(reason["finding_uid"]), now + ttl)
        rc = self.cfg.rendering
        edges = self._edges()
        if spec.flavour == "istio":
            r = render_istio_deny(target, stamp, op, rc)
            scope = blast.PRINCIPAL_TO_SERVICE if target.dst_service else blast.PRINCIPAL_EVERYWHERE
            rec["blast_radius"] = blast.blast_radius(edges, scope, target)
        elif spec.flavour == "cilium":
            r = render_cilium_deny(target, stamp, op, rc)
            scope = blast.CALLER_TO_SERVICE if target.dst_service else blast.CALLER_EVERYWHERE
            rec["blast_radius"] = blast.blast_radius(edges, scope, target)
        else:
            into = blast.edges_into(edges, target)
            r = render_networkpolicy(target, stamp, legitimate_sources(into, target), rc)
            kept = set(r.kept_sources)
            cut = [k for k in into if "{}@{}".format(*k.rsplit("|", 4)[:2]) not in kept]
            rec["blast_radius"] = blast.blast_radius(edges, blast.EXPLICIT, target, cut)
        rec["objects"] = [r.obj] if r.obj is not None else []
        rec["notes"].extend(r.notes)
        if pair_ttl:
            rec["notes"].append(f"paired with a revoke: lasts at least {pair_ttl:g} s")
        c = _Candidate(rec)
        if r.obj is None:
            c.suppress(rails.UNRENDERABLE, r.reason)
        return c

    def _revoke(
        self,
        spec: RevokeCredential,
        target: Target,
        f: Mapping[str, Any],
        incident: str,
        reason: dict[str, Any],
        now: float,
    ) -> _Candidate:
        plan = render_revoke(spec.backend, target, f, self.cfg.lifetimes, spec.vault_operation)
        key = plan.target_key or f"{spec.backend}:{target.principal}"
        ttl = plan.lifetime_s or self.cfg.default_ttl_s
        rec = self._base(REVOKE, key, target, incident, reason, now, ttl)
        rec["backend"] = spec.backend
        rec["request"] = plan.request
        rec["restore"] = plan.restore
        rec["clusters"] = list((plan.request or {}).get("clusters", []))
        rec["blast_radius"] = blast.blast_radius(self._edges(), blast.PRINCIPAL_EVERYWHERE, target)
        c = _Candidate(rec)
        if plan.request is None:
            c.suppress(rails.UNRENDERABLE, plan.reason)
        return c

    def _notify(
        self,
        spec: Notify,
        target: Target,
        incident: str,
        reason: dict[str, Any],
        now: float,
        related: list[str],
    ) -> _Candidate:
        rec = self._base(NOTIFY, spec.channel, target, incident, reason, now, 0.0)
        rec["channel"] = spec.channel
        rec["related_actions"] = related
        rec["blast_radius"] = {"scope": "none", "count": 0, "windows": 0, "edges": []}
        return _Candidate(rec)


__all__ = ["REMEDIATION_KINDS", "Responder"]
