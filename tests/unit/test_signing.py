"""Signing and retry policy: our headers verify with the independent standardwebhooks library."""

from __future__ import annotations

import base64
import datetime as dt
import random
import time
import uuid
from email.utils import formatdate

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from detector.delivery.retry import (
    CircuitBreaker,
    Outcome,
    backoff_s,
    classify,
    parse_retry_after,
)
from detector.delivery.settings import DeliverySettings, WebhookEndpointSettings
from detector.delivery.signing import (
    message_id,
    new_secret,
    ordering_key,
    parse_secret,
    sign_headers,
)

BODY = b'{"class_uid":2004,"finding_info":{"uid":"abc"}}'


def test_parse_secret() -> None:
    key = bytes(range(32))
    assert parse_secret("whsec_" + base64.b64encode(key).decode()) == key
    assert parse_secret("whsec_" + base64.b64encode(key).decode().rstrip("=")) == key
    for bad in ("", "secret", "whsec_", "whsec_!!!!", "whsec_" + base64.b64encode(b"x").decode()):
        with pytest.raises(ValueError):
            parse_secret(bad)


def test_headers_verify_with_standardwebhooks() -> None:
    secret = new_secret()
    h = sign_headers([parse_secret(secret)], "msg_1", BODY)
    assert set(h) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert abs(int(h["webhook-timestamp"]) - time.time()) <= 2
    assert Webhook(secret).verify(BODY, h)["finding_info"]["uid"] == "abc"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, h)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", h)


def test_rotation_sends_both_signatures() -> None:
    old, new = new_secret(), new_secret()
    h = sign_headers([parse_secret(old), parse_secret(new)], "msg_2", BODY)
    assert len(h["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, h)
    Webhook(new).verify(BODY, h)


def test_signature_matches_reference_sign() -> None:
    secret = new_secret()
    h = sign_headers([parse_secret(secret)], "msg_3", BODY, timestamp=1_700_000_000)
    ref = Webhook(secret).sign(
        "msg_3", dt.datetime.fromtimestamp(1_700_000_000, dt.UTC), BODY.decode()
    )
    assert h["webhook-signature"] == ref


def test_message_id_is_stable_and_distinct() -> None:
    inc = str(uuid.uuid4())
    f0 = {"finding_info": {"uid": inc}, "activity_id": 1, "metadata": {"uid": "u0", "sequence": 0}}
    f1 = {"finding_info": {"uid": inc}, "activity_id": 2, "metadata": {"uid": "u1", "sequence": 1}}
    assert message_id("findings", f0) == message_id("findings", dict(f0))
    assert message_id("findings", f0) != message_id("findings", f1)
    assert message_id("findings", f0) != message_id("actions", f0)
    assert message_id("findings", f0).startswith("msg_")
    # without metadata.uid: incident + activity + sequence/time; without anything: content hash
    g = {"finding_info": {"uid": inc}, "activity_id": 2, "time": 5}
    assert message_id("findings", g) != message_id("findings", {**g, "time": 6})
    assert message_id("actions", {"a": 1}) == message_id("actions", {"a": 1})
    assert ordering_key(f0) == inc
    assert ordering_key({"metadata": {"correlation_uid": inc, "uid": "x"}}) == inc


def test_classify() -> None:
    assert classify(200) is Outcome.DELIVERED and classify(204) is Outcome.DELIVERED
    assert classify(410) is Outcome.GONE
    for s in (408, 429, 500, 502, 503, 504):
        assert classify(s) is Outcome.RETRY
    for s in (301, 400, 401, 403, 404, 413, 422):
        assert classify(s) is Outcome.DEAD


def test_backoff_full_jitter_bounds() -> None:
    rng = random.Random(1)
    for attempt in range(1, 30):
        cap = min(60.0, 0.5 * 2 ** (attempt - 1))
        xs = [backoff_s(attempt, 0.5, 60.0, rng) for _ in range(200)]
        assert all(0 <= x <= cap for x in xs)
        assert max(xs) > 0.5 * cap  # spread over the whole range, not clustered
    assert backoff_s(10_000, 1.0, 5.0, rng) <= 5.0


def test_parse_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    d = parse_retry_after(formatdate(now + 30, usegmt=True), now)
    assert d is not None and 28 <= d <= 31
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0


def test_circuit_breaker() -> None:
    b = CircuitBreaker(failures=3, cooldown_s=10.0)
    for _ in range(2):
        b.record_failure(0.0)
    assert b.state(0.0) == "closed"
    b.record_failure(1.0)
    assert b.state(1.0) == "open" and b.state(10.9) == "open" and b.state(11.0) == "half_open"
    b.record_failure(11.0)  # failed probe: open again at once
    assert b.state(12.0) == "open" and b.trips == 1
    b.record_success()
    assert b.state(12.0) == "closed" and b.consecutive == 0


def test_settings_strict() -> None:
    s = new_secret()
    ep = WebhookEndpointSettings(name="soc", url="https://soc.example/hook", secrets=[s])
    assert ep.kinds == ["findings", "actions"] and ep.envelope == "none"
    bad = [
        {"secrets": []},
        {"secrets": [s, s, s]},
        {"secrets": ["plain"]},
        {"url": "ftp://x"},
        {"unknown_s": 1},
        {"envelope": "xml"},
        {"kinds": ["alerts"]},
    ]
    for extra in bad:
        with pytest.raises(ValueError):
            WebhookEndpointSettings(**{"name": "soc", "url": "http://x/", "secrets": [s], **extra})
    with pytest.raises(ValueError, match="duplicate"):
        DeliverySettings(webhooks=[ep, ep])
