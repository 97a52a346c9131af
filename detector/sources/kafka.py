"""Kafka source: message values from topics, read in a consumer group with manual commits.

Contract (on top of the ``Source`` contract in ``detector.sources``):
* ``KafkaSettings`` is the validated configuration (unknown keys rejected, units in names). Each
  topic names its decoder ``format`` and the static attributes its records carry (a topic per
  cluster: ``cluster``; optionally ``namespace``).
* ``KafkaSource`` subscribes to every topic in one consumer group (``group_id``) with
  ``enable_auto_commit=False``: offsets move only through ``commit(positions)``.
* ``batches()`` yields one ``Batch`` per partition chunk returned by ``getmany``: stream name
  ``"<topic>[<partition>]"``, the topic's format and static attributes, units = message values,
  offsets = their Kafka offsets. Tombstones (``None`` values) are skipped and counted
  (``tombstones``). A newly assigned partition is first announced with an empty batch (so it holds
  the watermark until it delivers data or idles); a revoked partition gets an empty batch with
  ``end=True`` (so it stops holding it); data fetched for a partition that is no longer assigned is
  dropped: its new owner reads it again from the committed offset.
* ``commit(positions)`` commits exactly the given next offsets, per stream, for partitions this
  consumer currently owns; positions for other streams are dropped, and so are positions below
  what this consumer already committed or below where it started reading the partition since its
  latest assignment, or for partitions it has delivered nothing from since then (stale state
  from before a rebalance must never move the group backwards).
  A commit refused because the group is rebalancing is dropped too (at-least-once: the next owner
  replays from the last successful commit); any other broker error raises ``InfrastructureError``.
* Rebalances: ``on_revoked(cb)`` / ``on_assigned(cb)`` register callbacks, called with the list
  of stream names, from aiokafka's ``ConsumerRebalanceListener``; a callback may be sync or async
  and is awaited before the group rebalance proceeds; no data is delivered while an
  ``on_assigned`` callback runs. During ``on_revoked`` callbacks the revoked
  partitions still count as owned, so a pipeline can flush their windows and ``commit`` there;
  after them, commits for those streams are dropped. Callback errors are logged, not raised.
* ``on_caught_up(cb)`` registers ``cb(stream, offset)``, called once per assignment of a
  partition whose first fetch finds nothing to read: the broker's high watermark is the
  position the partition is read from (``offset``), so every message in it was processed by a
  previous owner (as far as the group's committed offset tells).
* Startup: if the broker cannot be reached (or the group joined) within ``connect_timeout_s``,
  ``batches()`` raises ``InfrastructureError`` with one readable line.
* ``stop()`` ends the iterator (within ``poll_timeout_ms``) and closes the consumer; it is
  idempotent. ``lag()`` gives, per owned partition, ``highwater - next offset to deliver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from detector.decoders import FORMATS
from detector.errors import InfrastructureError
from detector.sources import Batch, StaticAttrs

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

StreamCallback = Callable[[list[str]], Awaitable[None] | None]
CaughtUpCallback = Callable[[str, int], Awaitable[None] | None]


# ---------------------------------------------------------------------------------------------
# Settings


class KafkaTopic(BaseModel):
    """One topic: what it carries (``format``) and what every record in it shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    format: str = "auto"
    cluster: str | None = None  # the cluster this topic's telemetry comes from
    namespace: str | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMATS:
            raise ValueError(f"unknown format {v!r}; known: {', '.join(FORMATS)}")
        return v


