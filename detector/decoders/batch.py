"""Shared shape of decoders whose unit may carry one item or a list of items.

Contract: ``decode_items(items, one, source, offset)`` runs ``one`` over every item; an item
raising ``BadItem`` is a problem (its reason kept), the others are the records. No problem:
the records; some: ``PartialDecode(records, problems)``. ``decode_one`` does the same for a
single item, turning ``BadItem`` into ``DecodeError``. ``one`` returns None for an item that is
valid but carries nothing to report (a reply flow, a RequestReceived stage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from detector.errors import DecodeError, PartialDecode
from detector.records import FlowRecord

ItemDecoder = Callable[[Any, "str | None", "int | None"], "FlowRecord | None"]


class BadItem(Exception):
    """One item of a unit is malformed; ``reason`` is a bounded label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_items(
    items: Iterable[Any], one: ItemDecoder, source: str | None, offset: int | None
) -> list[FlowRecord]:
    records: list[FlowRecord] = []
    problems: list[str] = []
    for item in items:
        try:
            rec = one(item, source, offset)
        except BadItem as e:
            problems.append(e.reason)
            continue
        if rec is not None:
            records.append(rec)
    if problems:
        raise PartialDecode(records, problems)
    return records


def decode_one(
    item: Any, one: ItemDecoder, source: str | None, offset: int | None
) -> list[FlowRecord]:
    try:
        rec = one(item, source, offset)
    except BadItem as e:
        raise DecodeError(e.reason) from None
    return [rec] if rec is not None else []
