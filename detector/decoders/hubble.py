"""Cilium Hubble flow decoder (``hubble`` format): Hubble exporter / ``hubble observe -o json``.

Contract: the decoder contract of ``detector.decoders``. A unit is one JSON value: a wrapped flow
``{"flow": {…}, "node_name": "<cluster>/<node>", "time": …}``, a bare flow object, or a JSON
array of either (a batch: every element decoded, bad ones reported through ``PartialDecode``).
Every field is optional; uint64 values may be strings.

What one flow becomes (chosen so one connection / one request is counted once):

* **L7 HTTP**: one ``request`` record per exchange, built from the RESPONSE flow (it alone has
  the status code and ``latency_ns``). Hubble reports the RESPONSE with source and destination
  swapped (``is_reply``), so they are swapped back: ``src`` is always the caller. REQUEST flows
  are skipped (they would count the exchange twice), except a REQUEST with verdict DROPPED/DENIED
  (an L7 policy deny: the proxy answers locally, no RESPONSE flow follows), which becomes an
  ``auth_failure`` with outcome ``denied``. A 401/403 response is an ``auth_failure`` too.
* **L7 DNS**: one ``request`` record to the DNS server per query, from the REQUEST flow (UDP
  answers may be lost; the query is the event). Method ``DNS``, route the query name, detail the
  query types. DNS RESPONSE flows are skipped.
* **L3/L4 trace events** (FORWARDED): one ``connection`` record per connection attempt: a TCP SYN
  without ACK, or any non-reply UDP/ICMP/SCTP event. Replies (``is_reply``/``reply``) and the rest
  of a TCP conversation (ACK, PSH, FIN…) are skipped: Hubble reports packets, we count connections.
  Packets handed to the L7 proxy (``trace_observation_point`` TO_PROXY) are skipped too: the
  proxy reports what it does with them as L7 flows and its own upstream packets as trace events.
  A packet seen at several other observation points (overlay and endpoint) may still count twice.
* **Drops** (verdict DROPPED or policy verdict DENIED): every dropped packet counts as one attempt
  (``connection``); ``POLICY_DENIED``/``POLICY_DENY`` -> outcome ``denied``, ``AUTH_REQUIRED``
  (Cilium mutual auth) -> ``unauthenticated``, other reasons -> ``error``; the reason goes to
  ``detail``. When both drop notifications and policy-verdict events are exported, a policy drop
  can be counted twice: export one of them.
* **Policy-verdict events** (``event_type.type`` 5) with verdict FORWARDED/REDIRECTED/AUDIT:
  skipped. They announce a connection the trace and L7 events already count; a REDIRECTED verdict
  means "handed to the L7 proxy", whose requests come through as L7 flows.

Identity: Cilium flows carry no SPIFFE id and the trust domain is not in the flow, so
``src_principal`` stays ``None`` (the aggregator then keys the caller by workload).
``*_workload`` is ``workloads[0].name`` when present, else the pod name without its ReplicaSet /
pod hash suffixes (``ratings-v1-b6994bb9-jgqxb`` -> ``ratings-v1``), else (endpoints on other
nodes carry only identity labels) the ``app`` / ``app.kubernetes.io/name`` label, else a Cilium
reserved identity label (``reserved:host``, ``reserved:world``). The namespace falls back to the
``k8s:io.kubernetes.pod.namespace`` label the same way. The service-account label
(``k8s:io.cilium.k8s.policy.serviceaccount``) is not turned into a SPIFFE principal: that needs a
trust domain the flow does not carry, and a guessed one would make Hubble callers look like
mesh-authenticated ones. ``dst_service`` is ``destination_service.name``, else the first of
``destination_names`` (DNS names), else the workload, else the destination IP. Clusters
come from ``cluster_name`` (Cilium >= 1.16), else the label ``k8s:io.cilium.k8s.policy.cluster``,
else the ``<cluster>/`` prefix of ``node_name``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

import orjson

from detector.decoders.batch import BadItem, decode_items, decode_one
from detector.errors import DecodeError
from detector.records import (
    AUTH_FAILURE,
    CONNECTION,
    DENIED,
    ERROR,
    OK,
    REQUEST,
    UNAUTHENTICATED,
    FlowRecord,
    outcome_for_status,
)

_CLUSTER_LABEL: Final = "k8s:io.cilium.k8s.policy.cluster="
_NS_LABEL: Final = "k8s:io.kubernetes.pod.namespace="
_APP_LABEL: Final = "k8s:app="
_APP_NAME_LABEL: Final = "k8s:app.kubernetes.io/name="
_POLICY_VERDICT: Final = 5
_DENY_REASONS: Final = frozenset({"POLICY_DENIED", "POLICY_DENY", "133", "181"})
_AUTH_REASONS: Final = frozenset({"AUTH_REQUIRED", "189"})
_DROPPED: Final = frozenset({"DROPPED", "DENIED", "ERROR"})

# Pod names: <workload>-<replicaset hash>-<5 chars> (Deployment), <workload>-<5 chars>
# (DaemonSet, Job, bare ReplicaSet). Kubernetes draws the random suffix from a consonant+digit
# alphabet without vowels or 0/1/3 ("bcdfghjklmnpqrstvwxz2456789"); requiring it avoids eating
# real name parts such as "-redis". StatefulSet ordinals ("web-0") are kept: "-0" may be a name.
_POD_DEPLOY: Final = re.compile(r"^(.+)-[a-z0-9]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$")
_POD_SIMPLE: Final = re.compile(r"^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$")


def workload_from_pod(pod: str) -> str:
    """The owning workload's name guessed from a pod name (hash suffixes stripped)."""
    m = _POD_DEPLOY.match(pod)
    if m is not None:
        return m.group(1)
    m = _POD_SIMPLE.match(pod)
    if m is not None:
        return m.group(1)
    return pod


