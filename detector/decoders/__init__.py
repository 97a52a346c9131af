"""Decoders: raw input units (bytes) -> canonical ``FlowRecord``s. One module per format family.

Contract of every decoder (a plain function, registered below by format name):

    decode(data: bytes, source: str | None = None, offset: int | None = None) -> list[FlowRecord]

* ``data`` is one unit as the source delivers it: a line (without its newline) for files and
  stdin, a message value for Kafka. A unit may hold zero, one or many records (OTLP, Hubble batch).
* A unit that is not this format, or is malformed, raises ``DecodeError(reason)`` with a short,
  bounded ``reason`` (it becomes a metric label): ``not_json``, ``truncated``, ``bad_field`` …
* A multi-record unit with some bad items raises ``PartialDecode(good_records, problems)``.
* Decoders never raise anything else on any input (property-tested with arbitrary bytes), never
  log per record, and set ``source``/``offset`` on what they return.
* Decoders fill only what the input says; cluster maps, static source attributes and trust
  domains are applied later by ``flows.Resolver``.

Adding a format: one module exposing ``decode`` plus one line in ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from detector.records import FlowRecord

Decoder = Callable[[bytes, "str | None", "int | None"], "list[FlowRecord]"]

# format name -> "module:function". Imported lazily so one broken optional dependency does not
# take every format down, and ``detector --help`` stays fast.
_REGISTRY: Final[dict[str, str]] = {
    # the compiled decoders when built (same records), else envoy.decode_text / decode_json
    "envoy_text": "detector.fastpath:decode_envoy_text",
    "envoy_json": "detector.fastpath:decode_envoy_json",
    "linkerd": "detector.decoders.linkerd:decode",
    "hubble": "detector.decoders.hubble:decode",
    "k8s_audit": "detector.decoders.k8s_audit:decode",
    "otlp_proto": "detector.decoders.otlp:decode_proto",
    "otlp_proto_logs": "detector.decoders.otlp:decode_proto_logs",
    "otlp_proto_traces": "detector.decoders.otlp:decode_proto_traces",
    "otlp_json": "detector.decoders.otlp:decode_json",
    "auto": "detector.decoders.sniff:decode",
    # internal: records already decoded and resolved, re-keyed between replicas (scale-out)
    "detector_flow": "detector.decoders.internal:decode",
}

FORMATS: Final = tuple(_REGISTRY)

_cache: dict[str, Decoder] = {}


def get_decoder(fmt: str) -> Decoder:
    """The decoder registered for ``fmt``; ``KeyError`` for an unknown name."""
    try:
        return _cache[fmt]
    except KeyError:
        pass
    target = _REGISTRY[fmt]
    module_name, func_name = target.split(":")
    func: Decoder = getattr(importlib.import_module(module_name), func_name)
    _cache[fmt] = func
    return func
