"""Log-shipper wrappers: take the access-log line out of its envelope before decoding.

Contract:

* ``unwrap(data) -> (inner, meta)``: ``inner`` is the original line (bytes, no trailing newline),
  ``meta`` a flat ``dict[str, str]`` of what the envelope said about the emitting container. When
  no wrapper applies the result is ``(data, None)`` with ``data`` itself (the same object), so a
  caller can test ``inner is data``. A cheap first-byte test comes first: a bare Envoy text line
  (``[``) never reaches a parser, and JSON is only parsed when the head names a wrapper key.
  ``unwrap`` never raises: a malformed envelope is "no wrapper" and the decoder reports it.
* Wrappers recognised (one nested level is unwrapped too, e.g. OTel ``raw`` of a CRI line):

  - CRI (containerd, CRI-O): ``<RFC 3339 ts> <stdout|stderr> <F|P>[:tags] <line>``. A ``P`` tag
    is a partial line (the runtime split a line longer than its buffer, 16 KiB by default); the
    fragment is returned with ``meta["partial"] = "true"`` and **not** joined here: ``unwrap`` is
    stateless. Sources that can see consecutive lines should join ``P`` fragments up to the next
    ``F`` before decoding; ``wrap_decoder`` rejects a lone fragment with
    ``DecodeError("partial_line")`` rather than decode half a line.
  - docker json-file: ``{"log": "...\\n", "stream": "stdout", "time": "...", "attrs": {...}}``
    (``attrs`` holds ``io.kubernetes.*`` labels when the daemon is told to log them).
  - Fluent Bit records: ``{"log": ..., "kubernetes": {"namespace_name", "pod_name",
    "container_name", "labels": {...}}}``; also ``"message"`` instead of ``"log"``, records whose
    payload was merged into the top level (``Merge_Log On``: the payload is the record minus
    the shipper keys, re-encoded as JSON), and the array forms ``[ts, {record}]``,
    ``[tag, ts, {record}]`` and ``[[ts, {meta}], {record}]`` (Fluent Bit stdout/forward output).
  - OTel collector ``raw`` encoding: the line as one JSON string.

* ``meta`` keys (each present only when known): ``namespace``, ``pod``, ``container``,
  ``workload`` (pod labels ``service.istio.io/canonical-name``, ``app.kubernetes.io/name``,
  ``app``, else the pod name without its ReplicaSet/Job suffix), ``cluster`` (a ``cluster`` or
  ``cluster_name`` key a shipper added), ``stream``, ``time``, ``partial``, and ``reporter``:
  ``destination`` when the inner line was logged on the receiving side (an Istio ``inbound|``
  cluster, a Linkerd access log: Linkerd logs inbound requests only), ``source`` when on the
  calling side (an Istio ``outbound|`` cluster), absent when the line does not say.
* ``apply_metadata(records, meta)`` and ``wrap_decoder(decoder)``: see their docstrings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

import orjson

from detector.errors import DecodeError
from detector.records import API_AUDIT, FlowRecord

Decoder = Callable[[bytes, "str | None", "int | None"], "list[FlowRecord]"]

_HEAD: Final = 512  # wrapper keys sit early: docker writes "log" first, Fluent Bit soon after

# Keys the shipper adds around a merged (Merge_Log On) payload; everything else is the payload.
_SHIPPER_KEYS: Final = frozenset(
    {"kubernetes", "stream", "time", "@timestamp", "date", "_p", "log", "message", "logtag"}
    | {"cluster", "cluster_name", "log_processed", "attrs", "docker"}
)
_WORKLOAD_LABELS: Final = (
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
    "k8s-app",
)
# <deployment>-<replicaset hash>-<5 chars> and <job/daemonset>-<5 chars>, in the alphabet
# Kubernetes uses for generated names (no vowels, no 0/1/3).
_K8S_RAND = "[bcdfghjklmnpqrstvwxz2456789]"
_POD_SUFFIX = re.compile(rf"-(?:{_K8S_RAND}{{6,10}}-)?{_K8S_RAND}{{5}}$")
_CRI = re.compile(rb"(\d{4}-\d\d-\d\dT\S+) (stdout|stderr) ([FP])(?::\S*)? ?")


def _workload(pod: str | None, labels: Any) -> str | None:
    if isinstance(labels, dict):
        for key in _WORKLOAD_LABELS:
            v = labels.get(key)
            if isinstance(v, str) and v:
                return v
    if pod:
        return _POD_SUFFIX.sub("", pod) or pod
    return None


def _reporter(inner: bytes) -> str | None:
    """Which end of the call the emitting proxy was, told by the inner line itself."""
    if b"inbound|" in inner:
        return "destination"
    if b"outbound|" in inner:
        return "source"
    head = inner[:64]
    if b'"client.id"' in inner[:_HEAD] or b".serviceaccount.identity.linkerd." in inner:
        return "destination"
    if head[:1].isdigit() and b" - [" in inner[:200]:
        return "destination"  # Linkerd's apache-like text: "<addr> <id> - [<ts>] ..."
    return None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _payload(v: Any) -> bytes | None:
    """A wrapper's payload field as bytes without the trailing newline the runtime kept."""
    if isinstance(v, str):
        return v.rstrip("\r\n").encode("utf-8", "replace")
    if isinstance(v, dict):
        return _dumps(v)  # a payload the shipper already parsed (log_processed, etc.)
    return None


