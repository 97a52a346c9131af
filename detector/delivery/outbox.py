"""Durable outbox: the SQLite queue every outbound webhook delivery goes through.

Contract:
* One SQLite file (stdlib ``sqlite3``, WAL, ``synchronous=FULL`` by default) holds one row per
  (endpoint, message): the exact body bytes that will be signed and sent, its ``webhook-id``
  (``message_id``), kind, ordering key (the incident uid) and delivery state
  ``pending -> inflight -> delivered | dead``. ``enqueue_many`` is idempotent on
  (endpoint, message_id) - re-emitting after a restart inserts nothing - and returns only after
  the transaction is committed: that commit is the acknowledgement the pipeline waits for.
* Order per incident: ``claim`` hands out only the oldest active (pending or inflight) row of
  each (endpoint, ordering key), so a message is never sent while an earlier one of the same
  incident on the same endpoint is pending or in flight. Dead-lettered rows do not block (one
  rejected message must not wedge an incident forever); replaying one may deliver it after its
  successors, which the receiver sees from ``metadata.sequence``.
* Crash safety: opening the store returns ``inflight`` rows to ``pending`` (they may have reached
  the receiver: delivery is at-least-once, receivers dedupe by ``webhook-id``).
* Disabled endpoints (410 Gone) are persisted in ``endpoints``; their pending rows and every
  later enqueue go straight to dead letters with reason ``endpoint_disabled``.
* Dead letters are rows in state ``dead`` with a ``reason`` (``http_<code>``, ``max_attempts``,
  ``max_age``, ``endpoint_disabled``); keeping them in the same table keeps the idempotency key.
  ``replay_dead`` puts them back to ``pending`` with ``attempts = 0`` and the same
  ``webhook-id`` and body (rows of still-disabled endpoints are skipped: enable first).
* Delivered rows are kept ``retention_s`` so late duplicates stay idempotent; ``prune`` deletes
  older ones.
* ``OutboxStore`` is the synchronous store (one connection, not thread-safe; the CLI uses it).
  ``Outbox`` is the asyncio face: every call runs on one dedicated thread, so the event loop
  never blocks on disk and SQLite never sees two threads.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import orjson

from detector.errors import InfrastructureError

T = TypeVar("T")

SCHEMA_VERSION: Final = 1
ENDPOINT_DISABLED: Final = "endpoint_disabled"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint        TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    ordering_key    TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    next_attempt_at REAL    NOT NULL,
    finished_at     REAL,
    reason          TEXT,
    last_error      TEXT,
    UNIQUE (endpoint, message_id)
);
-- The scheduler's working set: small even when millions of delivered rows are retained.
CREATE INDEX IF NOT EXISTS messages_active ON messages (endpoint, ordering_key, id)
    WHERE state IN ('pending', 'inflight');
CREATE INDEX IF NOT EXISTS messages_dead ON messages (endpoint, id) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS messages_done ON messages (finished_at) WHERE state = 'delivered';
CREATE TABLE IF NOT EXISTS endpoints (
    name       TEXT PRIMARY KEY,
    disabled   INTEGER NOT NULL DEFAULT 0,
    reason     TEXT,
    changed_at REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Oldest active row per incident (the only one that may be sent), then the due ones among them.
_HEADS: Final = """
SELECT m.id, m.message_id, m.kind, m.ordering_key, m.content_type, m.body, m.attempts,
       m.created_at, m.next_attempt_at
FROM (SELECT MIN(id) AS id FROM messages
      WHERE endpoint = ? AND state IN ('pending', 'inflight') GROUP BY ordering_key) h
JOIN messages m ON m.id = h.id
WHERE m.state = 'pending' AND m.next_attempt_at <= ?
ORDER BY m.next_attempt_at, m.id
LIMIT ?
"""
_NEXT_DUE: Final = """
SELECT MIN(m.next_attempt_at)
FROM (SELECT MIN(id) AS id FROM messages
      WHERE endpoint = ? AND state IN ('pending', 'inflight') GROUP BY ordering_key) h
