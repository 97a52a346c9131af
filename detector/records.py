"""Canonical records: what every decoder produces and every later stage consumes.

Contract:
* ``FlowRecord`` is immutable (a ``NamedTuple``: cheap to build on the hot path, hashable,
  ``_replace`` for enrichment). ``ts`` is event time in float epoch seconds UTC, never wall clock.
* ``kind`` is one of ``KINDS``; ``outcome`` one of ``OUTCOMES``.
* Ids (``trace_id``, ``span_id``, ``parent_span_id``) are lower-case hex strings or ``None``.
* Unknown values are ``None`` (strings, ports, status) or ``0`` (byte counts), never ``"-"``/``""``.
* ``source`` names the input (topic/partition or file) and ``offset`` the record's position in it
  (Kafka offset or 1-based line number), for provenance and dead letters.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# Record kinds.
REQUEST: Final = "request"  # an L7 request: access-log line, server span, joined span pair
AUTH_FAILURE: Final = "auth_failure"  # mesh 401/403/mTLS failure seen at the proxy
CONNECTION: Final = "connection"  # L4 flow (Hubble, TCP access-log line)
API_AUDIT: Final = "api_audit"  # Kubernetes API audit event
SPAN: Final = "span"  # a client-side span half, waiting to be joined (see ``spans.py``)
KINDS: Final = frozenset({REQUEST, AUTH_FAILURE, CONNECTION, API_AUDIT, SPAN})

# Outcomes.
OK: Final = "ok"
ERROR: Final = "error"
DENIED: Final = "denied"  # RBAC deny, HTTP 403, Kubernetes forbid, Cilium POLICY_DENIED
UNAUTHENTICATED: Final = "unauthenticated"  # HTTP 401, JWT failure, mTLS failure, k8s authn failure
OUTCOMES: Final = (OK, ERROR, DENIED, UNAUTHENTICATED)

UNKNOWN: Final = "unknown"  # the cluster (or service) when no rule could resolve it


class FlowRecord(NamedTuple):
    """One observation of a caller talking to a service (or failing to)."""

    ts: float
    kind: str = REQUEST
    src_principal: str | None = None
    src_cluster: str | None = None
    src_namespace: str | None = None
    src_workload: str | None = None
    src_ip: str | None = None
    dst_cluster: str | None = None
    dst_namespace: str | None = None
    dst_service: str | None = None
    dst_port: int | None = None
    method: str | None = None
    route: str | None = None  # raw path as seen; templated by ``flows.RouteTemplates``
    status: int | None = None
    outcome: str = OK
    bytes_in: int = 0  # bytes received by the callee (request size)
    bytes_out: int = 0  # bytes sent back by the callee (response size)
    duration_ms: float | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    request_id: str | None = None
    detail: str | None = None  # why: response_code_details, drop reason, audit decision
    source: str | None = None
    offset: int | None = None


FIELDS: Final = FlowRecord._fields


def outcome_for_status(status: int | None) -> str:
    """The outcome an HTTP status implies when nothing more specific is known."""
    if status is None or status == 0:
        return ERROR if status == 0 else OK
    if status == 401:
        return UNAUTHENTICATED
    if status == 403:
        return DENIED
    if status >= 500:
        return ERROR
    return OK
