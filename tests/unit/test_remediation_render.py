"""Rendering of policies and revoke requests: the exact shapes the response stage promises."""

from __future__ import annotations

from typing import Any

from detector.anomalies import Anomaly, Subject
from detector.findings import IncidentTracker
from detector.remediation.credentials import render_revoke
from detector.remediation.playbooks import LifetimeConfig, RenderConfig
from detector.remediation.policies import (
    Stamp,
    legitimate_sources,
    operation_from_finding,
    render_cilium_deny,
    render_istio_deny,
    render_networkpolicy,
)
from detector.remediation.targets import Target, istio_principal, parse_principal

T0 = 1_000_000_020.0
P = "spiffe://cluster.local/ns/shop/sa/frontend"
TARGET = Target(P, "prod-eu", None, "payments", "pay", "prod-us")
STAMP = Stamp("aid-1", "inc-1", "inc-1", T0 + 3600)
RC = RenderConfig()


def finding(ftype: str, subject: Subject, evidence: dict[str, Any]) -> dict[str, Any]:
    a = Anomaly(
        ftype,
        "UNSEEN",
        subject,
        T0 - 60,
        T0,
        "novelty",
        "x",
        1.0,
        0.0,
        1e-9,
        evidence=evidence,
        confidence=0.9,
    )
    return IncidentTracker().observe([a], T0)[0]


def test_principal_forms() -> None:
    assert istio_principal(parse_principal(P)) == "cluster.local/ns/shop/sa/frontend"
    k = parse_principal("system:serviceaccount:shop:web")
    assert (k.namespace, k.service_account) == ("shop", "web")
    assert istio_principal(k, "td.example") == "td.example/ns/shop/sa/web"
    ld = parse_principal("web.shop.serviceaccount.identity.linkerd.cluster.local")
    assert (ld.namespace, ld.service_account, ld.trust_domain) == ("shop", "web", "cluster.local")
    assert parse_principal("alice@example.com").namespace is None


def test_istio_deny_exactly_principal_to_service_with_operation() -> None:
    f = finding(
        "new_route",
        Subject(P, "prod-eu", None, "payments", "pay", "prod-us"),
        {"new_routes": ["GET /v1/charges/{id}", "POST /v1/refunds"], "dst_port": 8443},
    )
    op = operation_from_finding(f)
    obj = render_istio_deny(TARGET, STAMP, op, RC).obj
    assert obj is not None
    assert obj["apiVersion"] == "security.istio.io/v1" and obj["metadata"]["namespace"] == "pay"
    assert obj["spec"] == {
        "action": "DENY",
        "selector": {"matchLabels": {"app": "payments"}},
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                "to": [
                    {
                        "operation": {
                            "ports": ["8443"],
                            "methods": ["GET", "POST"],
                            "paths": ["/v1/charges/*", "/v1/refunds"],
                        }
                    }
                ],
            }
        ],
    }


def test_route_overflow_does_not_narrow_operation() -> None:
    f = finding("new_route", Subject(P), {"new_routes": ["GET /a", "GET /{other}"]})
    op = operation_from_finding(f)
    assert op.paths == () and op.methods == ()


def test_cilium_deny_matches_source_cluster_and_keeps_default_allow() -> None:
    obj = render_cilium_deny(TARGET, STAMP, operation_from_finding({}), RC).obj
    assert obj is not None and obj["kind"] == "CiliumNetworkPolicy"
    spec = obj["spec"]
    assert spec["endpointSelector"] == {"matchLabels": {"k8s:app": "payments"}}
    assert spec["ingressDeny"] == [
        {
            "fromEndpoints": [
                {
                    "matchLabels": {
                        "k8s:io.kubernetes.pod.namespace": "shop",
                        "k8s:io.cilium.k8s.policy.serviceaccount": "frontend",
                        "k8s:io.cilium.k8s.policy.cluster": "prod-eu",
                    }
                }
            ]
        }
    ]
    # without this, Cilium would put payments into default-deny and cut every other caller
    assert spec["enableDefaultDeny"] == {"ingress": False, "egress": False}


