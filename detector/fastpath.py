"""Selection of the compiled hot path, with the pure-Python modules as its reference.

``detector._fastpath`` (Cython, compiled by ``pip install -e .`` when a C compiler is at hand)
holds compiled versions of the two costliest steps of the core: decoding Envoy/Istio JSON
access logs and ``WindowAggregator.add_batch``. It is optional.

Contract:
* ``COMPILED`` is True when the compiled module imported and the environment variable
  ``DETECTOR_PURE_PYTHON`` is unset, empty or ``0`` (read once, at import).
* ``decode_envoy_json`` / ``decode_envoy_text`` are then the compiled decoders, else
  ``envoy.decode_json`` / ``envoy.decode_text``; the decoder registry names them.
* ``batch_decoder(fmt)`` is the compiled batch loop for a format (``envoy_json``,
  ``envoy_text``) or None:
  ``(units, offsets, stream, max_bytes, slow) -> (records, bad_units)``, handing every unit it
  does not take to ``slow(unit, offset)`` (the pipeline's per-unit path: records or None).
* ``resolve_records(records, resolver, static)`` is ``[resolver.resolve(r, static) for r in
  records]`` (``flows.Resolver``), compiled or not.
* ``template_path`` is ``flows.template_path`` compiled, or None; ``has_spans(records)`` says
  whether any record is a span half (or has a parent span id), compiled or not.
* ``aggregate_kernel()`` is the compiled ``add_batch`` (``(agg, stream, records, first_offset)``)
  and ``accumulator_type()`` the accumulator class it creates, or None and ``flows._Acc``;
  ``materialiser()`` turns a closed window's accumulators into ``EdgeWindow``s, or None.
* ``forest_leaf_depths`` walks an isolation forest's flat arrays (``PackedForest``), or None.
* Both paths give identical records, windows and dead-letter reasons (tests/unit/test_fastpath.py
  compares them); the pure-Python modules stay the reference for behaviour.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from detector.decoders.envoy import decode_json as _py_decode_json
from detector.decoders.envoy import decode_text as _py_decode_text
from detector.records import SPAN

if TYPE_CHECKING:
    from detector.records import FlowRecord


def _load() -> ModuleType | None:
    if os.environ.get("DETECTOR_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from detector import _fastpath  # type: ignore[attr-defined]
    except ImportError:  # not built (no compiler at install time): the pure-Python path
        return None
    return _fastpath  # type: ignore[no-any-return]


_compiled = _load()
COMPILED: bool = _compiled is not None

decode_envoy_json: Callable[[bytes, str | None, int | None], list[FlowRecord]] = (
    _compiled.decode_envoy_json if _compiled is not None else _py_decode_json
)


BatchDecoder = Callable[
    [list[bytes], list[int], str, int, Callable[[bytes, int], "list[FlowRecord] | None"]],
    tuple[list["FlowRecord"], int],
]


decode_envoy_text: Callable[[bytes, str | None, int | None], list[FlowRecord]] = (
    _compiled.decode_envoy_text if _compiled is not None else _py_decode_text
)


def batch_decoder(fmt: str) -> BatchDecoder | None:
    """The compiled batch loop for ``fmt``, or None (the pipeline's own loop then)."""
    if _compiled is None:
        return None
    if fmt == "envoy_json":
        return _compiled.decode_envoy_json_units  # type: ignore[no-any-return]
    if fmt == "envoy_text":
        return _compiled.decode_envoy_text_units  # type: ignore[no-any-return]
    if fmt == "k8s_audit":
        return _compiled.decode_k8s_audit_units  # type: ignore[no-any-return]
    if fmt == "auto":  # the access-log units of a sniffed batch; the rest unit by unit
        return _compiled.decode_auto_units  # type: ignore[no-any-return]
    return None


def _resolve_records_py(records: list[FlowRecord], resolver: Any, static: Any) -> list[FlowRecord]:
    fill = resolver.resolve
    # ``resolve`` returns a record naming both clusters and the namespace unchanged: skip
    # the call for those (enriched mesh logs, the common case).
    return [
        r
        if r.src_cluster is not None and r.dst_cluster is not None and r.dst_namespace is not None
        else fill(r, static)
        for r in records
    ]


resolve_records: Callable[[list[FlowRecord], Any, Any], list[FlowRecord]] = (
    _compiled.resolve_records if _compiled is not None else _resolve_records_py
)


template_path: Callable[[str], str] | None = (
    _compiled.template_path if _compiled is not None else None
)


def _has_spans_py(records: list[FlowRecord]) -> bool:
    return any(r.kind == SPAN or r.parent_span_id is not None for r in records)


has_spans: Callable[[list[FlowRecord]], bool] = (
    _compiled.has_spans if _compiled is not None else _has_spans_py
)


def aggregate_kernel() -> Callable[[Any, str, list[FlowRecord], int | None], None] | None:
    """The compiled ``WindowAggregator.add_batch``, or None on the pure-Python path."""
    return _compiled.aggregate if _compiled is not None else None


def materialiser() -> Callable[[float, float, dict[Any, Any]], list[Any]] | None:
    """The compiled ``[flows._materialise(w, ws, key, acc) for key, acc in edges.items()]``."""
    return _compiled.materialise if _compiled is not None else None


def accumulator_type() -> type | None:
    """The compiled edge-window accumulator class, or None on the pure-Python path."""
    return _compiled.Acc if _compiled is not None else None


forest_leaf_depths: Callable[..., None] | None = (
    _compiled.forest_leaf_depths if _compiled is not None else None
)
