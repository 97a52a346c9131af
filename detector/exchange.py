"""Shared scoring in scale-out: every replica scores every closed window, in one order.

Records are keyed by caller identity (``detector.repartition``), so each edge window is
*aggregated* on exactly one replica. But the baselines also learn mesh-level state from all
edges at once: the seasonal model's mesh-wide traffic factor, the burst model's per-address and
mesh-wide failure rates, novelty's known services and routes. A replica scoring only its own
share of the callers would learn a different mesh, and find different things, than one process
does. So the edge owners publish the windows they close to a window log (a one-partition Kafka
topic, ``ScaleOutSettings.windows_topic_name``), every replica reads all of it, and each
scores and learns each window time only once every internal partition's owner has closed it.
Every replica holds the same baselines and computes the same anomalies; each reports those
whose subject belongs to a partition it owns (``DetectionStage.owns``).

Contract:
* A log message is one internal partition's closed windows and/or its *mark*: ``{"p": n,
  "cb": closed_before or null, "w": [window rows]}``: "every window of partition ``n`` starting
  before ``cb`` is in the log before this message". Windows of one publish that exceed
  ``MAX_WINDOWS_PER_MESSAGE`` go in several messages; only the last carries the mark.
* ``WindowLedger`` (pure) turns the log into complete window times: a window time ``t`` is
  complete once every internal partition's mark is past it. Complete times come out in
  event-time order, each with its windows sorted by edge (the same batch, in the same order, on
  every replica, whatever the number of replicas). A window a new owner publishes again (it
  rebuilt it from the internal topic after a takeover) is ignored once its partition's mark
  passed it, and deduplicated by edge before that: the first copy in the log wins, on every
  replica alike.
* ``WindowLedger.state()`` is what a checkpoint keeps beside the scorer learned up to
  ``scored_before``: where to resume reading the log (the first message holding a window not
  yet scored) and the marks. A replica without a checkpoint reads the log from its start, so
  its baselines learn what every other replica learned since they started from the same model.
* ``WindowExchange`` does the Kafka I/O: ``publish`` (acknowledged before the windows' input
  offsets are committed: the edge owner holds those until the windows were scored) and a
  background reader feeding the ledger; a broker failure is an ``InfrastructureError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import orjson

from detector.errors import InfrastructureError
from detector.flows import EdgeWindow
from detector.sources.kafka import KafkaSettings, await_acks, client_kwargs

log = logging.getLogger(__name__)

MAX_WINDOWS_PER_MESSAGE = 1000  # ~300 B each: well under a broker's default 1 MB message limit

_FIELDS = [f.name for f in fields(EdgeWindow)]
_NFIELDS = len(_FIELDS)
_STR = frozenset(("src_principal", "src_cluster", "dst_namespace", "dst_service", "dst_cluster"))
_OPTIONAL_FLOAT = frozenset(("latency_p50_ms", "latency_p90_ms", "latency_p99_ms"))
_DICTS = frozenset(("routes", "failures_by_ip"))
_IDX = {name: i for i, name in enumerate(_FIELDS)}
_STR_IDX = tuple(_IDX[n] for n in _STR)
_OPT_IDX = tuple(_IDX[n] for n in _OPTIONAL_FLOAT)
_DICT_IDX = tuple(_IDX[n] for n in _DICTS)
_IPS = _IDX["src_ips"]
_NUM_IDX = tuple(
    i for n, i in _IDX.items() if n not in _STR and n not in _OPTIONAL_FLOAT and n not in _DICTS
    and n != "src_ips"
)  # fmt: skip


def edge_order(w: EdgeWindow) -> tuple[str, str, str, str, str]:
    return (w.src_principal, w.src_cluster, w.dst_namespace, w.dst_service, w.dst_cluster)


# ---------------------------------------------------------------------------------------------
# The message format


def encode(partition: int, closed_before: float | None, windows: Sequence[EdgeWindow]) -> bytes:
    cb = closed_before if closed_before is not None and math.isfinite(closed_before) else None
    rows = [[getattr(w, f) for f in _FIELDS] for w in windows]
    return orjson.dumps({"p": partition, "cb": cb, "w": rows})


def _num(v: Any) -> bool:
    t = type(v)
    # v - v is nan for inf and nan: finite floats only (bools are not ints here)
    return t is int or (t is float and v - v == 0.0)


def _row_ok(row: Any) -> bool:
    """The shape ``encode`` writes: every replica decodes every window, so this is lean."""
    if type(row) is not list or len(row) != _NFIELDS:
        return False
    for i in _NUM_IDX:
        v = row[i]
        if type(v) is not int and not (type(v) is float and v - v == 0.0):
            return False
    for i in _STR_IDX:
        if type(row[i]) is not str:
            return False
    for i in _OPT_IDX:
        v = row[i]
        if v is not None and not _num(v):
            return False
    for i in _DICT_IDX:
        d = row[i]
        if type(d) is not dict or not all(type(n) is int for n in d.values()):
            return False
    ips = row[_IPS]
    return type(ips) is list and all(type(ip) is str for ip in ips)


def decode(data: bytes) -> tuple[int, float | None, list[EdgeWindow]] | None:
    """A log message back, or None when it is not one (a stray producer: skipped, counted)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    p, cb, rows = doc.get("p"), doc.get("cb"), doc.get("w")
    if type(p) is not int or p < 0 or not (cb is None or _num(cb)) or not isinstance(rows, list):
        return None
    if not all(_row_ok(r) for r in rows):
        return None
    out = []
    for r in rows:
        r[_IPS] = tuple(r[_IPS])
        out.append(EdgeWindow(*r))
    return p, (float(cb) if cb is not None else None), out


