"""Kubernetes audit decoder: the Falco trace files plus failed-authn (401) and forbid (403) events.

The 401 and 403 events below are written by us, modelled on real kube-apiserver output: failed
authentication is logged once, at stage ``ResponseStarted``, with an empty ``user`` and the message
``Authentication failed, attempted: bearer`` (k8s.io/apiserver ``WithFailedAuthenticationAudit``);
a forbid carries ``authorization.k8s.io/decision: forbid`` and a 403 ``Failure`` status.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detector.decoders import get_decoder
from detector.decoders.k8s_audit import decode
from detector.errors import DecodeError, PartialDecode
from detector.records import API_AUDIT, DENIED, ERROR, OK, UNAUTHENTICATED

FAILED_AUTHN = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "Metadata",
    "auditID": "8f7e3a4c-2b1d-4c55-9e1a-0d3b6c2f9a10",
    "stage": "ResponseStarted",
    "requestURI": "/api/v1/namespaces/kube-system/secrets?limit=500",
    "verb": "list",
    "user": {},
    "sourceIPs": ["10.244.1.17"],
    "userAgent": "curl/8.5.0",
    "responseStatus": {
        "metadata": {},
        "status": "Failure",
        "message": "Authentication failed, attempted: bearer",
        "reason": "Unauthorized",
        "code": 401,
    },
    "requestReceivedTimestamp": "2024-03-05T10:15:30.123456Z",
    "stageTimestamp": "2024-03-05T10:15:30.124001Z",
}

FORBID = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "Metadata",
    "auditID": "c2a9d3f1-6e0b-4f7a-8d52-1b9e4a7c3d20",
    "stage": "ResponseComplete",
    "requestURI": "/api/v1/namespaces/payments/secrets",
    "verb": "list",
    "user": {
        "username": "system:serviceaccount:frontend:web",
        "uid": "5d1c0a7e-9f3b-4e21-b6a8-2c4d7e9f1a33",
        "groups": [
            "system:serviceaccounts",
            "system:serviceaccounts:frontend",
            "system:authenticated",
        ],
    },
    "sourceIPs": ["10.244.2.31"],
    "userAgent": "kubectl/v1.29.2 (linux/amd64) kubernetes/4b8e819",
    "objectRef": {"resource": "secrets", "namespace": "payments", "apiVersion": "v1"},
    "responseStatus": {
        "metadata": {},
        "status": "Failure",
        "message": 'secrets is forbidden: User "system:serviceaccount:frontend:web" cannot list '
        'resource "secrets" in API group "" in the namespace "payments"',
        "reason": "Forbidden",
        "details": {"kind": "secrets"},
        "code": 403,
    },
    "requestReceivedTimestamp": "2024-03-05T10:16:01.500000Z",
    "stageTimestamp": "2024-03-05T10:16:01.502500Z",
    "annotations": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
}


def _b(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_registered() -> None:
    assert get_decoder("k8s_audit") is decode


def test_every_falco_file_decodes(fixtures_dir: Path) -> None:
    files = sorted((fixtures_dir / "k8s-audit" / "falco").glob("*.json"))
    assert len(files) == 10
    by_name = {}
    for f in files:
        lines = [ln for ln in f.read_bytes().splitlines() if ln.strip()]
        recs = [r for i, ln in enumerate(lines, 1) for r in decode(ln, f.name, i)]
        assert len(recs) == 1, f.name
        by_name[f.name] = recs[0]
    for name, r in by_name.items():
        assert r.kind == API_AUDIT
        assert r.outcome == OK, name  # all Falco samples are successful calls
        assert r.dst_service == "kube-apiserver"
        assert r.status is not None and 100 <= r.status < 300
        assert r.src_principal and r.src_ip and r.request_id
        assert r.ts > 1.5e9 and r.source == name and r.offset == 1
        assert r.route is not None and "?" not in r.route
    sec = by_name["create_kube_system_secret.json"]
    assert sec.src_principal == "admin"
    assert sec.method == "create"
    assert sec.route == "/api/v1/namespaces/kube-system/secrets"
    assert sec.dst_namespace == "kube-system"
    assert sec.detail == "secrets create"
    assert sec.ts == pytest.approx(1585076029.023018)
    assert sec.duration_ms == pytest.approx(2.512, abs=0.01)
    # v1beta1 event with a service-account user
    pod = by_name["create_nginx_pod_privileged.json"]
    assert pod.src_principal == "system:serviceaccount:kube-system:replicaset-controller"
    assert pod.src_namespace == "kube-system"
    assert pod.src_ip == "::1"
    # no apiVersion/kind; a 101 upgrade is counted at ResponseStarted
    ex = by_name["exec_pod.json"]
    assert ex.status == 101 and ex.detail == "pods/exec create"
    assert ex.route == "/api/v1/namespaces/default/pods/nginx-deployment-7998647bdf-phvq7/exec"
    assert by_name["anonymous_creates_namespace_foo.json"].src_principal == "system:anonymous"


def test_failed_authentication_is_unauthenticated() -> None:
    [r] = decode(_b(FAILED_AUTHN), "audit", 7)
    assert r.kind == API_AUDIT
    assert r.outcome == UNAUTHENTICATED
    assert r.status == 401
    assert r.src_principal is None  # empty user
    assert r.src_ip == "10.244.1.17"
    assert r.method == "list"
    assert r.route == "/api/v1/namespaces/kube-system/secrets"
    assert (r.source, r.offset) == ("audit", 7)
    # without the code, the empty user and the message still say so
    ev = dict(FAILED_AUTHN, responseStatus={"message": "Authentication failed, attempted: bearer"})
    [r2] = decode(_b(ev))
    assert r2.outcome == UNAUTHENTICATED


def test_forbid_is_denied() -> None:
    [r] = decode(_b(FORBID))
    assert r.outcome == DENIED and r.status == 403
    assert r.src_principal == "system:serviceaccount:frontend:web"
    assert r.src_namespace == "frontend"
    assert r.dst_namespace == "payments"
    assert r.detail == "secrets list"
    # the annotation alone is enough
    ev = dict(FORBID, responseStatus={"code": 200})
    assert decode(_b(ev))[0].outcome == DENIED


def test_stages_count_one_request_once() -> None:
    received = dict(FORBID, stage="RequestReceived")
    received.pop("responseStatus")
    assert decode(_b(received)) == []
    watch_started = dict(FORBID, stage="ResponseStarted", responseStatus={"code": 200})
    assert decode(_b(watch_started)) == []
    exec_done = dict(FORBID, stage="ResponseComplete", responseStatus={"code": 101})
    assert decode(_b(exec_done)) == []
    panic = dict(FORBID, stage="Panic", responseStatus={"code": 500}, annotations={})
    [p] = decode(_b(panic))
    assert p.outcome == ERROR


def test_event_list() -> None:
    data = _b(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [FAILED_AUTHN, FORBID]}
    )
    recs = decode(data)
    assert [r.outcome for r in recs] == [UNAUTHENTICATED, DENIED]
    with pytest.raises(PartialDecode) as ei:
        decode(_b({"items": [FORBID, 3, {"auditID": "x", "verb": "get"}]}))
    assert len(ei.value.records) == 1
    assert sorted(ei.value.problems) == ["bad_timestamp", "not_audit"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"not json", "not_json"), (b"[1,2]", "not_audit"), (b'{"hello": 1}', "not_audit")],
)
def test_bad_units(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as ei:
        decode(data)
    assert ei.value.reason == reason