def _dumps(v: Any) -> bytes | None:
    try:
        return orjson.dumps(v)
    except (orjson.JSONEncodeError, TypeError):
        return None


def _from_record(rec: dict[str, Any]) -> tuple[bytes, dict[str, str]] | None:
    """docker json-file and Fluent Bit records (both JSON objects)."""
    meta: dict[str, str] = {}
    k8s = rec.get("kubernetes")
    attrs = rec.get("attrs")
    inner = _payload(rec.get("log"))
    if inner is None:
        inner = _payload(rec.get("message"))
    if inner is None:
        if not isinstance(k8s, dict):
            return None
        # Merge_Log On: the parsed payload sits beside the shipper's keys.
        rest = {k: v for k, v in rec.items() if k not in _SHIPPER_KEYS}
        if not rest:
            return None
        inner = _dumps(rest)
        if inner is None:
            return None
    elif not isinstance(k8s, dict) and not ("stream" in rec or "time" in rec):
        return None  # {"log": ...} alone is too weak a signal: some apps log that themselves
    if isinstance(k8s, dict):
        ns = _str(k8s.get("namespace_name"))
        pod = _str(k8s.get("pod_name"))
        container = _str(k8s.get("container_name"))
        workload = _workload(pod, k8s.get("labels"))
    elif isinstance(attrs, dict):
        ns = _str(attrs.get("io.kubernetes.pod.namespace"))
        pod = _str(attrs.get("io.kubernetes.pod.name"))
        container = _str(attrs.get("io.kubernetes.container.name"))
        workload = _workload(pod, None)
    else:
        ns = pod = container = workload = None
    for key, val in (
        ("namespace", ns),
        ("pod", pod),
        ("container", container),
        ("workload", workload),
        ("cluster", _str(rec.get("cluster")) or _str(rec.get("cluster_name"))),
        ("stream", _str(rec.get("stream"))),
        ("time", _str(rec.get("time")) or _str(rec.get("@timestamp"))),
    ):
        if val is not None:
            meta[key] = val
    return inner, meta


def _unwrap_once(data: bytes) -> tuple[bytes, dict[str, str]] | None:
    c = data[:1]
    if c == b"{":
        head = data[:_HEAD]
        if b'"log"' not in head and b'"kubernetes"' not in data and b'"message"' not in head:
            return None  # the common, unwrapped Envoy/Istio JSON line: no parse
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        return _from_record(obj) if isinstance(obj, dict) else None
    if c == b'"':
        try:
            s = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(s, str):
            return None
        return s.rstrip("\r\n").encode("utf-8", "replace"), {}
    if c == b"[":
        if data[1:2].isdigit() and data[1:5].isdigit() and data[5:6] == b"-":
            return None  # "[2024-..." is an Envoy text line, not an array
        try:
            arr = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(arr, list) or not 2 <= len(arr) <= 3 or not isinstance(arr[-1], dict):
            return None
        first = arr[0]
        if not (
            isinstance(first, int | float | str)
            or (isinstance(first, list) and first and isinstance(first[0], int | float))
        ):
            return None
        return _from_record(arr[-1])
    if c.isdigit():
        m = _CRI.match(data)
        if m is None:
            return None
        meta = {"time": m.group(1).decode("ascii", "replace"), "stream": m.group(2).decode()}
        if m.group(3) == b"P":
            meta["partial"] = "true"
        return data[m.end() :].rstrip(b"\r\n"), meta
    return None


