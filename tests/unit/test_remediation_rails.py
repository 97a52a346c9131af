"""Rails of the response stage: each test fails if its rail stops holding.

Findings are real OCSF findings from ``IncidentTracker`` (the same dicts the pipeline hands the
responder); the baseline is a stand-in with the novelty model's ``edges_`` shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from detector.anomalies import Anomaly, Subject
from detector.findings import IncidentTracker
from detector.remediation import rails
from detector.remediation.playbooks import (
    BudgetConfig,
    Notify,
    PlaybookRule,
    ProtectionConfig,
    ResponseConfig,
    TightenPolicy,
)
from detector.remediation.responder import Responder

T0 = 1_000_000_020.0
P = "spiffe://cluster.local/ns/shop/sa/frontend"
EDGE = Subject(P, "prod-eu", None, "payments", "pay", "prod-us")
SECRET = "s3cret-for-tests"


def finding(
    ftype: str = "new_edge",
    subject: Subject = EDGE,
    p: float = 1e-9,
    conf: float = 0.9,
    evidence: dict[str, Any] | None = None,
    t: float = T0,
    tracker: IncidentTracker | None = None,
) -> dict[str, Any]:
    a = Anomaly(
        finding_type=ftype,
        pattern="UNSEEN",
        subject=subject,
        window_start=t - 60,
        window_end=t,
        model="novelty",
        feature="new_destinations",
        observed=1.0,
        expected=0.0,
        p_value=p,
        evidence=evidence or {},
        confidence=conf,
    )
    return (tracker or IncidentTracker()).observe([a], t)[0]


class Baseline:
    def __init__(self, edges: dict[str, list[float]] | None = None) -> None:
        self.edges_ = edges or {}


def remediations(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        a
        for a in actions
        if a["kind"] in ("tighten_policy", "revoke_credential") and a["state"] != "suppressed"
    ]


def responder(**kw: Any) -> Responder:
    return Responder(ResponseConfig(**kw), baseline=Baseline())


def test_default_is_dry_run_and_security_high_gets_istio_deny_and_notify() -> None:
    out = responder().on_findings([finding()], T0)
    assert [(a["kind"], a["state"]) for a in out] == [
        ("tighten_policy", "proposed"),
        ("notify", "proposed"),
    ]
    assert out[0]["dry_run"] is True and out[0]["flavour"] == "istio"
    assert out[0]["objects"][0]["spec"]["action"] == "DENY"
    assert out[1]["related_actions"] == [out[0]["action_id"]]


def test_low_severity_security_gets_nothing() -> None:
    assert responder().on_findings([finding(p=1e-3)], T0) == []  # risk 30: severity 2


@pytest.mark.parametrize("ftype", ["availability", "latency", "traffic_drop", "global_shift"])
def test_operational_and_context_findings_are_never_remediated(ftype: str) -> None:
    # even a playbook that would remediate anything cannot: the runtime rail holds
    anything = PlaybookRule.model_construct(
        name="everything",
        finding_types=[],
        categories=[],
        min_severity_id=0,
        min_confidence_score=0,
        require_approval=False,
        actions=[TightenPolicy(), Notify()],
    )
    r = Responder(ResponseConfig(mode="auto", playbooks=[anything]), Baseline())
    out = r.on_findings([finding(ftype, p=1e-12)], T0)
    assert remediations(out) == []
    assert {a["suppressed_by"] for a in out if a["kind"] == "tighten_policy"} == {"category"}
    # and the default playbooks only notify
    out = responder(mode="auto").on_findings([finding(ftype, p=1e-12)], T0)
    assert [a["kind"] for a in out] == ["notify"]


def test_config_rejects_remediating_operational_findings() -> None:
    with pytest.raises(ValueError, match="never remediated"):
        PlaybookRule(name="bad", finding_types=["latency"], actions=[TightenPolicy()])
    with pytest.raises(ValueError, match="never remediated"):
        PlaybookRule(name="bad", categories=["context"], actions=[TightenPolicy()])
    with pytest.raises(ValueError):
        ResponseConfig.model_validate({"mode": "auto", "kill_swich": True})  # typo rejected


@pytest.mark.parametrize(
    "subject",
    [
        Subject(
            "spiffe://cluster.local/ns/kube-system/sa/coredns",
            "prod-eu",
            None,
            "payments",
            "pay",
            "prod-us",
        ),
        Subject(
            "spiffe://cluster.local/ns/istio-system/sa/istiod",
            "prod-eu",
            None,
            "payments",
            "pay",
            "prod-us",
        ),
        Subject(
            "spiffe://cluster.local/ns/mesh-detector/sa/detector",
            "prod-eu",
            None,
            "payments",
            "pay",
            "prod-us",
        ),
        Subject(P, "prod-eu", None, "coredns", "kube-system", "prod-us"),
        Subject(
            "spiffe://cluster.local/ns/payments/sa/ledger", "prod-eu", None, "x", "y", "prod-us"
        ),
    ],
)
def test_protected_identities_and_namespaces_are_never_acted_on(subject: Subject) -> None:
    cfg = ResponseConfig(
        mode="auto", protected=ProtectionConfig(identities=["spiffe://*/ns/payments/sa/ledger"])
    )
    out = Responder(cfg, Baseline()).on_findings([finding(subject=subject)], T0)
    assert remediations(out) == []
    assert {a["suppressed_by"] for a in out if a["kind"] != "notify"} == {"protected"}


def test_budget_per_identity_and_per_window() -> None:
    cfg = ResponseConfig(
        mode="auto",
        budgets=BudgetConfig(max_actions_per_identity=2, max_actions_per_window=3),
    )
    r = Responder(cfg, Baseline())
    admitted = []
    for i in range(4):  # four services called by the same identity: four incidents
        s = Subject(P, "prod-eu", None, f"svc{i}", "pay", "prod-us")
        admitted += remediations(r.on_findings([finding(subject=s)], T0 + i))
    assert len(admitted) == 2  # per identity
    suppressed = [a for a in r.actions.values() if a["suppressed_by"] == "budget"]
    assert len(suppressed) == 2
    for i in range(3):  # other identities: the global window allows one more
        s = Subject(
            f"spiffe://cluster.local/ns/shop/sa/w{i}", "prod-eu", None, "svc", "pay", "prod-us"
        )
        admitted += remediations(r.on_findings([finding(subject=s)], T0 + 10 + i))
    assert len(admitted) == 3
    # the window slides: an hour later the identity may be acted on again
    s = Subject(P, "prod-eu", None, "svc9", "pay", "prod-us")
    assert len(remediations(r.on_findings([finding(subject=s)], T0 + 3700))) == 1


def test_kill_switch_config_runtime_and_file(tmp_path: Path) -> None:
    out = responder(mode="auto", kill_switch=True).on_findings([finding()], T0)
    assert remediations(out) == [] and out[0]["suppressed_by"] == "kill_switch"
    r = responder(mode="auto")
    r.kill()
    assert remediations(r.on_findings([finding()], T0)) == []
    flag = tmp_path / "kill"
    r = responder(mode="auto", kill_switch_file=str(flag))
    flag.touch()
    assert (
        remediations(r.on_findings([finding(subject=Subject(P, "a", None, "b", "c", "d"))], T0))
        == []
    )
    flag.unlink()
    assert len(remediations(r.on_findings([finding()], T0))) == 1


def test_dedup_same_incident_twice_gives_one_action() -> None:
    tracker = IncidentTracker(update_min_interval_s=0)
    r = responder(mode="auto")
    first = r.on_findings([finding(tracker=tracker)], T0)
    update = finding(tracker=tracker, t=T0 + 60, p=1e-12)
    assert update["activity_id"] == 2
    assert update["finding_info"]["uid"] == first[0]["incident_uid"]
    assert r.on_findings([update], T0 + 60) == []
    assert r.on_findings([finding(tracker=tracker, t=T0 + 120)], T0 + 120) == []
    assert len(r.actions) == 2  # one DENY, one notify


def test_close_findings_are_not_acted_on() -> None:
    tracker = IncidentTracker(close_after_quiet_s=60)
    finding(tracker=tracker)
    closes = tracker.tick(T0 + 1000)
    assert closes and closes[0]["activity_id"] == 3
    assert responder(mode="auto").on_findings(closes, T0 + 1000) == []


def test_ttl_expiry_yields_restore_once() -> None:
    r = responder(mode="auto", default_ttl_s=600)
    deny = r.on_findings([finding()], T0)[0]
    assert deny["state"] == "approved" and deny["expires_ts"] == T0 + 600
    r.mark_applied(deny["action_id"], T0 + 5)
    assert r.tick(T0 + 599) == []
    restores = r.tick(T0 + 600)
    assert len(restores) == 1
    (rs,) = restores
    assert rs["action_id"] == deny["action_id"] and rs["kind"] == "restore"
    obj = deny["objects"][0]
    assert rs["delete_objects"] == [
        {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
        }
    ]
    assert r.actions[deny["action_id"]]["state"] == "restored"
    assert r.tick(T0 + 700) == []  # once


def test_dry_run_proposals_expire_as_simulated_restores() -> None:
    r = responder(default_ttl_s=300)
    r.on_findings([finding()], T0)
    (rs,) = r.tick(T0 + 300)
    assert rs["dry_run"] is True


def test_revoke_is_paired_with_deny_covering_credential_lifetime() -> None:
    s = Subject(P, "attacker-cluster")
    f = finding("credential_replay", subject=s)
    out = responder(mode="auto", default_ttl_s=60).on_findings([f], T0)
    kinds = [a["kind"] for a in out]
    assert kinds == ["tighten_policy", "revoke_credential", "notify"]  # DENY applied first
    deny, revoke = out[0], out[1]
    assert deny["ttl_s"] >= 3600 and deny["ttl_s"] >= revoke["ttl_s"]
    assert revoke["pair"] == [deny["action_id"]] and deny["pair"] == [revoke["action_id"]]
    # no destination: the DENY is mesh-wide (Istio root namespace, no selector)
    obj = deny["objects"][0]
    assert obj["metadata"]["namespace"] == "istio-system" and "selector" not in obj["spec"]


def test_revoke_without_its_deny_is_suppressed() -> None:
    # an IP-less, non-SPIFFE principal: Kubernetes revoke renders, Istio DENY cannot
    s = Subject("system:serviceaccount:shop:frontend", "prod-eu")
    cfg = ResponseConfig(mode="auto", pair_flavour="istio")
    out = Responder(cfg, Baseline()).on_findings([finding("k8s_api_abuse", subject=s)], T0)
    assert remediations(out) != []  # k8s SA maps to a mesh principal: both render
    s = Subject("alice@example.com", "prod-eu")  # a human user: nothing to revoke or deny
    out = Responder(cfg, Baseline()).on_findings([finding("k8s_api_abuse", subject=s)], T0)
    assert remediations(out) == []


def _edges(n: int) -> dict[str, list[float]]:
    e = {f"{P}|prod-{i}|pay|payments|prod-us": [10.0 + i, T0 - 1e5, T0 - 100] for i in range(n)}
    e[f"{P}|prod-eu|shop|cart|prod-eu"] = [50.0, T0 - 1e5, T0 - 100]
    e["spiffe://cluster.local/ns/x/sa/y|prod-eu|pay|payments|prod-us"] = [5.0, T0 - 1e5, T0 - 1]
    return e


def test_blast_radius_from_baseline_and_escalation_to_approval() -> None:
    cfg = ResponseConfig(mode="auto", max_blast_radius_edges=3)
    small = Responder(cfg, Baseline(_edges(2))).on_findings([finding()], T0)[0]
    assert small["blast_radius"]["count"] == 2  # the principal's edges to that service only
    assert {e["dst_service"] for e in small["blast_radius"]["edges"]} == {"payments"}
    assert small["state"] == "approved" and not small["requires_approval"]
    big = Responder(cfg, Baseline(_edges(5))).on_findings([finding()], T0)[0]
    assert big["blast_radius"]["count"] == 5
    assert big["state"] == "proposed" and big["requires_approval"]
    assert "blast radius 5" in big["approval_reason"]
    unknown = Responder(cfg, None).on_findings([finding()], T0)[0]
    assert unknown["blast_radius"]["count"] is None and unknown["requires_approval"]


def test_revoke_blast_radius_is_every_learned_edge_of_the_principal() -> None:
    cfg = ResponseConfig(mode="auto", max_blast_radius_edges=100)
    out = Responder(cfg, Baseline(_edges(2))).on_findings(
        [finding("credential_replay", subject=Subject(P, "attacker"))], T0
    )
    revoke = next(a for a in out if a["kind"] == "revoke_credential")
    assert revoke["blast_radius"]["count"] == 3


# -- approvals ---------------------------------------------------------------------------------


def test_approval_signature_tamper_and_expiry() -> None:
    links = rails.approval_links("https://d.example", SECRET, "abc", T0, 600)
    url = links["approve_url"]
    assert url.startswith("https://d.example/v1/approvals/abc/approve?exp=")
    exp = links["expires_ts"]
    sig = rails.sign(SECRET, "abc", "approve", exp)
    assert rails.verify_approval(SECRET, "abc", "approve", str(exp), sig, T0) is None
    assert rails.verify_approval(SECRET, "abc", "deny", str(exp), sig, T0) == "bad signature"
    assert rails.verify_approval(SECRET, "abd", "approve", str(exp), sig, T0) == "bad signature"
    assert rails.verify_approval(SECRET, "abc", "approve", str(exp + 1), sig, T0) == "bad signature"
    assert rails.verify_approval("other", "abc", "approve", str(exp), sig, T0) == "bad signature"
    assert rails.verify_approval(SECRET, "abc", "approve", str(exp), sig, exp + 1) == "link expired"


def _approval_responder() -> tuple[Responder, dict[str, Any]]:
    cfg = ResponseConfig.model_validate({"mode": "approval", "approval": {"secret": SECRET}})
    r = Responder(cfg, Baseline())
    deny = r.on_findings([finding()], T0)[0]
    assert deny["state"] == "proposed" and "approve_url" in deny["approval"]
    return r, deny


async def test_approval_app_valid_link_approves_tampered_and_expired_refused() -> None:
    r, deny = _approval_responder()
    aid = deny["action_id"]
    now = [T0]
    app = rails.approval_app(r, SECRET, clock=lambda: now[0])
    path = deny["approval"]["approve_url"].split("8080", 1)[1]
    async with TestClient(TestServer(app)) as client:
        # GET only shows a confirmation: link scanners must not approve
        resp = await client.get(path)
        assert resp.status == 200 and '<form method="post"' in await resp.text()
        assert r.actions[aid]["state"] == "proposed"
        tampered = path.replace("sig=", "sig=0")
        assert (await client.post(tampered)).status == 403
        other = path.replace(aid, "0" * len(aid))
        assert (await client.post(other)).status == 403
        now[0] = deny["approval"]["expires_ts"] + 1
        resp = await client.post(path)
        assert resp.status == 403 and (await resp.json())["error"] == "link expired"
        assert r.actions[aid]["state"] == "proposed"
        now[0] = T0 + 30
        resp = await client.post(path)
        assert resp.status == 200 and (await resp.json())["state"] == "approved"
    rec = r.actions[aid]
    assert rec["state"] == "approved" and rec["expires_ts"] == T0 + 30 + rec["ttl_s"]
    assert rec["objects"][0]["metadata"]["annotations"]["detector/expires-at"] == rec["expires_at"]


async def test_approval_app_deny_link() -> None:
    r, deny = _approval_responder()
    app = rails.approval_app(r, SECRET, clock=lambda: T0)
    path = deny["approval"]["deny_url"].split("8080", 1)[1]
    async with TestClient(TestServer(app)) as client:
        assert (await client.post(path)).status == 200
    assert r.actions[deny["action_id"]]["state"] == "denied"
    assert r.tick(T0 + 10_000) == []  # a denied action is never restored (never applied)


def test_undecided_approvals_expire_to_denied() -> None:
    r, deny = _approval_responder()
    r.tick(deny["approval"]["expires_ts"] + 1)
    assert r.actions[deny["action_id"]]["state"] == "denied"


def test_approving_a_revoke_approves_its_deny_and_denying_the_deny_denies_the_revoke() -> None:
    cfg = ResponseConfig.model_validate({"mode": "approval", "approval": {"secret": SECRET}})
    f = finding("credential_replay", subject=Subject(P, "attacker"))
    r = Responder(cfg, Baseline())
    deny, revoke, _ = r.on_findings([f], T0)
    r.decide(revoke["action_id"], "approve", T0 + 1)
    assert r.actions[deny["action_id"]]["state"] == "approved"
    r2 = Responder(cfg, Baseline())
    deny, revoke, _ = r2.on_findings([f], T0)
    r2.decide(deny["action_id"], "deny", T0 + 1)
    assert r2.actions[revoke["action_id"]]["state"] == "denied"


# -- determinism and checkpoints ---------------------------------------------------------------


def test_same_finding_same_ids_and_names() -> None:
    a = responder().on_findings([finding()], T0)
    b = responder().on_findings([finding()], T0)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    name = a[0]["objects"][0]["metadata"]["name"]
    assert name.startswith("detector-deny-") and len(name) == len("detector-deny-") + 8
    other = responder().on_findings(
        [finding(subject=Subject(P, "prod-eu", None, "x", "pay", "prod-us"))], T0
    )
    assert other[0]["action_id"] != a[0]["action_id"]
    assert other[0]["objects"][0]["metadata"]["name"] != name


def test_state_round_trips_through_json() -> None:
    r = responder(mode="auto", default_ttl_s=600)
    deny = r.on_findings([finding()], T0)[0]
    r2 = responder(mode="auto", default_ttl_s=600)
    r2.set_state(json.loads(json.dumps(r.get_state())))
    assert r2.on_findings([finding()], T0 + 1) == []  # dedup survives a restart
    assert [x["action_id"] for x in r2.tick(T0 + 600)] == [deny["action_id"]]
