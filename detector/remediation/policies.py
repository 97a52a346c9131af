"""Policy rendering: Istio AuthorizationPolicy DENY, CiliumNetworkPolicy ingressDeny, NetworkPolicy.

Pure, deterministic functions: the same target, action id and times give byte-identical objects.

Contract:
* Every object carries ``metadata.name`` = ``object_name(action_id)`` (``detector-deny-<hash8>``,
  the same for the same incident + action), the namespace of the destination, labels
  ``app.kubernetes.io/managed-by: mesh-detector`` and ``detector/incident: <incident uid>``, and
  annotations ``detector/expires-at`` (RFC 3339 UTC), ``detector/finding-uid`` and
  ``detector/action-id``: a janitor can find and expire objects without the detector's state.
* ``render_istio_deny``: ``security.istio.io/v1`` AuthorizationPolicy, ``action: DENY``, one
  rule ``from.source.principals: [<SPIFFE id without spiffe://>]`` and, when the finding's
  evidence names them, ``to.operation`` ports/methods/paths. With a destination service it sits
  in the destination namespace with ``selector.matchLabels {<workload_label>: <service>}``;
  without one (credential replay: every destination) it sits in the Istio root namespace with no
  selector, which Istio applies mesh-wide. Istio cannot match the caller's cluster, so this DENY
  hits the principal from every cluster (the blast radius says so).
* ``render_cilium_deny``: ``cilium.io/v2`` CiliumNetworkPolicy with ``ingressDeny.fromEndpoints``
  matching the caller's namespace, service-account label and
  ``k8s:io.cilium.k8s.policy.cluster: <src cluster>``, ``endpointSelector`` on the destination;
  a CiliumClusterwideNetworkPolicy selecting every endpoint when there is no destination.
  ``enableDefaultDeny`` is set to false both ways: Cilium otherwise puts every endpoint selected
  by a policy with ingress(Deny) rules into default-deny, which would cut ALL other callers.
* ``render_networkpolicy``: NetworkPolicy only allows, so "drop the offender" means: allow the
  destination's learned legitimate sources (their namespaces; other clusters via the configured
  east-west gateway peers) and nothing else. When the offender cannot be told apart from a kept
  source at L3 (same namespace in the same cluster) nothing is rendered (``Rendered.reason``).
  NetworkPolicies add up: another policy that already allows the offender defeats this one.
* A function that cannot express the target returns ``Rendered(None, reason=...)``; it never
  renders a broader policy than asked.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from detector.remediation.playbooks import RenderConfig
from detector.remediation.targets import Target, istio_principal, parse_principal

MANAGED_BY = "mesh-detector"
CILIUM_CLUSTER_LABEL = "k8s:io.cilium.k8s.policy.cluster"
CILIUM_SA_LABEL = "k8s:io.cilium.k8s.policy.serviceaccount"
CILIUM_NS_LABEL = "k8s:io.kubernetes.pod.namespace"
NS_NAME_LABEL = "kubernetes.io/metadata.name"
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


@dataclass(frozen=True, slots=True)
class Rendered:
    obj: dict[str, Any] | None
    reason: str = ""  # why nothing was rendered
    notes: tuple[str, ...] = ()  # limitations a reviewer should know
    kept_sources: tuple[str, ...] = ()  # NetworkPolicy: learned callers it still allows


@dataclass(frozen=True, slots=True)
class Stamp:
    """What every rendered object is stamped with."""

    action_id: str
    incident_uid: str
    finding_uid: str
    expires_at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Operation:
    """What the finding saw on the edge (empty: the whole edge)."""

    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())


def object_name(action_id: str, prefix: str = "detector-deny") -> str:
    return f"{prefix}-{hashlib.sha256(action_id.encode()).hexdigest()[:8]}"


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _metadata(name: str, namespace: str | None, stamp: Stamp) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "detector/incident": stamp.incident_uid,
    }
    meta["annotations"] = {
        "detector/expires-at": rfc3339(stamp.expires_at),
        "detector/finding-uid": stamp.finding_uid,
        "detector/action-id": stamp.action_id,
    }
    return meta


def _istio_path(route_path: str) -> str:
    """A route template (``/v1/customers/{id}``) as an Istio path: prefix match up to the
    first placeholder (``/v1/customers/*``); Istio's own templates need 1.22+."""
    i = route_path.find("{")
    return route_path if i < 0 else route_path[:i] + "*"


def _strings(v: Any) -> list[str]:
    if isinstance(v, str | int) and not isinstance(v, bool):
        return [str(v)]
    if isinstance(v, Mapping):
        return [str(k) for k in v]
    if isinstance(v, list | tuple | set | frozenset):
        return [str(x) for x in v if isinstance(x, str | int) and not isinstance(x, bool)]
    return []


def operation_from_finding(finding: Mapping[str, Any]) -> Operation:
    """Methods, paths and ports named by the finding's evidence (``unmapped.routes``,
    ``unmapped.evidence.{new_routes,routes,dst_port,dst_ports,ports}``)."""
    un = finding.get("unmapped", {}) or {}
    ev = un.get("evidence", {}) or {}
    routes = (
        _strings(un.get("routes")) + _strings(ev.get("new_routes")) + _strings(ev.get("routes"))
    )
    methods: set[str] = set()
    paths: set[str] = set()
    notes: list[str] = []
    whole_edge = False
    for r in dict.fromkeys(routes):
        parts = r.split(" ", 1)
        if len(parts) == 2 and parts[0].upper() in _METHODS:
            method, path = parts[0].upper(), parts[1].strip()
        elif r.startswith("/"):
            method, path = "", r
        else:
            continue  # not an HTTP route (e.g. a Kubernetes API verb): cannot narrow by it
        if path.endswith("{other}") or not path.startswith("/"):
            whole_edge = True  # the route overflow bucket: too many routes to list
            continue
        if method:
            methods.add(method)
        paths.add(_istio_path(path))
    if whole_edge:
        methods, paths = set(), set()
        notes.append("routes overflowed: the policy covers every route of the edge")
    ports = {p for k in ("dst_port", "dst_ports", "ports") for p in _strings(ev.get(k))}
    ports = {p for p in ports if p.isdigit() and 0 < int(p) < 65536}
    return Operation(
        tuple(sorted(methods)), tuple(sorted(paths)), tuple(sorted(ports, key=int)), tuple(notes)
    )


# -- Istio -----------------------------------------------------------------------------------


def render_istio_deny(target: Target, stamp: Stamp, op: Operation, cfg: RenderConfig) -> Rendered:
    source: dict[str, Any] = {}
    notes = list(op.notes)
    ident = target.identity
    principal = istio_principal(ident, cfg.trust_domain) if ident else None
    if principal:
        source["principals"] = [principal]
        if target.src_cluster:
            notes.append(
                f"Istio cannot match the caller's cluster: {principal} is denied from every "
                f"cluster, not only {target.src_cluster}"
            )
    elif target.src_ip:
        source["ipBlocks"] = [target.src_ip]
    else:
        return Rendered(None, reason="no SPIFFE principal or source IP to deny")
    spec: dict[str, Any] = {"action": "DENY"}
    if target.dst_service:
        if not target.dst_namespace:
            return Rendered(None, reason="destination namespace unknown")
        namespace = target.dst_namespace
        spec["selector"] = {"matchLabels": {cfg.workload_label: target.dst_service}}
    else:
        namespace = cfg.istio_root_namespace  # root namespace, no selector: mesh-wide
        notes.append("no destination: mesh-wide DENY in the Istio root namespace")
    rule: dict[str, Any] = {"from": [{"source": source}]}
    operation: dict[str, Any] = {}
    if op.ports:
        operation["ports"] = list(op.ports)
    if op.methods:
        operation["methods"] = list(op.methods)
    if op.paths:
        operation["paths"] = list(op.paths)
    if operation:
        rule["to"] = [{"operation": operation}]
    spec["rules"] = [rule]
    obj = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": _metadata(object_name(stamp.action_id), namespace, stamp),
        "spec": spec,
    }
    return Rendered(obj, notes=tuple(notes))


# -- Cilium ----------------------------------------------------------------------------------


def render_cilium_deny(target: Target, stamp: Stamp, op: Operation, cfg: RenderConfig) -> Rendered:
    notes = list(op.notes)
    ident = target.identity
    rule: dict[str, Any]
    if ident and ident.namespace and ident.service_account:
        labels = {CILIUM_NS_LABEL: ident.namespace, CILIUM_SA_LABEL: ident.service_account}
        if target.src_cluster:
            labels[CILIUM_CLUSTER_LABEL] = target.src_cluster
        else:
            notes.append("caller's cluster unknown: denied from every cluster")
        rule = {"fromEndpoints": [{"matchLabels": labels}]}
    elif target.src_ip:
        suffix = "/128" if ":" in target.src_ip else "/32"
        rule = {"fromCIDR": [target.src_ip + suffix]}
    else:
        return Rendered(None, reason="caller has no namespace/service account or source IP")
    if op.ports:
        rule["toPorts"] = [{"ports": [{"port": p, "protocol": "TCP"} for p in op.ports]}]
    if op.methods or op.paths:
        notes.append("Cilium deny rules are L3/L4 only: the whole edge is denied, not routes")
    spec: dict[str, Any] = {
        "ingressDeny": [rule],
        # without this Cilium switches the selected endpoints to default-deny ingress
        "enableDefaultDeny": {"ingress": False, "egress": False},
    }
    name = object_name(stamp.action_id)
    if target.dst_service:
        if not target.dst_namespace:
            return Rendered(None, reason="destination namespace unknown")
        spec = {
            "endpointSelector": {"matchLabels": {f"k8s:{cfg.workload_label}": target.dst_service}},
            **spec,
        }
        kind, namespace = "CiliumNetworkPolicy", target.dst_namespace
    else:
        spec = {"endpointSelector": {}, **spec}  # every endpoint of the cluster
        kind, namespace = "CiliumClusterwideNetworkPolicy", None
        notes.append("no destination: cluster-wide deny for the caller")
    spec["description"] = (
        f"detector: deny {target.principal or target.src_ip} (incident {stamp.incident_uid})"
    )
    obj = {
        "apiVersion": "cilium.io/v2",
        "kind": kind,
        "metadata": _metadata(name, namespace, stamp),
        "spec": spec,
    }
    return Rendered(obj, notes=tuple(notes))


# -- NetworkPolicy ---------------------------------------------------------------------------


def legitimate_sources(edges: Iterable[str], target: Target) -> list[tuple[str, str]]:
    """(principal, src_cluster) of the learned edges into the target's destination, without the
    offender; ``edges`` are novelty ``edges_`` keys ``p|src_cluster|dst_ns|dst_svc|dst_cluster``."""
    out: set[tuple[str, str]] = set()
    for key in edges:
        parts = key.rsplit("|", 4)
        if len(parts) != 5:
            continue
        p, sc, ns, svc, dc = parts
        if svc != target.dst_service or ns != target.dst_namespace:
            continue
        if target.dst_cluster and dc != target.dst_cluster:
            continue
        if p == target.principal and sc == target.src_cluster:
            continue
        out.add((p, sc))
    return sorted(out)


def render_networkpolicy(
    target: Target,
    stamp: Stamp,
    legit: list[tuple[str, str]],
    cfg: RenderConfig,
) -> Rendered:
    if not target.dst_service or not target.dst_namespace:
        return Rendered(None, reason="NetworkPolicy needs a destination service and namespace")
    dst_cluster = target.dst_cluster
    offender_local = target.src_cluster is None or target.src_cluster == dst_cluster
    ident = target.identity
    offender_ns = ident.namespace if ident else None
    keep_ns: set[str] = set()
    remote: list[str] = []
    notes: list[str] = [
        "NetworkPolicies add up: one that already allows the offender defeats this one"
    ]
    kept: list[str] = []
    for p, sc in legit:
        pid = parse_principal(p)
        if dst_cluster is not None and sc != dst_cluster:
            remote.append(f"{p}@{sc}")
        elif pid.namespace:
            keep_ns.add(pid.namespace)
            kept.append(f"{p}@{sc}")
        else:
            notes.append(f"{p}@{sc}: no namespace known, not kept")
    if offender_local:
        if offender_ns is None:
            return Rendered(None, reason="offender's namespace unknown: cannot be excluded")
        if offender_ns in keep_ns:
            return Rendered(
                None,
                reason=(
                    f"offender shares namespace {offender_ns} with legitimate callers: "
                    "NetworkPolicy cannot tell service accounts apart"
                ),
            )
    peers: list[dict[str, Any]] = [
        {"namespaceSelector": {"matchLabels": {NS_NAME_LABEL: ns}}} for ns in sorted(keep_ns)
    ]
    if remote:
        if offender_local:
            peers.extend(dict(p) for p in cfg.remote_peers)
            kept.extend(remote)
        else:
            notes.append(
                "offender comes from another cluster through the same gateway as "
                f"{len(remote)} legitimate remote caller(s): they are cut too"
            )
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {cfg.workload_label: target.dst_service}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": peers}] if peers else [],
    }
    obj = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(
            object_name(stamp.action_id, "detector-narrow"), target.dst_namespace, stamp
        ),
        "spec": spec,
    }
    return Rendered(obj, notes=tuple(notes), kept_sources=tuple(sorted(kept)))
