"""Targets: who and what a remediation acts on, read from an OCSF finding.

Contract:
* ``Target.from_finding(finding)`` reads ``finding["unmapped"]["edge"]`` (the subject that
  ``detector.findings.render_finding`` writes); any part may be None.
* ``parse_principal`` splits the identity forms of DESIGN.md §3 into trust domain, namespace and
  service account: SPIFFE ``spiffe://<td>/ns/<ns>/sa/<sa>``, Kubernetes
  ``system:serviceaccount:<ns>:<sa>``, Linkerd ``<sa>.<ns>.serviceaccount.identity.linkerd.<td>``.
  Anything else yields only the raw string (no namespace/SA is ever guessed).
* ``istio_principal`` is the form Istio's ``source.principals`` matches: the SPIFFE id without
  ``spiffe://`` (``cluster.local/ns/shop/sa/web``); None when the identity is not SPIFFE-shaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_SPIFFE = re.compile(r"^spiffe://(?P<td>[^/]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")
_K8S_SA = re.compile(r"^system:serviceaccount:(?P<ns>[^:]+):(?P<sa>[^:]+)$")
_LINKERD = re.compile(
    r"^(?P<sa>[^.]+)\.(?P<ns>[^.]+)\.serviceaccount\.identity\.linkerd\.(?P<td>.+)$"
)


@dataclass(frozen=True, slots=True)
class Identity:
    raw: str
    trust_domain: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    form: str = "other"  # spiffe | kubernetes | linkerd | other


def parse_principal(principal: str) -> Identity:
    m = _SPIFFE.match(principal)
    if m:
        return Identity(principal, m["td"], m["ns"], m["sa"], "spiffe")
    m = _K8S_SA.match(principal)
    if m:
        return Identity(principal, None, m["ns"], m["sa"], "kubernetes")
    m = _LINKERD.match(principal)
    if m:
        return Identity(principal, m["td"], m["ns"], m["sa"], "linkerd")
    return Identity(principal)


def istio_principal(ident: Identity, default_trust_domain: str = "cluster.local") -> str | None:
    """The principal string Istio matches: ``<td>/ns/<ns>/sa/<sa>``."""
    if ident.form == "spiffe":
        return ident.raw.removeprefix("spiffe://")
    if ident.namespace and ident.service_account:
        # a Kubernetes SA name maps to the mesh identity of the same SA in the trust domain
        td = ident.trust_domain or default_trust_domain
        return f"{td}/ns/{ident.namespace}/sa/{ident.service_account}"
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """The edge a finding is about (``unmapped.edge`` of the OCSF finding)."""

    principal: str | None = None
    src_cluster: str | None = None
    src_ip: str | None = None
    dst_service: str | None = None
    dst_namespace: str | None = None
    dst_cluster: str | None = None

    @classmethod
    def from_finding(cls, finding: Mapping[str, Any]) -> Target:
        edge = finding.get("unmapped", {}).get("edge", {}) or {}

        def s(key: str) -> str | None:
            v = edge.get(key)
            return str(v) if v not in (None, "") else None

        return cls(
            principal=s("src_principal"),
            src_cluster=s("src_cluster"),
            src_ip=s("src_ip"),
            dst_service=s("dst_service"),
            dst_namespace=s("dst_namespace"),
            dst_cluster=s("dst_cluster"),
        )

    @property
    def identity(self) -> Identity | None:
        return parse_principal(self.principal) if self.principal else None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "principal": self.principal,
            "src_cluster": self.src_cluster,
            "src_ip": self.src_ip,
            "dst_service": self.dst_service,
            "dst_namespace": self.dst_namespace,
            "dst_cluster": self.dst_cluster,
        }