JOIN messages m ON m.id = h.id
WHERE m.state = 'pending'
"""


@dataclass(frozen=True, slots=True)
class NewMessage:
    endpoint: str
    message_id: str
    ordering_key: str
    body: bytes
    kind: str = "findings"
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    message_id: str
    kind: str
    ordering_key: str
    content_type: str
    body: bytes
    attempts: int  # attempts made before this one
    created_at: float
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt of row ``id`` came to (``next_attempt_at`` only for ``retry``)."""

    id: int
    outcome: Literal["delivered", "retry", "dead"]
    next_attempt_at: float = 0.0
    reason: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    endpoint: str
    message_id: str
    kind: str
    ordering_key: str
    reason: str
    attempts: int
    created_at: float
    died_at: float
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def encode(payload: bytes | Mapping[str, Any]) -> bytes:
    return payload if isinstance(payload, bytes) else orjson.dumps(payload)


class OutboxStore:
    """The synchronous SQLite store (see the module contract)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], float] = time.time,
        recover: bool = True,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every write below opens its own BEGIN IMMEDIATE transaction.
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.execute("PRAGMA busy_timeout=10000")
            self.db.executescript(_SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise InfrastructureError(
                    f"outbox {self.path}: schema version {row[0]}, this release reads "
                    f"{SCHEMA_VERSION}"
                )
            self.recovered = self.recover() if recover else 0
        except sqlite3.Error as e:
            raise InfrastructureError(f"outbox {self.path}: {e}") from e

    # -- plumbing -----------------------------------------------------------------------------

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return out
        except sqlite3.Error as e:
            # Disk full, file gone, locked past busy_timeout: the pipeline must not commit.
            raise InfrastructureError(f"outbox {self.path}: {e}") from e

    def close(self) -> None:
        self.db.close()

    # -- writes -------------------------------------------------------------------------------

    def recover(self) -> int:
        """Rows left in flight by a crash go back to pending; returns how many."""
        return self._tx(
            lambda db: (
                db.execute("UPDATE messages SET state='pending' WHERE state='inflight'").rowcount
            )
        )

    def enqueue(
        self,
        endpoint: str,
        message_id: str,
        payload: bytes | Mapping[str, Any],
        ordering_key: str,
        *,
        kind: str = "findings",
        content_type: str = "application/json",
    ) -> int:
        return self.enqueue_many(
            [NewMessage(endpoint, message_id, ordering_key, encode(payload), kind, content_type)]
        )

    def enqueue_many(self, messages: Iterable[NewMessage]) -> int:
        """Insert new messages (idempotent on endpoint+message_id); returns how many were new."""
        now = self.clock()

        def tx(db: sqlite3.Connection) -> int:
            disabled = {r[0] for r in db.execute("SELECT name FROM endpoints WHERE disabled=1")}
            rows = [
                (
                    m.endpoint,
                    m.message_id,
                    m.kind,
                    m.ordering_key,
                    m.content_type,
                    m.body,
                    "dead" if m.endpoint in disabled else "pending",
                    now,
                    now,
                    now if m.endpoint in disabled else None,
                    ENDPOINT_DISABLED if m.endpoint in disabled else None,
                )
                for m in messages
            ]
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO messages (endpoint, message_id, kind, ordering_key,"
                " content_type, body, state, created_at, next_attempt_at, finished_at, reason)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            return db.total_changes - before

        return self._tx(tx)

    def claim(self, endpoint: str, now: float, limit: int) -> list[Claimed]:
        """Mark up to ``limit`` due incident heads of ``endpoint`` in flight and return them."""

        def tx(db: sqlite3.Connection) -> list[Claimed]:
            got = [Claimed(*r) for r in db.execute(_HEADS, (endpoint, now, limit))]
            if got:
                db.executemany(
                    "UPDATE messages SET state='inflight' WHERE id=?", [(c.id,) for c in got]
                )
            return got

        return self._tx(tx)

    def record(self, results: Sequence[Result]) -> None:
        """Apply the outcomes of one round of attempts in one transaction."""
        now = self.clock()

        def tx(db: sqlite3.Connection) -> None:
            done = [(now, r.id) for r in results if r.outcome == "delivered"]
            retry = [(r.next_attempt_at, r.error, r.id) for r in results if r.outcome == "retry"]
            dead = [(now, r.reason, r.error, r.id) for r in results if r.outcome == "dead"]
            db.executemany(
                "UPDATE messages SET state='delivered', attempts=attempts+1, finished_at=?,"
                " last_error=NULL WHERE id=?",
                done,
            )
            db.executemany(
                "UPDATE messages SET state='pending', attempts=attempts+1, next_attempt_at=?,"
                " last_error=? WHERE id=?",
                retry,
            )
            db.executemany(
                "UPDATE messages SET state='dead', attempts=attempts+1, finished_at=?, reason=?,"
                " last_error=? WHERE id=?",
                dead,
            )

        self._tx(tx)

    def release(self, ids: Sequence[int]) -> None:
        """Claimed rows that were never attempted (shutdown) go back to pending untouched."""
        self._tx(
            lambda db: db.executemany(
                "UPDATE messages SET state='pending' WHERE id=? AND state='inflight'",
                [(i,) for i in ids],
            )
        )

    def disable_endpoint(self, endpoint: str, reason: str = "http_410") -> int:
        """Persist ``endpoint`` as disabled; its pending rows become dead letters. Returns count."""
        now = self.clock()

        def tx(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO endpoints (name, disabled, reason, changed_at) VALUES (?,1,?,?)"
                " ON CONFLICT(name) DO UPDATE SET disabled=1, reason=excluded.reason,"
                " changed_at=excluded.changed_at",
                (endpoint, reason, now),
            )
            return db.execute(
                "UPDATE messages SET state='dead', finished_at=?, reason=? WHERE endpoint=?"
                " AND state IN ('pending', 'inflight')",
                (now, ENDPOINT_DISABLED, endpoint),
            ).rowcount

        return self._tx(tx)

    def enable_endpoint(self, endpoint: str) -> bool:
        """Re-enable an endpoint (an operator decision); returns whether it was disabled."""
        now = self.clock()
        return bool(
            self._tx(
                lambda db: (
                    db.execute(
                        "UPDATE endpoints SET disabled=0, reason=NULL, changed_at=? WHERE name=?"
                        " AND disabled=1",
                        (now, endpoint),
                    ).rowcount
                )
            )
        )

    def replay_dead(self, ids: Sequence[int] | None = None, *, endpoint: str | None = None) -> int:
        """Dead letters back to pending (attempts 0, same webhook-id and body).

        ``ids=None`` replays all (of ``endpoint`` if given). Rows of disabled endpoints are
        skipped. Returns how many were re-queued.
        """
        now = self.clock()
        where = ["state='dead'", "endpoint NOT IN (SELECT name FROM endpoints WHERE disabled=1)"]
        params: list[Any] = []
        if endpoint is not None:
            where.append("endpoint=?")
            params.append(endpoint)

        def tx(db: sqlite3.Connection) -> int:
            sql = (
                "UPDATE messages SET state='pending', attempts=0, next_attempt_at=?,"
                " created_at=?, finished_at=NULL, reason=NULL WHERE " + " AND ".join(where)
            )
            if ids is None:
                return db.execute(sql, [now, now, *params]).rowcount
            n = 0
            for i in ids:
                n += db.execute(sql + " AND id=?", [now, now, *params, int(i)]).rowcount
            return n

        return self._tx(tx)

    def prune(self, older_than_s: float) -> int:
        """Delete delivered rows finished more than ``older_than_s`` ago."""
        cut = self.clock() - older_than_s
        return self._tx(
            lambda db: (
                db.execute(
                    "DELETE FROM messages WHERE state='delivered' AND finished_at < ?", (cut,)
                ).rowcount
            )
        )

    # -- reads --------------------------------------------------------------------------------

    def next_due(self, endpoint: str) -> float | None:
        """Earliest ``next_attempt_at`` among the sendable heads of ``endpoint``."""
        row = self.db.execute(_NEXT_DUE, (endpoint,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def active(self) -> int:
        """Rows still to deliver (pending or in flight), all endpoints."""
        sql = "SELECT COUNT(*) FROM messages WHERE state IN ('pending', 'inflight')"
        return int(self.db.execute(sql).fetchone()[0])

    def disabled_endpoints(self) -> dict[str, str]:
        return {
            r[0]: r[1] or ""
            for r in self.db.execute("SELECT name, reason FROM endpoints WHERE disabled=1")
        }

    def counts(self, endpoint: str | None = None) -> dict[str, int]:
        sql = "SELECT state, COUNT(*) FROM messages"
        args: tuple[Any, ...] = ()
        if endpoint is not None:
            sql += " WHERE endpoint=?"
            args = (endpoint,)
        out = {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0}
        out.update({s: n for s, n in self.db.execute(sql + " GROUP BY state", args)})
        return out

    def list_dead(
        self,
        *,
        endpoint: str | None = None,
        reason: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[DeadLetter]:
        where, args = ["state='dead'", "id > ?"], [after_id]
        if endpoint is not None:
            where.append("endpoint=?")
            args.append(endpoint)  # type: ignore[arg-type]
        if reason is not None:
            where.append("reason=?")
            args.append(reason)  # type: ignore[arg-type]
        rows = self.db.execute(
            "SELECT id, endpoint, message_id, kind, ordering_key, reason, attempts, created_at,"
            " finished_at, last_error FROM messages WHERE "
            + " AND ".join(where)
            + " ORDER BY id LIMIT ?",
            [*args, limit],
        )
        return [DeadLetter(*r) for r in rows]

    def body(self, row_id: int) -> bytes | None:
        row = self.db.execute("SELECT body FROM messages WHERE id=?", (row_id,)).fetchone()
        return None if row is None else bytes(row[0])


class Outbox:
    """Async face of ``OutboxStore``: every call runs on one dedicated thread."""

    def __init__(self, store: OutboxStore, executor: ThreadPoolExecutor) -> None:
        self.store = store
        self._ex = executor
        self.closed = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> Outbox:
        ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(
                ex, functools.partial(OutboxStore, path, synchronous=synchronous, clock=clock)
            )
        except BaseException:
            ex.shutdown(wait=False)
            raise
        return cls(store, ex)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.closed:
            raise InfrastructureError("outbox is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ex, functools.partial(fn, *args, **kwargs))

    async def enqueue(
        self,
        endpoint: str,
        message_id: str,
        payload: bytes | Mapping[str, Any],
        ordering_key: str,
        *,
        kind: str = "findings",
        content_type: str = "application/json",
    ) -> int:
        return await self._run(
            self.store.enqueue,
            endpoint,
            message_id,
            payload,
            ordering_key,
            kind=kind,
            content_type=content_type,
        )

    async def enqueue_many(self, messages: Sequence[NewMessage]) -> int:
        return await self._run(self.store.enqueue_many, messages)

    async def claim(self, endpoint: str, now: float, limit: int) -> list[Claimed]:
        return await self._run(self.store.claim, endpoint, now, limit)

    async def record(self, results: Sequence[Result]) -> None:
        await self._run(self.store.record, results)

    async def store_recover(self) -> int:
        return await self._run(self.store.recover)

    async def release(self, ids: Sequence[int]) -> None:
        await self._run(self.store.release, ids)

    async def next_due(self, endpoint: str) -> float | None:
        return await self._run(self.store.next_due, endpoint)

    async def disable_endpoint(self, endpoint: str, reason: str = "http_410") -> int:
        return await self._run(self.store.disable_endpoint, endpoint, reason)

    async def enable_endpoint(self, endpoint: str) -> bool:
        return await self._run(self.store.enable_endpoint, endpoint)

    async def active(self) -> int:
        return await self._run(self.store.active)

    async def disabled_endpoints(self) -> dict[str, str]:
        return await self._run(self.store.disabled_endpoints)

    async def counts(self, endpoint: str | None = None) -> dict[str, int]:
        return await self._run(self.store.counts, endpoint)

    async def list_dead(self, **kwargs: Any) -> list[DeadLetter]:
        return await self._run(self.store.list_dead, **kwargs)

    async def replay_dead(
        self, ids: Sequence[int] | None = None, *, endpoint: str | None = None
    ) -> int:
        return await self._run(self.store.replay_dead, ids, endpoint=endpoint)

    async def prune(self, older_than_s: float) -> int:
        return await self._run(self.store.prune, older_than_s)

    async def close(self) -> None:
        """Close the file. Rows still in flight stay so and return to pending on next open."""
        if self.closed:
            return
        await self._run(self.store.close)
        self.closed = True
        self._ex.shutdown(wait=True)