# ---------------------------------------------------------------------------------------------
# The ledger: log messages -> complete window times


class WindowLedger:
    """Which window times every internal partition has closed; see the module docstring."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.marks: dict[int, float] = {}
        self.scored_before = -math.inf  # window times before this were handed out
        self.next_offset = 0  # of the log
        self.ignored = 0  # windows already complete when read (republished after a takeover)
        self.bad_messages = 0
        self._pending: dict[float, dict[tuple[str, ...], EdgeWindow]] = {}
        self._first_offset: dict[float, int] = {}  # per pending window time: its first message
        # per partition, its marks since the oldest pending message: (offset, mark), oldest
        # first, keeping the last one before it (a checkpoint restores the marks as they were
        # there, so reading the log again from there decides exactly as the first time)
        self._mark_log: dict[int, list[tuple[int, float]]] = {}

    @property
    def complete_before(self) -> float:
        """Window times before this are closed in every internal partition."""
        if len(self.marks) < self.partitions:
            return -math.inf
        return min(self.marks.values())

    @property
    def pending_windows(self) -> int:
        return sum(len(ws) for ws in self._pending.values())

    def add(self, offset: int, data: bytes) -> None:
        self.next_offset = max(self.next_offset, offset + 1)
        msg = decode(data)
        if msg is None or msg[0] >= self.partitions:
            self.bad_messages += 1
            return
        p, closed_before, windows = msg
        done = max(self.scored_before, self.marks.get(p, -math.inf))
        for w in windows:
            t = w.window_start
            if t < done:
                self.ignored += 1
                continue
            per = self._pending.get(t)
            if per is None:
                per = self._pending[t] = {}
                self._first_offset[t] = offset
            per.setdefault(edge_order(w), w)
        if closed_before is not None and closed_before > self.marks.get(p, -math.inf):
            self.marks[p] = closed_before
            self._mark_log.setdefault(p, []).append((offset, closed_before))

    def complete(self) -> list[list[EdgeWindow]]:
        """The window times complete since the last call, oldest first, each sorted by edge."""
        before = self.complete_before
        if before <= self.scored_before:
            return []
        out = []
        for t in sorted(t for t in self._pending if t < before):
            per = self._pending.pop(t)
            del self._first_offset[t]
            out.append([per[k] for k in sorted(per)])
        self.scored_before = before
        resume = self.resume_offset
        for entries in self._mark_log.values():
            while len(entries) > 1 and entries[1][0] < resume:
                del entries[0]
        return out

    # -- checkpoints -------------------------------------------------------------------------

    @property
    def resume_offset(self) -> int:
        """The first message holding a window not handed out yet (or the next one)."""
        return min(self._first_offset.values(), default=self.next_offset)

    def state(self) -> dict[str, Any]:
        """What a checkpoint of baselines that learned every window before ``scored_before``
        keeps: where to read the log again from, and the marks as they were there."""
        resume = self.resume_offset
        marks: dict[str, float] = {}
        for p, entries in self._mark_log.items():
            before = [m for off, m in entries if off < resume]
            if before:
                marks[str(p)] = before[-1]
        return {
            "offset": resume,
            "scored_before": _finite_or_none(self.scored_before),
            "marks": marks,
        }

    def restore(self, state: dict[str, Any]) -> int:
        """Continue from a checkpoint's ``state()``; returns the log offset to read from."""
        sb: Any = state.get("scored_before")
        self.scored_before = float(sb) if _num(sb) else -math.inf
        off = state.get("offset")
        self.next_offset = int(off) if type(off) is int and off >= 0 else 0
        marks = state.get("marks") or {}
        self.marks = {int(p): float(m) for p, m in marks.items() if str(p).isdigit() and _num(m)}
        self._mark_log = {p: [(self.next_offset - 1, m)] for p, m in self.marks.items()}
        return self.next_offset


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------
# Kafka I/O


