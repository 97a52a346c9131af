"""Kubernetes API audit decoder (``k8s_audit`` format): one audit ``Event`` per unit.

Contract: the decoder contract of ``detector.decoders``. A unit is one ``Event`` object
(``audit.k8s.io/v1`` or ``v1beta1``; ``apiVersion``/``kind`` may be absent, as in the log backend's
older output) or an ``EventList`` (``{"items": [...]}``, e.g. the webhook backend's batches: each
item decoded, bad ones reported through ``PartialDecode``).

Each counted request becomes one ``api_audit`` record: ``src_principal`` = ``user.username``
(``None`` when the user is empty, as in failed authentication), ``src_ip`` = ``sourceIPs[0]``,
``src_namespace`` = the namespace of a ``system:serviceaccount:<ns>:<sa>`` user,
``dst_service`` = ``kube-apiserver`` (its cluster comes from static source attributes later),
``dst_namespace`` = ``objectRef.namespace``, ``method`` = the verb, ``route`` = the raw request path
(no query; ``flows.RouteTemplates`` templates it), ``status`` = ``responseStatus.code``,
``detail`` = ``"<resource>[/<subresource>] <verb>"`` (plus the impersonated user),
``request_id`` = ``auditID``, ``ts`` = ``requestReceivedTimestamp`` (else
``stageTimestamp``/``timestamp``).

One request is counted once although the apiserver logs it at several stages:

* ``RequestReceived`` -> ``[]``;
* ``ResponseStarted`` -> only failed authentication (401: the apiserver logs those at this stage
  only) and connection upgrades (101: ``exec``/``attach``/``portforward``, counted when they start,
  which matters for an interactive shell that lasts hours); other long-running requests
  (``watch``) are counted at ``ResponseComplete``;
* ``ResponseComplete`` -> counted, except code 101 (already counted at ``ResponseStarted``);
* ``Panic`` -> counted, outcome ``error``.

Outcome: failed authentication (401, or an empty user with ``Authentication failed`` in the
message) -> ``unauthenticated``; ``authorization.k8s.io/decision: forbid`` or 403 -> ``denied``;
otherwise from the status (5xx -> ``error``).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from detector.decoders.batch import BadItem, decode_items, decode_one
from detector.decoders.hubble import parse_time
from detector.errors import DecodeError
from detector.records import (
    API_AUDIT,
    DENIED,
    ERROR,
    UNAUTHENTICATED,
    FlowRecord,
    outcome_for_status,
)

API_SERVER: Final = "kube-apiserver"
_SA_PREFIX: Final = "system:serviceaccount:"
_DECISION: Final = "authorization.k8s.io/decision"


def _event_record(ev: Any, source: str | None, offset: int | None) -> FlowRecord | None:
    if not isinstance(ev, dict):
        raise BadItem("not_audit")
    stage = ev.get("stage")
    if "auditID" not in ev and "verb" not in ev and "requestURI" not in ev:
        raise BadItem("not_audit")
    rs = ev.get("responseStatus")
    rs = rs if isinstance(rs, dict) else {}
    code = rs.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) else None

    if stage == "RequestReceived":
        return None

    user = ev.get("user")
    user = user if isinstance(user, dict) else {}
    username = user.get("username")
    principal = username if isinstance(username, str) and username else None
    message = rs.get("message")
    failed_authn = status == 401 or (
        principal is None
        and isinstance(message, str)
        and message.startswith("Authentication failed")
    )
    if stage == "ResponseStarted" and not failed_authn and status != 101:
        return None
    if stage == "ResponseComplete" and status == 101:
        return None

    annotations = ev.get("annotations")
    decision = annotations.get(_DECISION) if isinstance(annotations, dict) else None
    if failed_authn:
        outcome = UNAUTHENTICATED
    elif decision == "forbid" or status == 403:
        outcome = DENIED
    elif stage == "Panic":
        outcome = ERROR
    else:
        outcome = outcome_for_status(status)

    ts = parse_time(ev.get("requestReceivedTimestamp"))
    stage_ts = parse_time(ev.get("stageTimestamp"))
    if ts is None:
        ts = stage_ts if stage_ts is not None else parse_time(ev.get("timestamp"))
    if ts is None:
        meta = ev.get("metadata")
        ts = parse_time(meta.get("creationTimestamp")) if isinstance(meta, dict) else None
    if ts is None:
        raise BadItem("bad_timestamp")
    duration = (stage_ts - ts) * 1000.0 if stage_ts is not None and stage_ts >= ts else None

    verb = ev.get("verb")
    verb = verb if isinstance(verb, str) and verb else None
    uri = ev.get("requestURI")
    route = uri.split("?", 1)[0] if isinstance(uri, str) and uri else None

    obj = ev.get("objectRef")
    obj = obj if isinstance(obj, dict) else {}
    resource = obj.get("resource") if isinstance(obj.get("resource"), str) else None
    sub = obj.get("subresource")
    if resource and isinstance(sub, str) and sub:
        resource = f"{resource}/{sub}"
    detail_parts = [p for p in (resource, verb) if p]
    imp = ev.get("impersonatedUser")
    if isinstance(imp, dict) and isinstance(imp.get("username"), str):
        detail_parts.append(f"as {imp['username']}")
    ns = obj.get("namespace")

    src_ns = None
    if principal is not None and principal.startswith(_SA_PREFIX):
        src_ns = principal[len(_SA_PREFIX) :].split(":", 1)[0] or None
    ips = ev.get("sourceIPs")
    src_ip = ips[0] if isinstance(ips, list) and ips and isinstance(ips[0], str) else None
    audit_id = ev.get("auditID")

    return FlowRecord(
        ts=ts,
        kind=API_AUDIT,
        src_principal=principal,
        src_namespace=src_ns,
        src_ip=src_ip,
        dst_namespace=ns if isinstance(ns, str) and ns else None,
        dst_service=API_SERVER,
        method=verb,
        route=route,
        status=status,
        outcome=outcome,
        duration_ms=duration,
        request_id=audit_id if isinstance(audit_id, str) and audit_id else None,
        detail=" ".join(detail_parts) or None,
        source=source,
        offset=offset,
    )


def decode(data: bytes, source: str | None = None, offset: int | None = None) -> list[FlowRecord]:
    """One audit ``Event`` (or an ``EventList``) -> ``api_audit`` records."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DecodeError("not_json") from None
    if isinstance(obj, dict) and isinstance(obj.get("items"), list) and "auditID" not in obj:
        return decode_items(obj["items"], _event_record, source, offset)
    return decode_one(obj, _event_record, source, offset)