class KafkaSettings(BaseModel):
    """Kafka consumer settings; aiokafka's names where they exist, units in every name."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: list[str] = Field(min_length=1)
    topics: list[KafkaTopic] = Field(min_length=1)
    group_id: str = Field("mesh-detector", min_length=1)
    client_id: str = "mesh-detector"
    # A brand-new group starts at the live edge by default: replaying a topic's whole retention
    # into a live detector is rarely wanted (training/replay runs set "earliest").
    auto_offset_reset: Literal["earliest", "latest"] = "latest"
    isolation_level: Literal["read_uncommitted", "read_committed"] = "read_uncommitted"

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    # OAUTHBEARER: the token is re-read from this file on every (re)authentication, so a
    # projected, rotated token (Kubernetes service-account token volume) keeps working.
    sasl_oauth_token_file: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    max_poll_records: int = Field(2000, gt=0)  # per getmany call, across partitions
    poll_timeout_ms: int = Field(500, gt=0)  # how long one getmany waits for data
    fetch_max_bytes: int = Field(50 * 1024 * 1024, gt=0)
    max_partition_fetch_bytes: int = Field(4 * 1024 * 1024, gt=0)
    fetch_max_wait_ms: int = Field(500, ge=0)
    session_timeout_ms: int = Field(10_000, gt=0)
    heartbeat_interval_ms: int = Field(3_000, gt=0)
    max_poll_interval_ms: int = Field(300_000, gt=0)
    request_timeout_ms: int = Field(40_000, gt=0)
    connect_timeout_s: float = Field(30.0, gt=0)  # reach the broker and join the group

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_servers(cls, v: Any) -> Any:
        # "a:9092,b:9092" is how every Kafka tool writes it; accept it as well as a list.
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("topics")
    @classmethod
    def _unique_topics(cls, v: list[KafkaTopic]) -> list[KafkaTopic]:
        names = [t.name for t in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"topic listed twice: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError("sasl_mechanism is set but security_protocol is not SASL_*")
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and (
            not self.sasl_plain_username or self.sasl_plain_password is None
        ):
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs sasl_plain_username and "
                "sasl_plain_password"
            )
        if self.sasl_mechanism == "OAUTHBEARER" and not self.sasl_oauth_token_file:
            raise ValueError("sasl_mechanism OAUTHBEARER needs sasl_oauth_token_file")
        ssl_opts = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not tls and any(ssl_opts):
            # A CA file with PLAINTEXT is almost certainly a forgotten security_protocol: say so
            # rather than silently talking in clear.
            raise ValueError("ssl_* files are set but security_protocol is not SSL or SASL_SSL")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate)")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self


# ---------------------------------------------------------------------------------------------
# Source


def stream_name(topic: str, partition: int) -> str:
    return f"{topic}[{partition}]"


class _TokenFile:
    """OAUTHBEARER token provider reading a (rotated) token file; see ``sasl_oauth_token_file``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    async def token(self) -> str:
        text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        return text.strip()


