"""Credential revocation requests: exactly what to revoke, for Vault, Kubernetes and SPIRE.

Pure functions: the request is data for the delivery stage (which holds the API clients); this
module never talks to a backend.

Contract:
* ``render_revoke(backend, target, finding, lifetimes, vault_operation)`` returns a
  ``RevokePlan``: ``request`` (None with ``reason`` when the evidence does not name anything
  revocable: never a guess), ``restore`` (the request that undoes it, None when a revoke cannot
  be undone) and ``lifetime_s``: how long credentials already issued stay valid. The responder
  pairs every revoke with a DENY lasting at least ``lifetime_s``, because revoking stops NEW
  credentials while issued SVIDs and bound tokens stay valid until they expire.
* Vault (HTTP API): ``PUT /v1/sys/leases/revoke {"lease_id"}``, ``POST
  /v1/auth/token/revoke-accessor {"accessor"}``, or ``POST /v1/identity/entity/id/<id>
  {"disabled": true}`` (restored with ``false``); from evidence keys ``vault_lease_id``,
  ``vault_token_accessor``, ``vault_entity_id`` (or without the ``vault_`` prefix).
* Kubernetes: delete the object a bound service-account token is bound to; the API server then
  rejects every token bound to it. The Pod (``pod_name``/``pod_uid`` in the evidence, deleted
  with a UID precondition when known) or a legacy token Secret (``secret_name``); otherwise
  every Pod of the service account (``fieldSelector spec.serviceAccountName=<sa>``), which
  their controllers recreate with fresh tokens. The cluster is where the identity lives: for a
  credential replay the baseline's ``known_clusters``, not the cluster it was replayed from.
* SPIRE (``spire.api.server.entry.v1.Entry``): the entry id is not in telemetry, so
  ``ListEntries`` filtered ``by_spiffe_id`` then ``BatchDeleteEntry`` of the ids found; the
  executor keeps the listed entries so the restore (``BatchCreateEntry``) can recreate them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detector.remediation.playbooks import Backend, LifetimeConfig
from detector.remediation.targets import Target

SPIRE_ENTRY_API = "spire.api.server.entry.v1.Entry"


@dataclass(frozen=True, slots=True)
class RevokePlan:
    request: dict[str, Any] | None
    restore: dict[str, Any] | None = None
    lifetime_s: float = 0.0
    reason: str = ""  # why there is no request
    target_key: str = ""  # what is revoked, for dedup keys


def _evidence(finding: Mapping[str, Any]) -> dict[str, Any]:
    un = finding.get("unmapped", {}) or {}
    ev = un.get("evidence", {}) or {}
    return dict(ev) if isinstance(ev, Mapping) else {}


def _first(ev: Mapping[str, Any], *keys: str) -> str | None:
    for k in keys:
        v = ev.get(k)
        if isinstance(v, str) and v:
            return v
    return None


def _home_clusters(finding: Mapping[str, Any], target: Target) -> list[str]:
    un = finding.get("unmapped", {}) or {}
    known = (un.get("model_baseline", {}) or {}).get("known_clusters")
    if un.get("finding_type") == "credential_replay" and isinstance(known, list) and known:
        return sorted(str(c) for c in known)
    return [target.src_cluster] if target.src_cluster else []


def _vault(
    target: Target, ev: Mapping[str, Any], op: str | None, life: LifetimeConfig
) -> RevokePlan:
    lease = _first(ev, "vault_lease_id", "lease_id")
    accessor = _first(ev, "vault_token_accessor", "token_accessor", "accessor")
    entity = _first(ev, "vault_entity_id", "entity_id")
    choice = op or (
        "revoke_lease"
        if lease
        else "revoke_accessor"
        if accessor
        else "disable_entity"
        if entity
        else None
    )
    base: dict[str, Any] = {"backend": "vault", "principal": target.principal}
    if choice == "revoke_lease" and lease:
        req = {
            **base,
            "operation": "revoke_lease",
            "method": "PUT",
            "path": "/v1/sys/leases/revoke",
            "body": {"lease_id": lease},
        }
        return RevokePlan(req, None, life.vault_token_s, target_key=f"vault:lease:{lease}")
    if choice == "revoke_accessor" and accessor:
        req = {
            **base,
            "operation": "revoke_accessor",
            "method": "POST",
            "path": "/v1/auth/token/revoke-accessor",
            "body": {"accessor": accessor},
        }
        return RevokePlan(req, None, life.vault_token_s, target_key=f"vault:accessor:{accessor}")
    if choice == "disable_entity" and entity:
        path = f"/v1/identity/entity/id/{entity}"
        req = {
            **base,
            "operation": "disable_entity",
            "method": "POST",
            "path": path,
            "body": {"disabled": True},
        }
        restore = {
            **base,
            "operation": "enable_entity",
            "method": "POST",
            "path": path,
            "body": {"disabled": False},
        }
        return RevokePlan(req, restore, life.vault_token_s, target_key=f"vault:entity:{entity}")
    return RevokePlan(
        None,
        reason=f"evidence names no Vault {'credential' if op is None else op.replace('_', ' ')}",
    )


def _kubernetes(
    target: Target, finding: Mapping[str, Any], ev: Mapping[str, Any], life: LifetimeConfig
) -> RevokePlan:
    ident = target.identity
    if not ident or not ident.namespace or not ident.service_account:
        return RevokePlan(None, reason="principal is not a Kubernetes service account")
    ns, sa = ident.namespace, ident.service_account
    clusters = _home_clusters(finding, target)
    base: dict[str, Any] = {
        "backend": "kubernetes",
        "principal": target.principal,
        "clusters": clusters,
        "namespace": ns,
        "service_account": sa,
        "operation": "delete",
        "apiVersion": "v1",
    }
    # an issued mesh certificate outlives the token it was obtained with
    lifetime = max(life.bound_token_s, life.svid_s)
    pod = _first(ev, "pod_name", "src_pod", "pod")
    secret = _first(ev, "secret_name", "token_secret")
    if pod:
        req = {**base, "kind": "Pod", "name": pod}
        uid = _first(ev, "pod_uid")
        if uid:
            req["preconditions"] = {"uid": uid}  # never delete a same-named successor
        key = f"k8s:pod:{ns}/{pod}"
    elif secret:
        req = {**base, "kind": "Secret", "name": secret}
        key = f"k8s:secret:{ns}/{secret}"
    else:
        req = {**base, "kind": "Pod", "fieldSelector": f"spec.serviceAccountName={sa}"}
        key = f"k8s:sa:{ns}/{sa}"
    return RevokePlan(req, None, lifetime, target_key=f"{key}@{','.join(clusters)}")


def _spire(target: Target, life: LifetimeConfig) -> RevokePlan:
    ident = target.identity
    if not ident or ident.form != "spiffe" or not ident.trust_domain:
        return RevokePlan(None, reason="principal is not a SPIFFE id")
    path = ident.raw.removeprefix(f"spiffe://{ident.trust_domain}")
    req = {
        "backend": "spire",
        "principal": target.principal,
        "api": SPIRE_ENTRY_API,
        "spiffe_id": ident.raw,
        "steps": [
            {
                "rpc": "ListEntries",
                "request": {
                    "filter": {"by_spiffe_id": {"trust_domain": ident.trust_domain, "path": path}}
                },
            },
            {"rpc": "BatchDeleteEntry", "request": {"ids": "<ids listed by step 0>"}},
        ],
        "keep_deleted_entries": True,  # the restore recreates them
    }
    restore = {
        "backend": "spire",
        "api": SPIRE_ENTRY_API,
        "spiffe_id": ident.raw,
        "steps": [
            {"rpc": "BatchCreateEntry", "request": {"entries": "<entries deleted when applied>"}}
        ],
    }
    return RevokePlan(req, restore, life.svid_s, target_key=f"spire:{ident.raw}")


def render_revoke(
    backend: Backend,
    target: Target,
    finding: Mapping[str, Any],
    lifetimes: LifetimeConfig,
    vault_operation: str | None = None,
) -> RevokePlan:
    ev = _evidence(finding)
    if backend == "vault":
        return _vault(target, ev, vault_operation, lifetimes)
    if backend == "kubernetes":
        return _kubernetes(target, finding, ev, lifetimes)
    return _spire(target, lifetimes)
