"""Standard Webhooks signing: secrets, stable message ids, and the three headers.

Contract:
* ``parse_secret("whsec_<base64>")`` returns the key bytes; anything else raises ``ValueError``
  (one readable line, fit for a ``ConfigError``).
* ``message_id(kind, payload)`` is the ``webhook-id``: a pure function of the payload's identity
  (OCSF ``metadata.uid`` when present - deterministic per finding event in ``detector.findings``
  - else incident uid + activity + sequence/time, else a hash of the canonical JSON). Replays,
  retries and restarts therefore reuse it, and receivers dedupe on it.
* ``signature(keys, msg_id, timestamp, body)`` is the ``webhook-signature`` value: one
  ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` per key, space separated, so during
  a rotation (two secrets) receivers holding either secret verify.
* ``sign_headers(...)`` returns the three headers for one attempt; ``webhook-timestamp`` is the
  wall-clock second of that attempt (the spec's replay-protection window), not event time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

SECRET_PREFIX: Final = "whsec_"
# Fixed namespace: the same payload gets the same webhook-id in every process and release.
_ID_NAMESPACE: Final = uuid.UUID("0b6f3a52-8d1e-5c47-a9f0-3e2d7c1b5a64")


def parse_secret(secret: str) -> bytes:
    """``whsec_<base64>`` -> key bytes (padding optional, as the reference libraries accept)."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secret must look like whsec_<base64>")
    raw = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not valid base64 after whsec_") from None
    if len(key) < 16:
        # The spec recommends 24-64 bytes; below 16 an HMAC key is guessable.
        raise ValueError("webhook secret is too short (need at least 16 bytes of key)")
    return key


def new_secret(nbytes: int = 32) -> str:
    """A fresh random ``whsec_`` secret (for docs, tests and operators rotating keys)."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def _identity(payload: Mapping[str, Any]) -> str:
    meta = payload.get("metadata")
    if isinstance(meta, Mapping) and meta.get("uid"):
        return f"uid:{meta['uid']}"
    info = payload.get("finding_info")
    if isinstance(info, Mapping) and info.get("uid"):
        seq = meta.get("sequence") if isinstance(meta, Mapping) else None
        marker = seq if seq is not None else payload.get("time")
        return f"incident:{info['uid']}:{payload.get('activity_id')}:{marker}"
    digest = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"sha256:{digest}"


def message_id(kind: str, payload: Mapping[str, Any]) -> str:
    """The stable ``webhook-id`` of one payload of ``kind`` (``findings`` or ``actions``)."""
    return "msg_" + uuid.uuid5(_ID_NAMESPACE, f"{kind}|{_identity(payload)}").hex


def ordering_key(payload: Mapping[str, Any]) -> str:
    """The incident a payload belongs to: deliveries with the same key go out in order."""
    info = payload.get("finding_info")
    if isinstance(info, Mapping) and info.get("uid"):
        return str(info["uid"])
    meta = payload.get("metadata")
    if isinstance(meta, Mapping):
        for k in ("correlation_uid", "uid"):
            if meta.get(k):
                return str(meta[k])
    # No identity at all: its own key, so it never waits behind (or blocks) anything else.
    return _identity(payload)


def signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<sig>`` for each key, space separated (several during a secret rotation)."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(k, to_sign, hashlib.sha256).digest()).decode("ascii")
        for k in keys
    )


def sign_headers(
    keys: Sequence[bytes], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers for one delivery attempt of ``body``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature(keys, msg_id, ts, body),
    }
