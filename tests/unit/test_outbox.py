"""The SQLite outbox on its own: idempotency, order per incident, retries, dead letters, crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.delivery.outbox import NewMessage, Outbox, OutboxStore, Result


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[OutboxStore]:
    s = OutboxStore(tmp_path / "o.sqlite", clock=clock)
    yield s
    s.close()


def msg(mid: str, key: str, ep: str = "soc") -> NewMessage:
    return NewMessage(ep, mid, key, f'{{"id":"{mid}"}}'.encode())


def test_wal_and_idempotent_enqueue(store: OutboxStore) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.enqueue_many([msg("a", "i1"), msg("b", "i1")]) == 2
    assert store.enqueue_many([msg("a", "i1"), msg("c", "i2")]) == 1
    assert store.enqueue("soc", "a", {"other": "body"}, "i1") == 0
    assert store.enqueue_many([msg("a", "i1", ep="other")]) == 1  # per endpoint
    assert store.counts("soc")["pending"] == 3


def test_only_the_oldest_active_message_of_an_incident_is_claimed(
    store: OutboxStore, clock: FakeClock
) -> None:
    store.enqueue_many([msg("a1", "A"), msg("b1", "B"), msg("a2", "A"), msg("a3", "A")])
    got = store.claim("soc", clock.t, 10)
    assert [c.message_id for c in got] == ["a1", "b1"]
    assert store.claim("soc", clock.t, 10) == []  # a2 waits while a1 is in flight
    a1, b1 = got
    store.record([Result(a1.id, "retry", next_attempt_at=clock.t + 5, error="HTTP 503")])
    store.record([Result(b1.id, "delivered")])
    assert store.claim("soc", clock.t, 10) == []  # a1 pending but not due: a2 still waits
    assert store.next_due("soc") == clock.t + 5
    clock.t += 5
    again = store.claim("soc", clock.t, 10)
    assert [(c.message_id, c.attempts) for c in again] == [("a1", 1)]
    store.record([Result(again[0].id, "dead", reason="http_400")])
    # a dead letter does not block its incident
    assert [c.message_id for c in store.claim("soc", clock.t, 10)] == ["a2"]


def test_dead_letters_list_and_replay(store: OutboxStore, clock: FakeClock) -> None:
    store.enqueue_many([msg("a", "A"), msg("b", "B"), msg("c", "C", ep="x")])
    rows = store.claim("soc", clock.t, 10) + store.claim("x", clock.t, 10)
    store.record([Result(r.id, "dead", reason="http_422", error="HTTP 422") for r in rows])
    dead = store.list_dead()
    assert [(d.message_id, d.reason, d.attempts) for d in dead] == [
        ("a", "http_422", 1),
        ("b", "http_422", 1),
        ("c", "http_422", 1),
    ]
    assert [d.message_id for d in store.list_dead(endpoint="x")] == ["c"]
    assert store.replay_dead([dead[0].id]) == 1
    assert store.replay_dead(endpoint="x") == 1
    again = store.claim("soc", clock.t, 10)
    assert [(c.message_id, c.attempts) for c in again] == [("a", 0)]
    assert store.body(again[0].id) == b'{"id":"a"}'
    assert store.replay_dead() == 1  # "b"


def test_disable_endpoint(store: OutboxStore, clock: FakeClock) -> None:
    store.enqueue_many([msg("a", "A"), msg("b", "A"), msg("c", "C", ep="x")])
    assert store.disable_endpoint("soc") == 2
    assert store.enqueue_many([msg("d", "D")]) == 1
    assert {d.message_id: d.reason for d in store.list_dead()} == {
        "a": "endpoint_disabled",
        "b": "endpoint_disabled",
        "d": "endpoint_disabled",
    }
    assert store.claim("soc", clock.t, 10) == []
    assert store.replay_dead() == 0
    assert store.enable_endpoint("soc")
    assert store.replay_dead() == 3
    assert store.counts("x")["pending"] == 1


def test_crash_recovery_returns_in_flight_rows(tmp_path: Path, clock: FakeClock) -> None:
    s = OutboxStore(tmp_path / "o.sqlite", clock=clock)
    s.enqueue_many([msg("a", "A"), msg("b", "B")])
    assert len(s.claim("soc", clock.t, 10)) == 2
    s.db.close()  # no clean shutdown
    s2 = OutboxStore(tmp_path / "o.sqlite", clock=clock)
    try:
        assert s2.recovered == 2
        assert [c.message_id for c in s2.claim("soc", clock.t, 10)] == ["a", "b"]
    finally:
        s2.close()


def test_prune_keeps_recent_delivered(store: OutboxStore, clock: FakeClock) -> None:
    store.enqueue_many([msg("a", "A"), msg("b", "B")])
    a, b = store.claim("soc", clock.t, 10)
    store.record([Result(a.id, "delivered")])
    clock.t += 100
    store.record([Result(b.id, "delivered")])
    assert store.prune(50) == 1
    assert store.counts()["delivered"] == 1
    assert store.enqueue_many([msg("b", "B")]) == 0  # still idempotent within retention


async def test_async_outbox_runs_on_its_own_thread(tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.sqlite")
    try:
        assert await ob.enqueue("soc", "m1", {"x": 1}, "K") == 1
        assert await ob.enqueue("soc", "m1", {"x": 1}, "K") == 0
        assert await ob.active() == 1
        got = await ob.claim("soc", 10**12, 5)
        await ob.record([Result(got[0].id, "delivered")])
        assert (await ob.counts())["delivered"] == 1
    finally:
        await ob.close()


async def test_sink_from_settings_opens_the_file_synchronously(tmp_path: Path) -> None:
    from detector.delivery import DeliverySettings, WebhookSink
    from detector.delivery.signing import new_secret

    settings = DeliverySettings.model_validate(
        {
            "outbox_path": str(tmp_path / "state" / "outbox.sqlite"),
            "webhooks": [{"name": "soc", "url": "http://127.0.0.1:9/h", "secrets": [new_secret()]}],
        }
    )
    sink = WebhookSink.from_settings(settings)
    assert (tmp_path / "state" / "outbox.sqlite").exists()
    await sink.close(drain_s=0)