class KafkaSource:
    """Message values of Kafka topics in a consumer group; see the module docstring."""

    def __init__(self, settings: KafkaSettings, name: str | None = None) -> None:
        self.settings = settings
        self.name: str = name or str(getattr(settings, "name", None) or "kafka")
        self.tombstones = 0  # messages with a None value, skipped
        self.dropped_revoked = 0  # messages fetched for a partition revoked meanwhile
        self.commits_dropped = 0  # positions not committed (not owned, stale, rebalancing)
        self._topics = {t.name: t for t in settings.topics}
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = False
        self._closed = False
        self._running = asyncio.Event()  # batches() is inside its loop
        self._done = asyncio.Event()  # batches() has left its loop
        # Per owned partition: (stream, format, static attributes); the hot path reads only this.
        self._owned: dict[TopicPartition, tuple[str, str, StaticAttrs]] = {}
        self._by_stream: dict[str, TopicPartition] = {}
        self._next: dict[TopicPartition, int] = {}  # offset after the last unit delivered
        self._floor: dict[TopicPartition, int] = {}  # first offset delivered since assignment
        self._committed: dict[TopicPartition, int] = {}  # what we last committed
        self._control: deque[Batch] = deque()  # announcements / end markers from rebalances
        self._revoked_cbs: list[StreamCallback] = []
        self._assigned_cbs: list[StreamCallback] = []
        self._caught_up_cbs: list[CaughtUpCallback] = []
        # assigned partitions that delivered nothing yet and whose end is not known yet
        self._unsettled: set[TopicPartition] = set()
        self._callbacks_idle = asyncio.Event()  # no on_assigned callback is running
        self._callbacks_idle.set()

    # -- hooks -------------------------------------------------------------------------------

    def on_revoked(self, callback: StreamCallback) -> None:
        """Call ``callback(streams)`` when partitions are taken away (before the rebalance).

        The streams still count as owned while it runs: flush their state and ``commit`` here.
        """
        self._revoked_cbs.append(callback)

    def on_assigned(self, callback: StreamCallback) -> None:
        """Call ``callback(streams)`` when partitions are given to this consumer."""
        self._assigned_cbs.append(callback)

    def on_caught_up(self, callback: CaughtUpCallback) -> None:
        """Call ``callback(stream, offset)`` when a newly assigned partition turns out to have
        nothing to read past ``offset``, where its reading starts (see the module docstring)."""
        self._caught_up_cbs.append(callback)

    # -- Source ------------------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[Batch]:
        consumer = await self._start()
        if consumer is None:  # stopped while still connecting
            return
        s = self.settings
        timeout_ms = s.poll_timeout_ms
        max_records = s.max_poll_records
        owned = self._owned
        control = self._control
        nxt = self._next
        floor = self._floor
        from aiokafka.errors import ConsumerStoppedError, KafkaError

        self._running.set()
        try:
            while not self._stopping:
                if not self._callbacks_idle.is_set():
                    await self._callbacks_idle.wait()
                while control:
                    yield control.popleft()
                try:
                    data = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
                except ConsumerStoppedError:
                    break
                except KafkaError as e:
                    raise InfrastructureError(f"kafka source {self.name}: {_describe(e)}") from e
                if not self._callbacks_idle.is_set():
                    await self._callbacks_idle.wait()
                # Announce partitions assigned during that poll before their first data.
                while control:
                    yield control.popleft()
                for tp, msgs in data.items():
                    if not msgs:
                        continue
                    meta = owned.get(tp)
                    if meta is None:
                        self.dropped_revoked += len(msgs)
                        continue
                    stream, fmt, static = meta
                    units = [m.value for m in msgs]
                    if None in units:
                        kept = [m for m in msgs if m.value is not None]
                        self.tombstones += len(msgs) - len(kept)
                        units = [m.value for m in kept]
                        offsets = [m.offset for m in kept]
                    else:
                        offsets = [m.offset for m in msgs]
                    last = msgs[-1].offset + 1
                    if tp not in floor:
                        floor[tp] = msgs[0].offset
                    nxt[tp] = last
                    if units:
                        yield Batch(stream, fmt, units, offsets, static)
                if self._unsettled:
                    await self._settle(consumer, data)
        finally:
            self._done.set()
            await self._close()

    async def commit(self, positions: Mapping[str, int]) -> None:
        consumer = self._consumer
        if consumer is None or self._closed or not positions:
            return
        from aiokafka.errors import (
            CommitFailedError,
            IllegalStateError,
            KafkaError,
            RebalanceInProgressError,
        )

        offsets: dict[TopicPartition, int] = {}
        for stream, offset in positions.items():
            tp = self._by_stream.get(stream)
            if tp is None or tp not in self._owned:
                self.commits_dropped += 1
                continue
            floor = self._floor.get(tp)
            if floor is None or offset < floor or offset < self._committed.get(tp, -1):
                # Nothing delivered since the latest assignment, or a position from state older
                # than it: committing would move the group backwards over another owner's work.
                self.commits_dropped += 1
                continue
            if offset != self._committed.get(tp):
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as e:
            # The group moved on; the partitions' next owner replays from the last commit.
            self.commits_dropped += len(offsets)
            log.warning("kafka source %s: commit dropped during rebalance: %s", self.name, e)
            return
        except KafkaError as e:
            raise InfrastructureError(
                f"kafka source {self.name}: commit failed: {_describe(e)}"
            ) from None
        self._committed.update(offsets)

    async def stop(self) -> None:
        self._stopping = True
        if self._running.is_set() and not self._done.is_set():
            # Let the iterator finish its current poll and close the consumer itself; it may
            # also be parked at a ``yield`` (backpressure), so the wait is bounded.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._done.wait(), timeout=self.settings.poll_timeout_ms / 1000 + 1.0
                )
        await self._close()

    # -- metrics -----------------------------------------------------------------------------

    def lag(self) -> dict[str, int]:
        """Per owned partition with known positions: messages behind the high watermark."""
        consumer = self._consumer
        if consumer is None or self._closed:
            return {}
        out: dict[str, int] = {}
        for tp, (stream, _, _) in list(self._owned.items()):
            try:
                hw = consumer.highwater(tp)
            except (AssertionError, KeyError):
                continue  # revoked between the two lines
            pos = self._next.get(tp)
            if hw is None or pos is None:
                continue
            out[stream] = max(0, hw - pos)
        return out

    def assigned_streams(self) -> list[str]:
        return sorted(meta[0] for meta in self._owned.values())

    # -- internals ---------------------------------------------------------------------------

    def _consumer_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kw = client_kwargs(s, f"source {self.name}")
        kw.update(
            group_id=s.group_id,
            enable_auto_commit=False,  # offsets move only past acknowledged windows
            auto_offset_reset=s.auto_offset_reset,
            isolation_level=s.isolation_level,
            max_poll_records=s.max_poll_records,
            fetch_max_bytes=s.fetch_max_bytes,
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
        )
        return kw

    async def _start(self) -> AIOKafkaConsumer | None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.abc import ConsumerRebalanceListener
        from aiokafka.errors import KafkaError

        source = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
                await source._revoked(revoked)

            async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
                await source._assigned(assigned)

        s = self.settings
        kw = self._consumer_kwargs()
        deadline = time.monotonic() + s.connect_timeout_s
        servers = ",".join(s.bootstrap_servers)
        last_error = "no answer"
        attempt = 0
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            consumer = AIOKafkaConsumer(**kw)
            consumer.subscribe(topics=list(self._topics), listener=Listener())
            try:
                await asyncio.wait_for(consumer.start(), timeout=remaining)
            except (TimeoutError, KafkaError, OSError) as e:
                last_error = (
                    "timed out connecting or joining the group"
                    if isinstance(e, TimeoutError)
                    else _describe(e)
                )
                with contextlib.suppress(Exception):
                    await consumer.stop()
                attempt += 1
                # Back off a little between attempts; the broker may be starting with us.
                pause = min(0.2 * 2**attempt, 2.0, deadline - time.monotonic())
                await asyncio.sleep(max(0.0, pause))
                continue
            self._consumer = consumer
            return consumer
        if self._stopping:
            return None
        raise InfrastructureError(
            f"kafka source {self.name}: cannot reach {servers} (group {s.group_id}) within "
            f"{s.connect_timeout_s:g}s: {last_error}"
        )

    async def _settle(self, consumer: AIOKafkaConsumer, data: Mapping[Any, list[Any]]) -> None:
        """Tell ``on_caught_up`` callbacks about newly assigned partitions found empty.

        The high watermark comes with every fetch response, and aiokafka keeps it only from a
        response fetched at the partition's current position: equal to that position, there
        was nothing to read when the fetch was answered. (A ListOffsets request for the end
        offset would answer before the first fetch, but not every broker answers it exactly:
        Tansu gives the base offset of the last record batch, plus one.)"""
        for tp in list(self._unsettled):
            if tp not in self._owned or data.get(tp) or tp in self._floor:
                self._unsettled.discard(tp)  # gone, or it had something to read
                continue
            try:
                hw = consumer.highwater(tp)
            except (AssertionError, KeyError):
                self._unsettled.discard(tp)
                continue
            if hw is None:
                continue  # not fetched yet
            self._unsettled.discard(tp)
            position = await consumer.position(tp)
            if hw != position or tp not in self._owned:
                continue
            stream = self._owned[tp][0]
            for cb in self._caught_up_cbs:
                try:
                    res = cb(stream, position)
                    if inspect.isawaitable(res):
                        await res
                except Exception:
                    log.exception("kafka source %s: on_caught_up callback failed", self.name)

    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        tps = [tp for tp in revoked if tp in self._owned]
        if not tps:
            return
        streams = [self._owned[tp][0] for tp in tps]
        await self._call(self._revoked_cbs, streams, "on_revoked")
        for tp in tps:
            stream, fmt, static = self._owned.pop(tp)
            self._unsettled.discard(tp)
            self._next.pop(tp, None)
            self._floor.pop(tp, None)
            self._committed.pop(tp, None)
            self._control.append(Batch(stream, fmt, [], [], static, end=True))

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        streams = []
        for tp in sorted(assigned):
            if tp in self._owned:
                continue
            topic = self._topics.get(tp.topic)
            if topic is None:  # not ours (cannot happen with a plain topic subscription)
                continue
            stream = stream_name(tp.topic, tp.partition)
            static = StaticAttrs(cluster=topic.cluster, namespace=topic.namespace)
            self._owned[tp] = (stream, topic.format, static)
            self._by_stream[stream] = tp
            self._control.append(Batch(stream, topic.format, [], [], static))
            if self._caught_up_cbs:
                self._unsettled.add(tp)
            streams.append(stream)
        if streams:
            # Data of the new partitions waits until the callbacks are done (they may restore
            # state the first records must meet, e.g. a previous owner's horizon).
            self._callbacks_idle.clear()
            try:
                await self._call(self._assigned_cbs, streams, "on_assigned")
            finally:
                self._callbacks_idle.set()

    async def _call(self, callbacks: list[StreamCallback], streams: list[str], what: str) -> None:
        for cb in callbacks:
            try:
                res = cb(list(streams))
                if inspect.isawaitable(res):
                    await res
            except Exception:
                log.exception("kafka source %s: %s callback failed", self.name, what)

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()