EDGES = [
    "spiffe://cluster.local/ns/checkout/sa/api|prod-us|pay|payments|prod-us",
    "spiffe://cluster.local/ns/billing/sa/batch|prod-eu|pay|payments|prod-us",
    f"{P}|prod-eu|pay|payments|prod-us",
    "spiffe://cluster.local/ns/other/sa/z|prod-us|pay|ledger|prod-us",
]


def test_networkpolicy_keeps_learned_sources_and_drops_the_offender() -> None:
    local = Target(P, "prod-us", None, "payments", "pay", "prod-us")
    legit = legitimate_sources(EDGES, local)
    assert ("spiffe://cluster.local/ns/other/sa/z", "prod-us") not in legit  # other service
    r = render_networkpolicy(local, STAMP, legit, RC)
    assert r.obj is not None
    peers = r.obj["spec"]["ingress"][0]["from"]
    names = [
        p["namespaceSelector"]["matchLabels"].get("kubernetes.io/metadata.name")
        for p in peers
        if "podSelector" not in p
    ]
    assert names == ["checkout"]  # offender's namespace "shop" is not allowed
    assert RC.remote_peers[0] in peers  # billing@prod-eu arrives through the gateway


def test_networkpolicy_refuses_when_offender_shares_a_kept_namespace() -> None:
    offender = Target(
        "spiffe://cluster.local/ns/checkout/sa/evil", "prod-us", None, "payments", "pay", "prod-us"
    )
    r = render_networkpolicy(offender, STAMP, legitimate_sources(EDGES, offender), RC)
    assert r.obj is None and "cannot tell service accounts apart" in r.reason


def test_kubernetes_revoke_names_the_bound_pod_in_the_home_cluster() -> None:
    f = finding("credential_replay", Subject(P, "attacker"), {"pod_name": "fe-1", "pod_uid": "u1"})
    f["unmapped"]["model_baseline"]["known_clusters"] = ["prod-eu"]
    plan = render_revoke("kubernetes", Target.from_finding(f), f, LifetimeConfig())
    assert plan.request is not None
    assert plan.request["kind"] == "Pod" and plan.request["name"] == "fe-1"
    assert plan.request["preconditions"] == {"uid": "u1"}
    assert plan.request["clusters"] == ["prod-eu"] and plan.lifetime_s == 3600
    f2 = finding("k8s_api_abuse", Subject(P, "prod-eu"), {})
    plan2 = render_revoke("kubernetes", Target.from_finding(f2), f2, LifetimeConfig())
    assert plan2.request is not None
    assert plan2.request["fieldSelector"] == "spec.serviceAccountName=frontend"


def test_vault_and_spire_requests() -> None:
    f = finding("credential_replay", Subject(P, "x"), {"vault_token_accessor": "acc-1"})
    plan = render_revoke("vault", Target.from_finding(f), f, LifetimeConfig())
    assert plan.request is not None
    assert (plan.request["path"], plan.request["body"]) == (
        "/v1/auth/token/revoke-accessor",
        {"accessor": "acc-1"},
    )
    f = finding("credential_replay", Subject(P, "x"), {"vault_entity_id": "e-1"})
    plan = render_revoke("vault", Target.from_finding(f), f, LifetimeConfig())
    assert plan.request is not None and plan.restore is not None
    assert plan.request["body"] == {"disabled": True} and plan.restore["body"] == {
        "disabled": False
    }
    f = finding("credential_replay", Subject(P, "x"), {})
    assert render_revoke("vault", Target.from_finding(f), f, LifetimeConfig()).request is None
    plan = render_revoke("spire", Target.from_finding(f), f, LifetimeConfig(svid_s=1800))
    assert plan.request is not None and plan.lifetime_s == 1800
    assert plan.request["steps"][0]["request"]["filter"]["by_spiffe_id"] == {
        "trust_domain": "cluster.local",
        "path": "/ns/shop/sa/frontend",
    }
