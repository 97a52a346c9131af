"""Webhook delivery end to end over real HTTP on loopback (DESIGN.md §6, §8).

Every request the receiver gets is verified with the independent ``standardwebhooks`` library
(never our own signing code). The receiver dedupes by ``webhook-id`` as a real one would, and
records every receipt, so the tests can tell "delivered exactly once per id" from "delivered
twice under different ids". Every wait is bounded; long outages run on a ``ScaledClock``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
import uuid
from collections.abc import Callable
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from detector.delivery import (
    AlertmanagerSettings,
    AlertmanagerSink,
    OutboxStore,
    WebhookEndpointSettings,
    WebhookSink,
)
from detector.delivery.retry import ScaledClock
from detector.delivery.signing import message_id, new_secret

pytestmark = pytest.mark.timeout(60)

SECRET = new_secret()
NS = uuid.UUID("2b0f5d3a-7c41-4e8e-9d6b-1f2a3c4d5e6f")
# Scripted answer for (webhook-id, attempt number) -> (status, headers); None means 200.
Script = Callable[[str, int], tuple[int, dict[str, str]] | None]


def finding(incident: int, seq: int, activity: int = 2) -> dict[str, Any]:
    inc = str(uuid.uuid5(NS, f"incident-{incident}"))
    return {
        "class_uid": 2004,
        "activity_id": activity,
        "time": 1_700_000_000_000 + seq * 60_000,
        "severity": "High",
        "finding_info": {"uid": inc, "title": f"incident {incident}", "types": ["UNSEEN_EDGE"]},
        "metadata": {
            "uid": str(uuid.uuid5(uuid.UUID(inc), str(seq))),
            "correlation_uid": inc,
            "sequence": seq,
        },
        "unmapped": {"seq": seq},
    }


def action(incident: int, seq: int) -> dict[str, Any]:
    inc = str(uuid.uuid5(NS, f"incident-{incident}"))
    return {
        "class_name": "Remediation Activity",
        "activity_name": "Tighten Policy",
        "time": 1_700_000_000_000 + seq * 60_000,
        "metadata": {
            "uid": str(uuid.uuid5(uuid.UUID(inc), f"action-{seq}")),
            "correlation_uid": inc,
            "sequence": seq,
        },
        "unmapped": {"seq": seq},
    }


def endpoint(url: str, **kw: Any) -> WebhookEndpointSettings:
    fast = {
        "name": "soc",
        "url": url,
        "secrets": [SECRET],
        "timeout_s": 5.0,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.2,
        "breaker_failures": 5,
        "breaker_cooldown_s": 0.2,
    }
    fast.update(kw)
    return WebhookEndpointSettings(**fast)


class Receiver:
    """A Standard Webhooks receiver on 127.0.0.1 that verifies, dedupes and records."""

    def __init__(self, secrets: list[str], script: Script | None = None, delay_s: float = 0):
        self.verifiers = [Webhook(s) for s in secrets]
        self.script = script
        self.delay_s = delay_s
        self.receipts: list[tuple[str, bytes, dict[str, str], float]] = []  # every request
        self.first: dict[str, bytes] = {}  # webhook-id -> body, first accepted receipt
        self.order: list[str] = []  # ids in first-acceptance order
        self.bad: list[str] = []
        self.tries: dict[str, int] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        wid = headers.get("webhook-id", "")
        for v in self.verifiers:  # each secret must verify on its own (rotation)
            try:
                v.verify(body, headers)
            except Exception as e:
                self.bad.append(f"{wid}: {e}")
                return web.Response(status=401)
        self.receipts.append((wid, body, headers, time.monotonic()))
        n = self.tries[wid] = self.tries.get(wid, 0) + 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        answer = self.script(wid, n) if self.script else None
        if answer is not None:
            status, extra = answer
            return web.Response(status=status, headers=extra)
        if wid in self.first:
            assert self.first[wid] == body, "same webhook-id, different body"
        else:
            self.first[wid] = body
            self.order.append(wid)
        return web.Response(status=204)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def seqs_by_incident(self) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {}
        for wid in self.order:
            p = orjson.loads(self.first[wid])
            p = p.get("data", p)
            kind = "action" if p.get("class_name") == "Remediation Activity" else "finding"
            out.setdefault(p["metadata"]["correlation_uid"], []).append(
                (kind, p["metadata"]["sequence"])
            )
        return out


async def wait_for(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_signed_ordered_delivery_of_findings_and_actions(tmp_path: Path) -> None:
    rx = Receiver([SECRET])
    url = await rx.start()
    sink = await WebhookSink.open(tmp_path / "outbox.sqlite", [endpoint(url)])
    try:
        expected: dict[str, dict[str, Any]] = {}
        for seq in range(6):
            batch = [finding(i, seq, 1 if seq == 0 else 2) for i in range(4)]
            await sink.emit(batch)
            acts = [action(i, seq) for i in range(4) if seq % 2]
            await sink.emit_actions(acts)
            expected.update({message_id("findings", f): f for f in batch})
            expected.update({message_id("actions", a): a for a in acts})
        assert await sink.drain(30)
    finally:
        await sink.close()
        await rx.stop()
    assert rx.bad == []
    assert set(rx.first) == set(expected)  # the webhook-id is the payload's stable id
    for wid, body in rx.first.items():
        assert orjson.loads(body) == expected[wid]
    _, _, headers, _ = rx.receipts[0]
    assert headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["Content-Type"] == "application/json"
    for events in rx.seqs_by_incident().values():
        finds = [s for k, s in events if k == "finding"]
        acts = [s for k, s in events if k == "action"]
        assert finds == sorted(finds) and acts == sorted(acts)
        # findings and actions of one incident share one queue: emission order holds across both
        assert [s for _, s in events] == sorted(s for _, s in events)


async def test_rotation_both_secrets_verify(tmp_path: Path) -> None:
    new = new_secret()
    rx = Receiver([SECRET, new])  # the receiver checks each secret on its own
    url = await rx.start()
    sink = await WebhookSink.open(tmp_path / "o.sqlite", [endpoint(url, secrets=[SECRET, new])])
    try:
        await sink.emit([finding(1, s) for s in range(3)])
        assert await sink.drain(20)
    finally:
        await sink.close()
        await rx.stop()
    assert rx.bad == [] and len(rx.first) == 3
    assert all(len(h["webhook-signature"].split(" ")) == 2 for _, _, h, _ in rx.receipts)
    # Receivers holding only the old or only the new secret both verify.
    _, body, headers, _ = rx.receipts[0]
    Webhook(SECRET).verify(body, headers)
    Webhook(new).verify(body, headers)


async def test_retry_after_seconds_and_http_date_are_honoured(tmp_path: Path) -> None:
    def script(wid: str, n: int) -> tuple[int, dict[str, str]] | None:
        if n == 1 and wid == first_id:
            return 429, {"Retry-After": "1"}
        if n == 1 and wid == second_id:
            when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
            return 503, {"Retry-After": format_datetime(when, usegmt=True)}
        return None

    f1, f2 = finding(1, 0, 1), finding(2, 0, 1)
    first_id, second_id = message_id("findings", f1), message_id("findings", f2)
    rx = Receiver([SECRET], script)
    url = await rx.start()
    sink = await WebhookSink.open(tmp_path / "o.sqlite", [endpoint(url)])
    try:
        await sink.emit([f1])
        await wait_for(lambda: first_id in rx.first)
        await sink.emit([f2])
        assert await sink.drain(20)
    finally:
        await sink.close()
        await rx.stop()
    assert rx.bad == []
    for wid, at_least in ((first_id, 0.95), (second_id, 0.9)):
        times = [t for w, _, _, t in rx.receipts if w == wid]
        assert len(times) == 2, times
        # backoff alone (base 0.02 s, cap 0.2 s) would have retried far sooner
        assert times[1] - times[0] >= at_least


async def test_410_disables_endpoint_persistently(tmp_path: Path) -> None:
    rx = Receiver([SECRET], lambda wid, n: (410, {}))
    url = await rx.start()
    path = tmp_path / "o.sqlite"
    sink = await WebhookSink.open(path, [endpoint(url)])
    try:
        await sink.emit([finding(1, 0, 1)])
        await wait_for(lambda: sink.endpoints["soc"].disabled)
        await sink.emit([finding(1, 1), finding(2, 0, 1)])
    finally:
        await sink.close(drain_s=0)
    # A restart remembers: nothing more is sent, new messages go straight to dead letters.
    sink = await WebhookSink.open(path, [endpoint(url)])
    try:
        await sink.emit([finding(3, 0, 1)])
        await asyncio.sleep(0.3)
    finally:
        await sink.close(drain_s=0)
        await rx.stop()
    assert len(rx.receipts) == 1
    store = OutboxStore(path)
    try:
        assert store.disabled_endpoints() == {"soc": "http_410"}
        reasons = sorted(d.reason for d in store.list_dead())
        assert reasons == ["endpoint_disabled"] * 3 + ["http_410"]
        assert store.replay_dead() == 0  # refused while the endpoint is disabled
    finally:
        store.close()


async def test_dead_letters_listed_and_replayed_with_the_same_id(tmp_path: Path) -> None:
    accept = False

    def script(wid: str, n: int) -> tuple[int, dict[str, str]] | None:
        if accept:
            return None
        return (400, {}) if wid in rejected else (500, {})

    bad, flaky, good = finding(1, 0, 1), finding(2, 0, 1), finding(3, 0, 1)
    rejected = {message_id("findings", bad)}
    rx = Receiver([SECRET], script)
    url = await rx.start()
    path = tmp_path / "o.sqlite"
    sink = await WebhookSink.open(path, [endpoint(url, max_attempts=3, breaker_failures=100)])
    try:
        await sink.emit([bad, flaky])
        assert await sink.drain(20)
        dead = await sink.outbox.list_dead()
        assert sorted(d.reason for d in dead) == ["http_400", "max_attempts"]
        assert {d.message_id for d in dead} == {message_id("findings", f) for f in (bad, flaky)}
        assert next(d for d in dead if d.reason == "max_attempts").attempts == 3
        accept = True
        await sink.emit([good])
        assert await sink.outbox.replay_dead() == 2
        assert await sink.drain(20)
        assert await sink.outbox.list_dead() == []
    finally:
        await sink.close()
        await rx.stop()
    assert rx.bad == []
    assert set(rx.first) == {message_id("findings", f) for f in (bad, flaky, good)}
    assert rx.tries[message_id("findings", bad)] == 2  # rejected once, replayed once, same id
    assert rx.tries[message_id("findings", flaky)] == 4


async def test_crash_and_receiver_outage_lose_nothing_and_keep_order(tmp_path: Path) -> None:
    rx = Receiver([SECRET], delay_s=0.002)
    url = await rx.start()
    path = tmp_path / "o.sqlite"
    settings = [endpoint(url, concurrency=8, batch=32)]
    incidents, per_incident = 12, 25
    events = [
        (i, s, "findings" if s % 5 else "actions")
        for s in range(per_incident)
        for i in range(incidents)
    ]

    def payload(e: tuple[int, int, str]) -> dict[str, Any]:
        i, s, kind = e
        return finding(i, s, 1 if s == 0 else 2) if kind == "findings" else action(i, s)

    expected = {message_id(e[2], payload(e)) for e in events}

    async def emit(sink: WebhookSink, chunk: list[tuple[int, int, str]]) -> None:
        # runs of one kind, in emission order (that order is what the receiver must see)
        for kind, run in itertools.groupby(chunk, key=lambda e: e[2]):
            ps = [payload(e) for e in run]
            await (sink.emit(ps) if kind == "findings" else sink.emit_actions(ps))

    chunks = [events[k : k + 20] for k in range(0, len(events), 20)]
    sink = await WebhookSink.open(path, settings)
    for c in chunks[:4]:
        await emit(sink, c)
    await wait_for(lambda: len(rx.order) >= 20)
    await rx.stop()  # receiver dies mid-stream
    for c in chunks[4:8]:
        await emit(sink, c)
    await asyncio.sleep(0.3)  # retries against the dead receiver, breaker opens
    assert sink.endpoints["soc"].breaker.trips >= 1
    await sink.abort()  # crash: in-flight rows stay in flight in the file

    await rx.start()  # same port
    sink = await WebhookSink.open(path, settings)
    recovered = [sink.outbox.store.recovered]
    for c in chunks[8:11]:
        await emit(sink, c)
    await wait_for(lambda: len(rx.order) >= 120)
    # Crash again while requests are certainly in flight: the receiver holds them.
    held = len(rx.receipts)
    rx.delay_s = 0.3
    await wait_for(lambda: len(rx.receipts) > held)
    await sink.abort()
    rx.delay_s = 0.002
    sink = await WebhookSink.open(path, settings)
    recovered.append(sink.outbox.store.recovered)
    await emit(sink, events[: len(events) // 2])  # the pipeline re-emits after the crash
    for c in chunks[11:]:
        await emit(sink, c)
    try:
        assert await sink.drain(40)
        assert (await sink.outbox.counts())["dead"] == 0
    finally:
        await sink.close()
        await rx.stop()
    assert rx.bad == []
    assert set(rx.first) == expected  # nothing lost, nothing under a second id
    dupes = len(rx.receipts) - len(rx.first)
    assert recovered[1] > 0  # the second crash left rows in flight; they were resent
    assert dupes < len(expected)  # duplicates only as retries of the same id
    for seq in rx.seqs_by_incident().values():
        assert [s for _, s in seq] == sorted(s for _, s in seq)


async def test_ten_minute_outage_on_a_scaled_clock_loses_nothing(tmp_path: Path) -> None:
    clock = ScaledClock(factor=300.0)  # 10 clock minutes = 2 wall seconds
    rx = Receiver([SECRET])
    url = await rx.start()
    await rx.stop()  # the outage starts before the first finding
    production_like = endpoint(
        url,
        backoff_base_s=1.0,
        backoff_max_s=60.0,
        breaker_failures=5,
        breaker_cooldown_s=30.0,
        max_attempts=15,
        max_age_s=86400.0,  # 288 wall seconds: a loaded CI box cannot age a row out
    )
    sink = await WebhookSink.open(tmp_path / "o.sqlite", [production_like], clock=clock)
    t0 = clock.now()
    try:
        emitted = []
        while clock.now() - t0 < 600:  # findings keep coming for the whole outage
            batch = [finding(i, len(emitted) // 5, 2) for i in range(5)]
            emitted += batch
            await sink.emit(batch)
            await asyncio.sleep(0.1)
        ep = sink.endpoints["soc"]
        tries_during_outage = ep.stats.get("retried", 0)
        await rx.start()
        assert await sink.drain(30)
        assert (await sink.outbox.counts())["dead"] == 0
    finally:
        await sink.close()
        await rx.stop()
    assert set(rx.first) == {message_id("findings", f) for f in emitted}
    assert ep.breaker.trips >= 1
    # The breaker keeps a dead endpoint cheap: about one probe per cool-down, not one per message.
    assert tries_during_outage < 5 + 2 * 600 / 30 + 10, tries_during_outage
    for seq in rx.seqs_by_incident().values():
        assert [s for _, s in seq] == sorted(s for _, s in seq)


async def test_cloudevents_envelope(tmp_path: Path) -> None:
    rx = Receiver([SECRET])
    url = await rx.start()
    sink = await WebhookSink.open(
        tmp_path / "o.sqlite",
        [endpoint(url, envelope="cloudevents", kinds=["findings"])],
        source="urn:detector:test",
    )
    f = finding(7, 0, 1)
    try:
        await sink.emit([f])
        await sink.emit_actions([action(7, 1)])  # this endpoint does not take actions
        assert await sink.drain(20)
    finally:
        await sink.close()
        await rx.stop()
    assert rx.bad == [] and len(rx.first) == 1
    wid, body, headers, _ = rx.receipts[0]
    assert headers["Content-Type"] == "application/cloudevents+json"
    ce = orjson.loads(body)
    assert ce["specversion"] == "1.0" and ce["id"] == wid == message_id("findings", f)
    assert ce["source"] == "urn:detector:test"
    assert ce["type"] == "io.detector.finding.create"
    assert ce["subject"] == f["finding_info"]["uid"]
    assert ce["time"] == "2023-11-14T22:13:20.000Z"
    assert ce["datacontenttype"] == "application/json" and ce["data"] == f


# -- Alertmanager ------------------------------------------------------------------------------


def am_finding(incident: int, activity: int, severity: str = "High") -> dict[str, Any]:
    f = finding(incident, 0, activity)
    f["severity"] = severity
    f["message"] = f"incident {incident} message"
    f["finding_info"]["first_seen_time"] = 1_700_000_000_000
    f["unmapped"] = {
        "finding_type": "UNSEEN_EDGE",
        "category": "security",
        "edge": {
            "text": "spiffe://td/ns/a/sa/x@east -> payments@west",
            "src_principal": f"spiffe://td/ns/a/sa/x{incident}",
            "src_cluster": "east",
            "src_ip": "10.0.0.7",
            "dst_service": "payments",
            "dst_namespace": "pay",
            "dst_cluster": "west",
        },
    }
    return f


async def test_alertmanager_payload_labels_resends_and_resolution() -> None:
    posts: list[list[dict[str, Any]]] = []

    async def alerts(request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        posts.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/v2/alerts", alerts)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink = AlertmanagerSink(
        AlertmanagerSettings(
            urls=[f"http://127.0.0.1:{port}"],
            resend_interval_s=0.2,
            generator_url="http://detector.example/incidents",
            static_labels={"source": "detector"},
        )
    )
    try:
        await sink.emit([am_finding(1, 1), am_finding(2, 1), am_finding(3, 1, "Critical")])
        await wait_for(lambda: len(posts) >= 3)  # re-sent while active
        last = posts[-1]
        assert len(last) == 2  # incidents 1 and 2 share one label set: one alert
        allowed = {"alertname", "severity", "category", "src_cluster", "dst_cluster", "source"}
        for a in last:
            assert set(a["labels"]) <= allowed
            values = " ".join(a["labels"].values())
            assert "spiffe" not in values and "10.0.0.7" not in values
            assert all(len(v) <= 128 for v in a["labels"].values())
            assert a["startsAt"] == "2023-11-14T22:13:20.000Z"
            assert dt.datetime.fromisoformat(a["endsAt"]) > dt.datetime.now(dt.UTC)
            assert a["generatorURL"] == "http://detector.example/incidents"
        high = next(a for a in last if a["labels"]["severity"] == "high")
        assert high["labels"] == {
            "alertname": "UNSEEN_EDGE",
            "severity": "high",
            "category": "security",
            "src_cluster": "east",
            "dst_cluster": "west",
            "source": "detector",
        }
        assert high["annotations"]["incidents"] == "2"
        assert set(high["annotations"]["incident_uids"].split(",")) == {
            finding(1, 0)["finding_info"]["uid"],
            finding(2, 0)["finding_info"]["uid"],
        }
        assert high["annotations"]["src_principal"].startswith("spiffe://")
        assert high["annotations"]["src_ip"] == "10.0.0.7"

        n = len(posts)
        await sink.emit([am_finding(1, 3)])  # one of two closes: the alert stays active
        await wait_for(lambda: len(posts) > n)
        high = next(a for a in posts[-1] if a["labels"]["severity"] == "high")
        assert high["annotations"]["incidents"] == "1"
        assert dt.datetime.fromisoformat(high["endsAt"]) > dt.datetime.now(dt.UTC)

        n = len(posts)
        before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        await sink.emit([am_finding(2, 3)])  # the last one closes: endsAt = now
        await wait_for(lambda: len(posts) > n)
        high = next(a for a in posts[n] if a["labels"]["severity"] == "high")
        ends = dt.datetime.fromisoformat(high["endsAt"])
        assert before <= ends <= dt.datetime.now(dt.UTC)
        await asyncio.sleep(0.5)  # once acknowledged, the resolved alert is not re-sent
        assert all(a["labels"]["severity"] == "critical" for a in posts[-1])
    finally:
        await sink.close()
        await runner.cleanup()
