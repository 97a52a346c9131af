"""The ``auto`` format: sniff each unit's format, unwrap log-shipper wrappers, then decode.

Contract: same as every decoder (see ``detector.decoders``). The decision is made per unit from
cheap byte checks on its head (no parse is done twice): JSON objects are told apart by the keys
that only one format has, text by its first bytes, and anything that is not UTF-8 text is tried
as OTLP protobuf. A unit no format claims raises ``DecodeError("unknown_format")``.

Order matters where formats overlap: wrappers first (CRI, docker json-file, Fluent Bit, OTel raw:
their payload is then sniffed again), then formats with unmistakable keys (Hubble ``"flow"``,
OTLP ``resourceSpans``/``resourceLogs``, Kubernetes audit ``auditID``, Linkerd ``client.id``),
and Istio/Envoy JSON last, as it has no fixed key set.

The compiled ``auto`` batch loop (``fastpath.batch_decoder("auto")``) repeats the checks that
name Envoy JSON and text, so it decodes exactly the units ``sniff`` would send there.
"""

from __future__ import annotations

from detector.decoders import get_decoder
from detector.errors import DecodeError
from detector.records import FlowRecord

_HEAD = 600  # bytes looked at; the discriminating keys come early in every format we know


def sniff(data: bytes) -> str | None:
    """The format name of ``data``, or None. Wrappers are reported as ``wrapped``."""
    head = data[:_HEAD].lstrip()
    if not head:
        return None
    c = head[:1]
    if c == b"{":
        if b'"log":' in head or b'"kubernetes":' in head:
            return "wrapped"
        # Istio's JSON format opens with start_time: the common case decides in one search
        if head.startswith(b'{"start_time"'):
            return "envoy_json"
        if b'"resourceSpans"' in head or b'"resourceLogs"' in head:
            return "otlp_json"
        if b'"flow":' in head or (b'"verdict":' in head and b'"IP":' in head):
            return "hubble"
        if b'"auditID"' in head or b'"audit.k8s.io/' in head:
            return "k8s_audit"
        if b'"client.id"' in head or b'"total_ns"' in head:
            return "linkerd"
        return "envoy_json"
    if c == b"[":
        # Envoy text starts with "[<ISO time>]"; a JSON array is a batch (Hubble, Fluent Bit).
        if head[1:3].isdigit():
            return "envoy_text"
        if b'"flow"' in head:
            return "hubble"
        return "wrapped"
    if c == b'"':
        return "wrapped"  # OTel raw encoding: the line as a JSON string
    if c.isdigit():
        # CRI: "2024-01-02T03:04:05.678Z stdout F ..."; Linkerd text: "10.0.0.1:5000 id - [..."
        if head[4:5] == b"-" and (b" stdout " in head[:64] or b" stderr " in head[:64]):
            return "wrapped"
        return "linkerd"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "otlp_proto"
    if c == b"\n" or c == b"\x0a":
        return "otlp_proto"
    # Protobuf messages start with a field tag (0x0a for field 1) which is not text.
    return "otlp_proto" if c < b" " else None


def decode(data: bytes, source: str | None = None, offset: int | None = None) -> list[FlowRecord]:
    fmt = sniff(data)
    if fmt is None:
        raise DecodeError("unknown_format")
    if fmt == "wrapped":
        from detector.decoders.wrappers import unwrap

        inner, meta = unwrap(data)
        if inner is data or inner == data:
            raise DecodeError("unknown_format", "looked wrapped but no wrapper matched")
        inner_fmt = sniff(inner)
        if inner_fmt is None or inner_fmt == "wrapped":
            raise DecodeError("unknown_format", "wrapped payload not recognised")
        from detector.decoders.wrappers import apply_metadata

        return apply_metadata(get_decoder(inner_fmt)(inner, source, offset), meta)
    return get_decoder(fmt)(data, source, offset)
