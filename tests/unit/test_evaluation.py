"""Labelled evaluation: matching findings to scenarios, recall, time to detect, FPs, traps."""

from __future__ import annotations

from typing import Any

import pytest

from detector.evaluation import evaluate, format_report

H = 3600.0
LABELS = [
    {"scenario": "lateral_movement", "kind": "attack", "start_ts": 1000.0, "end_ts": 2800.0,
     "principals": ["spiffe://td/ns/a/sa/x@eu"], "services": ["pay.payments@us"]},
    {"scenario": "exfiltration", "kind": "attack", "start_ts": 5000.0, "end_ts": 6800.0,
     "principals": ["spiffe://td/ns/d/sa/etl@us"], "services": ["ledger.payments@us"]},
    {"scenario": "outage", "kind": "trap", "start_ts": 8000.0, "end_ts": 9800.0,
     "principals": [], "services": ["pay.payments@eu"]},
    {"scenario": "k8s_abuse", "kind": "attack", "start_ts": 10000.0, "end_ts": 11000.0,
     "principals": ["system:serviceaccount:c:r@eu"], "services": ["kube-apiserver@eu"]},
]


def finding(t: float, uid: str, ftype: str, category: str = "security", activity: int = 1,
            **edge: Any) -> dict[str, Any]:
    return {
        "time": int(t * 1000), "activity_id": activity, "finding_info": {"uid": uid},
        "unmapped": {"category": category, "finding_type": ftype, "risk": 80.0,
                     "edge": {"text": "x", **edge}, "evidence": edge.pop("evidence", {})},
    }


def test_recall_ttd_precision_fp_and_traps() -> None:
    findings = [
        # lateral movement found 120 s in, by caller
        finding(1120, "u1", "lateral_movement", src_principal="spiffe://td/ns/a/sa/x",
                src_cluster="eu"),
        finding(1180, "u1", "lateral_movement", activity=2, src_principal="spiffe://td/ns/a/sa/x",
                src_cluster="eu"),
        # an unrelated security finding during the attack: a false positive, lowers precision
        finding(1500, "u2", "rate_surge", src_principal="spiffe://td/ns/b/sa/y", src_cluster="eu",
                dst_service="cart", dst_namespace="orders", dst_cluster="eu"),
        # an operational finding on the outage trap: fine, not a security alarm
        finding(8100, "u3", "availability", category="operational", dst_service="pay",
                dst_namespace="payments", dst_cluster="eu"),
        # a security finding on the trap: the trap is flagged and it is a false positive
        finding(8200, "u4", "rate_surge", src_principal="spiffe://td/ns/c/sa/z", src_cluster="eu",
                dst_service="pay", dst_namespace="payments", dst_cluster="eu"),
        # an address-level burst matches the API abuse through its targets
        finding(10060, "u5", "k8s_api_abuse", src_ip="10.0.0.9", src_cluster="eu",
                evidence={"targets": ["kube-apiserver@eu"]}),
    ]
    r = evaluate(LABELS, findings, (0.0, 12 * H))
    by = {s.name: s for s in r.scenarios}
    assert by["lateral_movement"].detected and by["lateral_movement"].ttd_s == 120
    assert by["lateral_movement"].precision == 0.5
    assert not by["exfiltration"].detected
    assert by["k8s_abuse"].detected and by["k8s_abuse"].ttd_s == 60
    assert r.recall == pytest.approx(2 / 3)
    assert r.median_ttd_s == 90
    assert r.traps_flagged == ["outage"]
    assert len(r.false_positives) == 2 and r.fp_per_hour == pytest.approx(2 / 12)
    assert r.operational == 1 and r.security_incidents == 4
    text = format_report(r)
    assert "exfiltration" in text and "NO" in text and "FLAGGED" in text


def test_global_trap_matches_any_security_finding_in_its_time() -> None:
    labels = [{"scenario": "global_surge", "kind": "trap", "start_ts": 0.0, "end_ts": 100.0,
               "principals": [], "services": ["*"]}]
    quiet = evaluate(labels, [finding(50, "c", "global_shift", category="context")], (0, H))
    assert quiet.traps_flagged == [] and quiet.context == 1
    loud = evaluate(labels, [finding(50, "s", "rate_surge", dst_service="a", dst_cluster="b")],
                    (0, H))
    assert loud.traps_flagged == ["global_surge"]


def test_remediation_per_scenario_and_on_traps() -> None:
    findings = [
        finding(1120, "u1", "lateral_movement", src_principal="spiffe://td/ns/a/sa/x", src_cluster="eu"),
        finding(8200, "u4", "rate_surge", src_principal="spiffe://td/ns/c/sa/z", src_cluster="eu",
                dst_service="pay", dst_namespace="payments", dst_cluster="eu"),
    ]
    actions = [
        {"action_id": "a1", "kind": "tighten_policy", "state": "proposed", "incident_uid": "u1"},
        {"action_id": "a2", "kind": "notify", "state": "proposed", "incident_uid": "u4"},
        {"action_id": "a3", "kind": "tighten_policy", "state": "suppressed", "incident_uid": "u4"},
    ]
    r = evaluate(LABELS, findings, (0.0, 12 * H), actions=actions)
    by = {s.name: s for s in r.scenarios}
    assert by["lateral_movement"].actions == {"a1"}
    assert r.traps_remediated == []  # a notification and a suppressed action do not count
    r2 = evaluate(LABELS, findings, (0.0, 12 * H),
                  actions=[*actions, {"action_id": "a4", "kind": "revoke_credential",
                                      "state": "approved", "incident_uid": "u4"}])
    assert r2.traps_remediated == ["outage"] and r2.actions_on_false_positives == 1
    assert "traps remediated: outage" in format_report(r2)


def test_an_attack_incident_is_not_held_against_an_overlapping_trap() -> None:
    labels = [
        {"scenario": "global_surge", "kind": "trap", "start_ts": 0.0, "end_ts": 200.0,
         "principals": [], "services": ["*"]},
        {"scenario": "lateral_movement", "kind": "attack", "start_ts": 150.0, "end_ts": 400.0,
         "principals": ["spiffe://td/ns/a/sa/x@eu"], "services": []},
    ]
    f = finding(210, "u1", "lateral_movement", src_principal="spiffe://td/ns/a/sa/x", src_cluster="eu")
    r = evaluate(labels, [f], (0, H),
                 actions=[{"action_id": "a", "kind": "tighten_policy", "state": "proposed",
                           "incident_uid": "u1"}])
    assert r.traps_flagged == [] and r.traps_remediated == []
    assert r.attacks[0].detected