# -- time ---------------------------------------------------------------------------------------

_epoch_cache: dict[str, float] = {}


def parse_time(v: Any) -> float | None:
    """RFC 3339 (UTC ``Z``, up to nanoseconds), a protobuf Timestamp dict, or epoch seconds."""
    if isinstance(v, str):
        # Fast path: "2021-10-04T14:28:38.735173594Z": cache the whole-second part.
        if len(v) >= 20 and v[-1] == "Z" and v[10] == "T":
            head = v[:19]
            base = _epoch_cache.get(head)
            if base is None:
                try:
                    base = datetime.fromisoformat(head + "+00:00").timestamp()
                except ValueError:
                    return None
                if len(_epoch_cache) > 100_000:
                    _epoch_cache.clear()
                _epoch_cache[head] = base
            frac = v[19:-1]
            if not frac:
                return base
            if frac[0] != "." or not (frac[1:].isascii() and frac[1:].isdigit()):
                return None
            digits = frac[1:10]  # nanoseconds are the most RFC 3339 times carry
            return base + int(digits) / float(10 ** len(digits))
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    if isinstance(v, dict):
        s = _int(v.get("seconds"))
        if s is None:
            return None
        return s + (_int(v.get("nanos")) or 0) / 1e9
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


# -- endpoints ------------------------------------------------------------------------------------


