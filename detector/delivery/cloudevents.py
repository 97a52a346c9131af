"""CloudEvents 1.0 structured-mode envelope (JSON event format) for outbound payloads.

Contract: ``envelope(kind, payload, event_id, source)`` wraps an OCSF finding or action as
``{"specversion": "1.0", "id", "source", "type", "subject", "time", "datacontenttype", "data"}``
and is sent with content type ``application/cloudevents+json``. Every attribute is a pure
function of the payload (``id`` is the ``webhook-id``, ``time`` the payload's OCSF event time,
never the wall clock), so a retried or replayed envelope has the same bytes and signature base.
``type`` is reverse-DNS: ``io.detector.finding.{create,update,close}`` for findings,
``io.detector.action.<activity>`` for remediation actions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

CONTENT_TYPE: Final = "application/cloudevents+json"
SPEC_VERSION: Final = "1.0"
_FINDING_TYPES: Final = {1: "create", 2: "update", 3: "close"}


def _rfc3339(ms: Any) -> str | None:
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return None
    t = dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_type(kind: str, payload: Mapping[str, Any]) -> str:
    if kind == "findings":
        return "io.detector.finding." + _FINDING_TYPES.get(
            int(payload.get("activity_id") or 0), "other"
        )
    activity = str(payload.get("activity_name") or payload.get("activity_id") or "other")
    return "io.detector.action." + activity.lower().replace(" ", "_")


def envelope(kind: str, payload: Mapping[str, Any], event_id: str, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": source,
        "type": event_type(kind, payload),
    }
    info = payload.get("finding_info")
    meta = payload.get("metadata")
    if isinstance(info, Mapping) and info.get("uid"):
        out["subject"] = str(info["uid"])
    elif isinstance(meta, Mapping) and meta.get("correlation_uid"):
        out["subject"] = str(meta["correlation_uid"])
    t = _rfc3339(payload.get("time"))
    if t is not None:
        out["time"] = t
    out["datacontenttype"] = "application/json"
    out["data"] = payload
    return out