async def await_acks(sends: list[asyncio.Future[Any]], what: str) -> None:
    """Wait until the broker acknowledged every producer send in ``sends``; a failure is an
    ``InfrastructureError`` naming ``what`` (infrastructure: exit, restart)."""
    if not sends:
        return
    from aiokafka.errors import KafkaError

    try:
        await asyncio.gather(*sends)
    except KafkaError as e:
        raise InfrastructureError(f"scale-out: broker did not acknowledge {what}: {e!r}") from None


def client_kwargs(s: KafkaSettings, name: str = "kafka") -> dict[str, Any]:
    """The aiokafka keyword arguments every client of these settings shares (consumer,
    producer, admin): servers, client id, timeouts, SASL and TLS."""
    kw: dict[str, Any] = dict(
        bootstrap_servers=s.bootstrap_servers,
        client_id=s.client_id,
        request_timeout_ms=s.request_timeout_ms,
        security_protocol=s.security_protocol,
    )
    if s.sasl_mechanism is not None:
        kw["sasl_mechanism"] = s.sasl_mechanism
        if s.sasl_mechanism == "OAUTHBEARER":
            assert s.sasl_oauth_token_file is not None
            kw["sasl_oauth_token_provider"] = _TokenFile(s.sasl_oauth_token_file)
        else:
            kw["sasl_plain_username"] = s.sasl_plain_username
            kw["sasl_plain_password"] = (
                s.sasl_plain_password.get_secret_value() if s.sasl_plain_password else None
            )
    if s.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        try:
            ctx = create_ssl_context(
                cafile=s.ssl_cafile,
                certfile=s.ssl_certfile,
                keyfile=s.ssl_keyfile,
                password=s.ssl_key_password.get_secret_value() if s.ssl_key_password else None,
            )
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise InfrastructureError(f"kafka {name}: cannot load TLS files: {e}") from None
        ctx.check_hostname = s.ssl_check_hostname
        kw["ssl_context"] = ctx
    return kw


def _describe(e: BaseException) -> str:
    """One line for an aiokafka error (their ``str`` is often empty or multi-line)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