class WindowExchange:
    """Publishes this replica's closed windows and reads everyone's into a ``WindowLedger``."""

    def __init__(self, kafka: KafkaSettings, topic: str, replication_factor: int = 1,
                 retention_ms: int | None = None) -> None:  # fmt: skip
        self.kafka = kafka
        self.topic = topic
        self.replication_factor = replication_factor
        self.retention_ms = retention_ms
        self.ledger: WindowLedger | None = None
        self._producer: Any = None
        self._consumer: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._inflight: list[asyncio.Future[Any]] = []
        self._resume: dict[str, Any] | None = None

    def resume_from(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's ledger state to continue from (call before ``start``)."""
        self._resume = state

    async def start(self, partitions: int) -> None:
        """Create the log if missing, connect, and start reading it (idempotent)."""
        if self._producer is not None:
            return
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
        from aiokafka.errors import KafkaError

        from detector.repartition import ensure_topic

        configs = {"retention.ms": str(self.retention_ms)} if self.retention_ms else None
        await ensure_topic(self.kafka, self.topic, 1, self.replication_factor, configs)
        ledger = WindowLedger(partitions)
        offset = ledger.restore(self._resume) if self._resume else 0
        producer = AIOKafkaProducer(
            **client_kwargs(self.kafka, "window log producer"),
            acks="all",
            linger_ms=20,
            max_request_size=4 * 1024 * 1024,
        )
        consumer = AIOKafkaConsumer(
            **client_kwargs(self.kafka, "window log reader"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a checkpoint's offset beyond the log: all of it
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        try:
            await asyncio.wait_for(producer.start(), timeout=self.kafka.connect_timeout_s)
            await asyncio.wait_for(consumer.start(), timeout=self.kafka.connect_timeout_s)
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            if offset > 0:
                consumer.seek(tp, offset)
            else:
                await consumer.seek_to_beginning(tp)
        except (TimeoutError, KafkaError, OSError) as e:
            await producer.stop()
            await consumer.stop()
            raise InfrastructureError(
                f"scale-out: cannot open the window log {self.topic}: {type(e).__name__} {e}"
            ) from None
        if self._resume:
            log.info(
                "resuming the window log %s at offset %d (checkpoint: scored before %s)",
                self.topic,
                offset,
                self._resume.get("scored_before"),
            )
        else:
            log.info("reading the window log %s from its start", self.topic)
        self.ledger = ledger
        self._producer, self._consumer = producer, consumer
        self._reader = asyncio.create_task(self._read(tp))

    async def _read(self, tp: Any) -> None:
        from aiokafka.errors import KafkaError

        consumer, ledger = self._consumer, self.ledger
        assert consumer is not None and ledger is not None
        try:
            while True:
                data = await consumer.getmany(tp, timeout_ms=200, max_records=2000)
                for msg in data.get(tp, []):
                    if msg.value is not None:
                        ledger.add(msg.offset, msg.value)
        except KafkaError as e:
            raise InfrastructureError(f"scale-out: reading {self.topic} failed: {e!r}") from None

    def check(self) -> None:
        """Raise what stopped the reader (infrastructure failure: exit, restart)."""
        r = self._reader
        if r is not None and r.done() and not r.cancelled():
            exc = r.exception()
            raise exc if exc is not None else InfrastructureError(f"{self.topic} reader ended")

    async def publish(self, partition: int, closed_before: float | None,
                      windows: Sequence[EdgeWindow]) -> None:  # fmt: skip
        producer = self._producer
        if producer is None:
            raise InfrastructureError("scale-out: the window log is not open")
        from aiokafka.errors import KafkaError

        chunks = [
            windows[i : i + MAX_WINDOWS_PER_MESSAGE]
            for i in range(0, len(windows), MAX_WINDOWS_PER_MESSAGE)
        ] or [[]]
        try:
            for i, chunk in enumerate(chunks):
                cb = closed_before if i == len(chunks) - 1 else None
                fut = await producer.send(self.topic, encode(partition, cb, chunk), partition=0)
                self._inflight.append(fut)
        except KafkaError as e:
            raise InfrastructureError(f"scale-out: send to {self.topic} failed: {e!r}") from None

    async def flush(self) -> None:
        """Wait until the broker acknowledged everything published."""
        inflight, self._inflight = self._inflight, []
        await await_acks(inflight, f"windows for {self.topic}")

    def complete(self) -> list[list[EdgeWindow]]:
        self.check()
        return self.ledger.complete() if self.ledger is not None else []

    async def stop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        for client in (self._producer, self._consumer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._producer = self._consumer = None
