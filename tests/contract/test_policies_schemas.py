"""Contract: rendered policies and remediation events validate against the real schemas.

* AuthorizationPolicy and CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy: the CRDs in
  ``shared/schemas`` (Draft 4 over ``spec.versions[i].schema.openAPIV3Schema``), made strict as
  ``shared/schemas/README.md`` describes, because the apiserver silently prunes unknown keys (a
  misspelled ``action`` would turn a DENY into an ALLOW).
* NetworkPolicy: ``kubernetes_validate`` (the upstream OpenAPI schemas), strict.
* Action and restore records as OCSF 1.8.0 Remediation Activity (class 7001), plus what the
  schema cannot check: ``type_uid == class_uid * 100 + activity_id``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator

from detector.anomalies import Anomaly, Subject
from detector.findings import IncidentTracker
from detector.remediation import Responder, ResponseConfig, to_ocsf

T0 = 1_000_000_020.0
P = "spiffe://cluster.local/ns/shop/sa/frontend"
EDGE = Subject(P, "prod-eu", None, "payments", "pay", "prod-us")
K8S_VERSION = "1.30.0"


def finding(ftype: str, subject: Subject, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    a = Anomaly(
        finding_type=ftype,
        pattern="UNSEEN",
        subject=subject,
        window_start=T0 - 60,
        window_end=T0,
        model="novelty",
        feature="new_routes",
        observed=2.0,
        expected=0.0,
        p_value=1e-9,
        evidence=evidence or {},
        confidence=0.9,
    )
    return IncidentTracker().observe([a], T0)[0]


class Baseline:
    edges_: ClassVar[dict[str, list[float]]] = {
        "spiffe://cluster.local/ns/checkout/sa/api|prod-us|pay|payments|prod-us": [40.0, 0.0, 1.0],
        "spiffe://cluster.local/ns/billing/sa/batch|prod-eu|pay|payments|prod-us": [12.0, 0.0, 1.0],
        f"{P}|prod-eu|shop|cart|prod-eu": [80.0, 0.0, 1.0],
    }


def _crd_schema(path: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    v = next(v for v in crd["spec"]["versions"] if v["name"] == version and v["served"])
    schema: dict[str, Any] = v["schema"]["openAPIV3Schema"]
    return schema


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    s = copy.deepcopy(schema)
    root = s.setdefault("properties", {})
    root.setdefault("apiVersion", {"type": "string"})
    root.setdefault("kind", {"type": "string"})
    root.setdefault("metadata", {"type": "object"})

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            if (
                n.get("type") == "object"
                and "properties" in n
                and "additionalProperties" not in n
                and not n.get("x-kubernetes-preserve-unknown-fields")
            ):
                n["additionalProperties"] = False
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(s)
    return s


@pytest.fixture(scope="module")
def crd_validators(shared_dir: Path) -> dict[str, jsonschema.Draft4Validator]:
    base = shared_dir / "schemas"
    files = {
        "AuthorizationPolicy": (base / "istio/authorizationpolicies.security.istio.io.yaml", "v1"),
        "CiliumNetworkPolicy": (base / "cilium/ciliumnetworkpolicies.yaml", "v2"),
        "CiliumClusterwideNetworkPolicy": (
            base / "cilium/ciliumclusterwidenetworkpolicies.yaml",
            "v2",
        ),
    }
    return {
        k: jsonschema.Draft4Validator(_strict(_crd_schema(p, v))) for k, (p, v) in files.items()
    }


@pytest.fixture(scope="module")
def ocsf(shared_dir: Path) -> Draft202012Validator:
    path = shared_dir / "schemas/ocsf/jsonschema/1.8.0/remediation_activity.schema.json"
    return Draft202012Validator(json.loads(path.read_text()))


def _errors(v: Any, obj: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(obj)]


CASES = [
    (
        "new_edge",
        EDGE,
        {"new_routes": ["GET /v1/charges/{id}", "POST /v1/refunds"], "dst_port": 8443},
    ),
    ("rate_surge", EDGE, {}),
    ("credential_replay", Subject(P, "attacker"), {"pod_name": "frontend-7d9f", "pod_uid": "u-1"}),
    ("scan", Subject(None, "prod-eu", "10.1.2.3", "payments", "pay", "prod-us"), {}),
]


@pytest.mark.parametrize("flavour", ["istio", "cilium", "networkpolicy"])
@pytest.mark.parametrize(("ftype", "subject", "evidence"), CASES)
def test_rendered_policies_validate(
    crd_validators: dict[str, jsonschema.Draft4Validator],
    ocsf: Draft202012Validator,
    flavour: str,
    ftype: str,
    subject: Subject,
    evidence: dict[str, Any],
) -> None:
    cfg = ResponseConfig.model_validate(
        {
            "mode": "auto",
            "max_blast_radius_edges": 100,
            "playbooks": [
                {
                    "name": "t",
                    "finding_types": [ftype],
                    "actions": [{"kind": "tighten_policy", "flavour": flavour}, {"kind": "notify"}],
                }
            ],
        }
    )
    out = Responder(cfg, Baseline()).on_findings([finding(ftype, subject, evidence)], T0)
    policies = [a for a in out if a["kind"] == "tighten_policy"]
    assert len(policies) == 1
    action = policies[0]
    if action["state"] == "suppressed":
        # only where the flavour truly cannot express it
        assert action["suppressed_by"] == "unrenderable"
        assert flavour == "networkpolicy" and ftype == "credential_replay"
        return
    (obj,) = action["objects"]
    if obj["kind"] == "NetworkPolicy":
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    else:
        assert not _errors(crd_validators[obj["kind"]], obj)
    meta = obj["metadata"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "mesh-detector"
    assert meta["labels"]["detector/incident"] == action["incident_uid"]
    assert meta["annotations"]["detector/expires-at"].endswith("Z")
    assert meta["annotations"]["detector/finding-uid"] == action["reason"]["finding_uid"]
    for rec in out:
        event = to_ocsf(rec)
        assert not _errors(ocsf, event)
        assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]


def test_strict_validation_catches_the_dangerous_typo(
    crd_validators: dict[str, jsonschema.Draft4Validator],
) -> None:
    """The strict schema is what makes the test above meaningful."""
    out = Responder(ResponseConfig(mode="auto"), Baseline()).on_findings(
        [finding("new_edge", EDGE)], T0
    )
    obj = copy.deepcopy(out[0]["objects"][0])
    obj["spec"]["acton"] = obj["spec"].pop("action")
    assert _errors(crd_validators["AuthorizationPolicy"], obj)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "x"},
                "spec": {"podSelector": {}, "ingres": []},
            },
            K8S_VERSION,
            strict=True,
        )


def test_every_lifecycle_event_is_valid_ocsf(ocsf: Draft202012Validator) -> None:
    f = finding("credential_replay", Subject(P, "attacker"), {"pod_name": "frontend-7d9f"})
    cfg = ResponseConfig.model_validate({"mode": "approval", "approval": {"secret": "k"}})
    r = Responder(cfg, Baseline())
    records = r.on_findings([f], T0)
    deny, revoke, _ = records
    r.decide(revoke["action_id"], "approve", T0 + 1)
    r.mark_applied(deny["action_id"], T0 + 2)
    records += [r.actions[deny["action_id"]], r.actions[revoke["action_id"]]]
    records += r.tick(T0 + 10 * 3600)
    # suppressed and unrenderable records too
    records += Responder(ResponseConfig(mode="auto", kill_switch=True), Baseline()).on_findings(
        [finding("new_edge", EDGE)], T0
    )
    activities = set()
    for rec in records:
        event = to_ocsf(rec)
        assert not _errors(ocsf, event), rec
        assert event["type_uid"] == 700100 + event["activity_id"]
        assert isinstance(event["time"], int) and event["time"] >= T0 * 1000
        activities.add(event["activity_id"])
    assert {1, 2, 3, 99} <= activities  # Isolate, Evict, Restore, notify (Other)
