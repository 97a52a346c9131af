"""The internal record format (``detector_flow``): records the ingest stage has already decoded
and resolved, on their way to the replica that owns their caller identity (``repartition``).

Contract:
* ``encode_records(records)`` gives one unit: a JSON array of records, each a JSON array of the
  ``FlowRecord`` fields in order (``records.FIELDS``).
* ``encode_clocks(clocks)`` gives a clock unit: a JSON object ``{"clocks": {input partition:
  [event time or null, idle]}}`` an ingest replica sends to every internal partition;
  ``decode_clocks`` gives it back, or None when the unit is not a valid clock unit. Record
  units start with ``[``, clock units with ``{``.
* ``decode`` (the registered decoder) gives records back unchanged. A unit that is not that shape
  (a stray or hostile producer on the topic) raises ``DecodeError`` (``not_json``,
  ``bad_shape``, ``bad_field``) like any bad input: wrong types never reach the aggregator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import orjson

from detector.errors import DecodeError
from detector.records import FIELDS, OUTCOMES, FlowRecord

FORMAT = "detector_flow"
_NFIELDS = len(FIELDS)
_NUMERIC = (int, float)
_OUTCOMES = frozenset(OUTCOMES)


def encode_records(records: Sequence[FlowRecord]) -> bytes:
    return orjson.dumps([tuple(r) for r in records])


def decode(data: bytes, source: str | None = None, offset: int | None = None) -> list[FlowRecord]:
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DecodeError("not_json") from None
    if not isinstance(items, list):
        raise DecodeError("bad_shape")
    out: list[FlowRecord] = []
    append = out.append
    for it in items:
        # The aggregator trusts types: check what it computes with or keys on.
        if (
            not isinstance(it, list)
            or len(it) != _NFIELDS
            or not isinstance(it[0], _NUMERIC)
            or isinstance(it[0], bool)
            or not math.isfinite(it[0])
            or not isinstance(it[1], str)
            or not isinstance(it[14], str)
            or it[14] not in _OUTCOMES
            or type(it[15]) is not int
            or type(it[16]) is not int
            or not (it[17] is None or isinstance(it[17], _NUMERIC))
        ):
            raise DecodeError("bad_field")
        append(FlowRecord._make(it))
    return out


def encode_clocks(clocks: dict[str, tuple[float | None, bool]]) -> bytes:
    return orjson.dumps({"clocks": {k: [ts, idle] for k, (ts, idle) in clocks.items()}})


def decode_clocks(data: bytes) -> dict[str, tuple[float | None, bool]] | None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    clocks = doc.get("clocks") if isinstance(doc, dict) else None
    if not isinstance(clocks, dict):
        return None
    out: dict[str, tuple[float | None, bool]] = {}
    for k, v in clocks.items():
        if not (isinstance(v, list) and len(v) == 2 and isinstance(v[1], bool)):
            return None
        ts = v[0]
        if ts is not None and (
            isinstance(ts, bool) or not isinstance(ts, _NUMERIC) or not math.isfinite(ts)
        ):
            return None
        out[k] = (None if ts is None else float(ts), v[1])
    return out