def _endpoint(ep: dict[str, Any], default_cluster: str | None) -> tuple[str | None, ...]:
    """(cluster, namespace, workload) of a Hubble endpoint; one pass over its labels."""
    cluster = _str(ep.get("cluster_name"))
    namespace = _str(ep.get("namespace"))
    workload: str | None = None
    wls = ep.get("workloads")
    if isinstance(wls, list) and wls and isinstance(wls[0], dict):
        workload = _str(wls[0].get("name"))
    if workload is None:
        pod = ep.get("pod_name")
        if isinstance(pod, str) and pod:
            workload = workload_from_pod(pod)
    labels = ep.get("labels")
    if isinstance(labels, list) and (cluster is None or namespace is None or workload is None):
        app = reserved = None
        for lab in labels:
            if not isinstance(lab, str):
                continue
            if lab.startswith(_CLUSTER_LABEL):
                cluster = cluster or lab[len(_CLUSTER_LABEL) :] or None
            elif lab.startswith(_NS_LABEL):
                namespace = namespace or lab[len(_NS_LABEL) :] or None
            elif lab.startswith(_APP_LABEL) or lab.startswith(_APP_NAME_LABEL):
                app = app or lab.split("=", 1)[1] or None
            elif lab.startswith("reserved:"):
                reserved = lab
        # Endpoints on other nodes come with identity labels only (no pod name): the app label is
        # the best workload name left; a Cilium reserved identity (host, world) names non-pods.
        workload = workload or app or reserved
    return cluster or default_cluster, namespace, workload


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _flow_record(obj: Any, source: str | None, offset: int | None) -> FlowRecord | None:
    if not isinstance(obj, dict):
        raise BadItem("not_hubble")
    flow = obj.get("flow")
    if flow is None:
        flow = obj  # a bare flow object
        node_name = obj.get("node_name")
    else:
        node_name = obj.get("node_name") or (
            flow.get("node_name") if isinstance(flow, dict) else None
        )
    if not isinstance(flow, dict):
        raise BadItem("bad_field")
    if "verdict" not in flow and "IP" not in flow and "l7" not in flow and "source" not in flow:
        raise BadItem("not_hubble")

    ts = parse_time(flow.get("time"))
    if ts is None:
        ts = parse_time(obj.get("time"))
    if ts is None:
        raise BadItem("bad_timestamp")

    verdict = flow.get("verdict")
    verdict = verdict if isinstance(verdict, str) else str(verdict) if verdict is not None else ""
    et = flow.get("event_type")
    event_type = _int(et.get("type")) if isinstance(et, dict) else None
    reply = flow.get("is_reply") is True or flow.get("reply") is True
    dropped = verdict in _DROPPED
    l7 = flow.get("l7")
    l7 = l7 if isinstance(l7, dict) else None

    # Decide first what (if anything) this flow counts as: cheap checks before field extraction.
    kind = CONNECTION
    outcome = OK
    status: int | None = None
    method = route = detail = None
    duration: float | None = None
    swap = False
    if dropped:
        reason = flow.get("drop_reason_desc") or flow.get("drop_reason")
        reason_s = str(reason) if reason is not None else None
        if reason_s in _DENY_REASONS or (reason_s is None and event_type == _POLICY_VERDICT):
            outcome = DENIED
        elif reason_s in _AUTH_REASONS:
            outcome = UNAUTHENTICATED
        else:
            outcome = ERROR
        detail = reason_s or verdict
        if l7 is not None:
            kind = AUTH_FAILURE if outcome != ERROR else REQUEST
            http = l7.get("http")
            if isinstance(http, dict):
                method = _str(http.get("method"))
                route = _path(http.get("url"))
    elif event_type == _POLICY_VERDICT:
        return None  # see the module docstring: the connection is counted by other events
    elif l7 is not None:
        l7_type = l7.get("type")
        http = l7.get("http")
        dns = l7.get("dns")
        if isinstance(http, dict):
            if l7_type != "RESPONSE":
                return None
            swap = True
            status = _int(http.get("code"))
            outcome = outcome_for_status(status)
            kind = AUTH_FAILURE if outcome in (DENIED, UNAUTHENTICATED) else REQUEST
            method = _str(http.get("method"))
            route = _path(http.get("url"))
            lat = _int(l7.get("latency_ns"))
            duration = lat / 1e6 if lat is not None else None
        elif isinstance(dns, dict):
            if l7_type == "RESPONSE" or reply:
                return None
            kind = REQUEST
            method = "DNS"
            route = _str(dns.get("query"))
            qt = dns.get("qtypes")
            detail = ",".join(q for q in qt if isinstance(q, str)) if isinstance(qt, list) else None
        else:
            # Other L7 protocols (Kafka…): the reply-side is skipped, requests counted.
            if l7_type == "RESPONSE" or reply:
                return None
            kind = REQUEST
    else:
        if reply or flow.get("trace_observation_point") == "TO_PROXY":
            return None
        l4 = flow.get("l4")
        if isinstance(l4, dict):
            tcp = l4.get("TCP")
            if isinstance(tcp, dict):
                flags = tcp.get("flags")
                # One record per connection: the opening SYN; other segments are the same one.
                if not isinstance(flags, dict) or not flags.get("SYN") or flags.get("ACK"):
                    return None

    src = flow.get("source")
    dst = flow.get("destination")
    src = src if isinstance(src, dict) else {}
    dst = dst if isinstance(dst, dict) else {}
    ip = flow.get("IP")
    ip = ip if isinstance(ip, dict) else {}
    src_ip = _str(ip.get("source"))
    dst_ip = _str(ip.get("destination"))
    sport, dport = _ports(flow.get("l4"))
    src_names = flow.get("source_names")
    dst_names = flow.get("destination_names")
    if swap:
        src, dst = dst, src
        src_ip, dst_ip = dst_ip, src_ip
        sport, dport = dport, sport
        src_names, dst_names = dst_names, src_names

    node_cluster: str | None = None
    if isinstance(node_name, str) and "/" in node_name:
        node_cluster = node_name.split("/", 1)[0] or None

    dst_service: str | None = None
    svc = flow.get("destination_service")
    if swap:
        svc = flow.get("source_service")
    if isinstance(svc, dict):
        dst_service = _str(svc.get("name"))
    if dst_service is None and isinstance(dst_names, list) and dst_names:
        dst_service = _str(dst_names[0])
    src_cluster, src_ns, src_wl = _endpoint(src, node_cluster)
    dst_cluster, dst_ns, dst_wl = _endpoint(dst, node_cluster)
    if dst_service is None:
        dst_service = dst_wl

    headers = None
    if l7 is not None and isinstance(l7.get("http"), dict):
        headers = l7["http"].get("headers")
    request_id = _header(headers, "x-request-id") if headers else None

    return FlowRecord(
        ts=ts,
        kind=kind,
        src_principal=None,
        src_cluster=src_cluster,
        src_namespace=src_ns,
        src_workload=src_wl,
        src_ip=src_ip,
        dst_cluster=dst_cluster,
        dst_namespace=dst_ns,
        dst_service=dst_service or dst_ip,
        dst_port=dport,
        method=method,
        route=route,
        status=status,
        outcome=outcome,
        duration_ms=duration,
        request_id=request_id,
        detail=detail,
        source=source,
        offset=offset,
    )


def _ports(l4: Any) -> tuple[int | None, int | None]:
    if not isinstance(l4, dict):
        return None, None
    for proto in ("TCP", "UDP", "SCTP"):
        p = l4.get(proto)
        if isinstance(p, dict):
            return _int(p.get("source_port")), _int(p.get("destination_port"))
    return None, None


def _path(url: Any) -> str | None:
    """``http://10.0.0.1:9080/reviews/0?x=1`` -> ``/reviews/0``."""
    if not isinstance(url, str) or not url:
        return None
    if "://" in url:
        rest = url.split("://", 1)[1]
        i = rest.find("/")
        url = rest[i:] if i >= 0 else "/"
    return url.split("?", 1)[0] or "/"


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, list):
        return None
    for h in headers:
        if isinstance(h, dict) and isinstance(h.get("key"), str) and h["key"].lower() == name:
            return _str(h.get("value"))
    return None


def decode(data: bytes, source: str | None = None, offset: int | None = None) -> list[FlowRecord]:
    """One Hubble flow (wrapped or bare) or a JSON array of them -> records."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DecodeError("not_json") from None
    if isinstance(obj, list):
        return decode_items(obj, _flow_record, source, offset)
    return decode_one(obj, _flow_record, source, offset)