def unwrap(data: bytes) -> tuple[bytes, dict[str, str] | None]:
    """The line inside a shipper's envelope and what the envelope says (module docstring)."""
    first = _unwrap_once(data)
    if first is None:
        return data, None
    inner, meta = first
    second = _unwrap_once(inner)
    if second is not None:
        # The outer envelope knows more about the pod (Fluent Bit around CRI, say); keep its
        # values and add the inner ones it lacks.
        inner, inner_meta = second
        meta = {**inner_meta, **meta}
        if inner_meta.get("partial"):
            meta["partial"] = "true"
    reporter = _reporter(inner)
    if reporter is not None:
        meta["reporter"] = reporter
    return inner, meta


def apply_metadata(records: list[FlowRecord], meta: dict[str, str] | None) -> list[FlowRecord]:
    """Fill, from a wrapper's ``meta``, only the fields each record left ``None``.

    The emitting pod is one end of the call, and which end is told by ``meta["reporter"]``
    (see the module docstring): ``destination`` fills ``dst_namespace``, ``dst_cluster`` and,
    when the line named no service, ``dst_service`` from the workload; ``source`` fills
    ``src_namespace``, ``src_workload`` and ``src_cluster``. Without a reporter nothing is
    filled: guessing the side would pin the pod's identity on the wrong end of an edge.
    Kubernetes audit records are left alone (the API server is not the pod). A field the
    record already has always wins over the envelope.
    """
    if not meta or not records:
        return records
    reporter = meta.get("reporter")
    ns = meta.get("namespace")
    cluster = meta.get("cluster")
    workload = meta.get("workload")
    out: list[FlowRecord] = []
    for r in records:
        upd: dict[str, Any] = {}
        if r.kind != API_AUDIT:
            if reporter == "destination":
                if r.dst_namespace is None and ns is not None:
                    upd["dst_namespace"] = ns
                if r.dst_cluster is None and cluster is not None:
                    upd["dst_cluster"] = cluster
                if r.dst_service is None and workload is not None:
                    upd["dst_service"] = workload
            elif reporter == "source":
                if r.src_namespace is None and ns is not None:
                    upd["src_namespace"] = ns
                if r.src_cluster is None and cluster is not None:
                    upd["src_cluster"] = cluster
                if r.src_workload is None and workload is not None:
                    upd["src_workload"] = workload
        out.append(r._replace(**upd) if upd else r)
    return out


def wrap_decoder(decoder: Decoder) -> Decoder:
    """A decoder (same contract) that unwraps each unit, decodes the inner line with
    ``decoder`` and then applies the envelope's metadata with ``apply_metadata``: metadata only
    fills fields that are still ``None`` after decoding, on the side named by the reporter.
    Unwrapped input goes to ``decoder`` unchanged. A lone CRI partial fragment raises
    ``DecodeError("partial_line")``. ``PartialDecode`` from ``decoder`` keeps its good records,
    with the metadata applied.
    """
    from detector.errors import PartialDecode

    def decode(
        data: bytes, source: str | None = None, offset: int | None = None
    ) -> list[FlowRecord]:
        inner, meta = unwrap(data)
        if meta is None:
            return decoder(data, source, offset)
        if meta.get("partial"):
            raise DecodeError("partial_line")
        try:
            records = decoder(inner, source, offset)
        except PartialDecode as e:
            raise PartialDecode(apply_metadata(e.records, meta), e.problems) from None
        return apply_metadata(records, meta)

    decode.__name__ = f"wrapped_{getattr(decoder, '__name__', 'decoder')}"
    decode.__doc__ = wrap_decoder.__doc__
    return decode
