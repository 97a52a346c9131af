"""Action records and their OCSF 1.8.0 Remediation Activity (class 7001) form.

Contract:
* An action record is a JSON-able dict (written one per line to ``actions.jsonl`` and handed to
  the delivery stage). Keys: ``action_id`` (``action_id(incident, kind, target_key)``, a uuid5:
  the same incident + kind + target always gives the same id), ``kind`` (``tighten_policy`` |
  ``revoke_credential`` | ``notify``), ``state`` (``STATES``), ``suppressed_by`` (a rail name
  when suppressed), ``target`` (principal, src/dst cluster, service, namespace), ``objects``
  (rendered manifests) or ``request`` (a revoke), ``restore`` (what undoes it), ``ttl_s``,
  ``created_ts``/``expires_ts`` (epoch s, event time) and ``expires_at`` (RFC 3339),
  ``blast_radius``, ``requires_approval`` (+ ``approval`` links), ``reason`` (finding uid, type,
  category, risk, severity, confidence, playbook rule), ``incident_uid``, ``pair`` (revoke <->
  its DENY), ``dry_run``, ``notes`` and ``history`` ([state, ts] transitions).
* ``restore_record(action, now)`` is the ``Restore`` delivery for an expired action: the objects
  to delete and/or the restore request, with a deterministic ``restore_id``.
* ``to_ocsf(record)``: ``activity_id`` 1 Isolate (policy), 2 Evict (revoke), 3 Restore, 99
  Other (notify); ``type_uid = 700100 + activity_id``; ``command_uid`` = action id;
  ``time`` in ms; D3FEND countermeasures; ``status_id`` 1 Success only once applied/restored,
  99 Other with ``status`` naming the state otherwise (5 Unsupported when unrenderable);
  everything else under ``unmapped``. It validates against
  ``jsonschema/1.8.0/remediation_activity.schema.json`` (no profiles).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from typing import Any, Final

from detector import __version__
from detector.findings import SEVERITY_NAMES

PROPOSED: Final = "proposed"
APPROVED: Final = "approved"
APPLIED: Final = "applied"
RESTORED: Final = "restored"
DENIED: Final = "denied"
SUPPRESSED: Final = "suppressed"
STATES: Final = (PROPOSED, APPROVED, APPLIED, RESTORED, DENIED, SUPPRESSED)
LIVE: Final = frozenset({APPROVED, APPLIED})  # in force (or cleared to be): restored on expiry

_NS: Final = uuid.UUID("1c7e2f4a-9b3d-5a61-8e0f-6d2c4b8a9e17")

OCSF_VERSION: Final = "1.8.0"
CLASS_UID: Final = 7001
CATEGORY_UID: Final = 7
ISOLATE, EVICT, RESTORE, OTHER = 1, 2, 3, 99
ACTIVITY_NAMES: Final = {ISOLATE: "Isolate", EVICT: "Evict", RESTORE: "Restore", OTHER: "Other"}
_COUNTERMEASURES: Final[dict[int, dict[str, Any]]] = {
    ISOLATE: {
        "d3f_tactic": {"name": "Isolate", "uid": "d3f:Isolate"},
        "d3f_technique": {"name": "Inbound Traffic Filtering", "uid": "D3-ITF"},
    },
    EVICT: {
        "d3f_tactic": {"name": "Evict", "uid": "d3f:Evict"},
        "d3f_technique": {"name": "Credential Revoking", "uid": "D3-CR"},
    },
    RESTORE: {"d3f_tactic": {"name": "Restore", "uid": "d3f:Restore"}},
}


def action_id(incident_uid: str, kind: str, target_key: str) -> str:
    return str(uuid.uuid5(_NS, f"{incident_uid}|{kind}|{target_key}"))


def object_ref(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta.get("name")}
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    return ref


def ref_text(ref: Mapping[str, Any]) -> str:
    ns = f"{ref['namespace']}/" if ref.get("namespace") else ""
    return f"{ref['apiVersion']}/{ref['kind']}/{ns}{ref['name']}"


def restore_record(action: Mapping[str, Any], now_ts: float) -> dict[str, Any]:
    refs = [object_ref(o) for o in action.get("objects", [])]
    return {
        "restore_id": str(uuid.uuid5(_NS, f"restore|{action['action_id']}")),
        "action_id": action["action_id"],
        "kind": "restore",
        "of_kind": action["kind"],
        "incident_uid": action.get("incident_uid"),
        "target": copy.deepcopy(action.get("target")),
        "delete_objects": refs,
        "request": copy.deepcopy(action.get("restore")),
        "ts": now_ts,
        "expired_ts": action.get("expires_ts"),
        "dry_run": bool(action.get("dry_run")),
        "clusters": action.get("clusters", []),
    }


def _ms(ts: float) -> int:
    return round(float(ts) * 1000.0)


def _activity(kind: str) -> int:
    return {"tighten_policy": ISOLATE, "revoke_credential": EVICT, "restore": RESTORE}.get(
        kind, OTHER
    )


def describe(rec: Mapping[str, Any]) -> str:
    t = rec.get("target") or {}
    who = t.get("principal") or t.get("src_ip") or "unknown caller"
    if t.get("src_cluster"):
        who += f"@{t['src_cluster']}"
    dst = t.get("dst_service")
    dst_text = f"{dst}.{t.get('dst_namespace')}@{t.get('dst_cluster')}" if dst else "every service"
    kind = rec["kind"]
    if kind == "tighten_policy":
        return f"{rec.get('flavour')} policy denying {who} -> {dst_text}"
    if kind == "revoke_credential":
        return f"revoke the {rec.get('backend')} credential of {who}"
    if kind == "restore":
        return f"roll back {rec.get('of_kind')} {rec.get('action_id')} for {who}"
    return f"notify {rec.get('channel')} about {who} -> {dst_text}"


def to_ocsf(rec: Mapping[str, Any]) -> dict[str, Any]:
    """OCSF Remediation Activity for an action record or a restore record."""
    is_restore = rec.get("kind") == "restore"
    activity = _activity(str(rec["kind"]))
    reason = rec.get("reason") or {}
    sev = int(reason.get("severity_id", 1)) if not is_restore else 1
    state = "restored" if is_restore else str(rec.get("state"))
    if state in (APPLIED, RESTORED):
        status_id, status = 1, "Success"
    elif rec.get("suppressed_by") == "unrenderable":
        status_id, status = 5, "Unsupported"
    else:
        status_id, status = 99, state.capitalize()
    uid_key = rec.get("restore_id") or rec["action_id"]
    ts = rec["ts"] if is_restore else rec["created_ts"]
    event: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "Remediation Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Remediation",
        "activity_id": activity,
        "activity_name": ACTIVITY_NAMES[activity],
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"Remediation Activity: {ACTIVITY_NAMES[activity]}",
        "time": _ms(ts),
        "severity_id": sev,
        "severity": SEVERITY_NAMES.get(sev, "Unknown"),
        "command_uid": str(rec["action_id"]),
        "status_id": status_id,
        "status": status,
        "message": ("[dry run] " if rec.get("dry_run") else "") + describe(rec),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": "detector",
                "vendor_name": "detector project",
                "version": __version__,
            },
            "uid": str(uuid.uuid5(_NS, f"ocsf|{uid_key}|{state}")),
        },
        "unmapped": {k: copy.deepcopy(v) for k, v in rec.items()},
    }
    if rec.get("incident_uid"):
        event["metadata"]["correlation_uid"] = str(rec["incident_uid"])
    if rec.get("suppressed_by"):
        event["status_detail"] = (
            f"suppressed by {rec['suppressed_by']}: {rec.get('suppressed_reason', '')}"
        )
    if activity in _COUNTERMEASURES:
        event["countermeasures"] = [copy.deepcopy(_COUNTERMEASURES[activity])]
    if not is_restore and rec.get("expires_ts") is not None:
        event["start_time"] = _ms(rec["created_ts"])
        event["end_time"] = _ms(rec["expires_ts"])
    refs = [ref_text(object_ref(o)) for o in rec.get("objects", [])]
    refs += [ref_text(r) for r in rec.get("delete_objects", [])]
    remediation: dict[str, Any] = {"desc": describe(rec)}
    if refs:
        remediation["references"] = refs
    event["remediation"] = remediation
    return event
