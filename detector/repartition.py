"""Scale-out: records re-keyed by caller identity through an internal Kafka topic.

Several replicas of the detector share one input in a Kafka consumer group. Each replica runs
two stages (the Kafka Streams repartition idea):

1. **Ingest** (``Repartitioner``): consumes its share of the input topics, decodes, joins spans
   and resolves identities and clusters exactly as the single-process pipeline does, then sends
   every record to the internal topic (``ScaleOutSettings.topic``) in the partition of its
   caller identity (``principal@cluster``). Records of one batch bound for one partition travel
   together in one message (``encode_records``): per-message overhead stays off the hot path.
   Input offsets are committed only after the broker acknowledged every message sent for the
   units before them (at-least-once; never past unsent data).
2. **Edge owner** (``EdgeOwnerPipeline``): consumes its share of the internal topic in a second
   consumer group (``ScaleOutSettings.group_id``) and aggregates as usual. Every edge window,
   and every incident of one caller identity, lives on exactly one replica: the owner of the
   identity's partition. Window sinks get the windows this replica closes; detection stages
   (sinks with ``owns``) score every replica's windows instead, read back from the window log
   (``detector.exchange``: shared scoring, so every replica learns the whole mesh), and report
   the anomalies of the partitions this replica owns.

Contract:
* ``partition_of(identity_key(principal, cluster), n)`` is stable across processes and
  releases (CRC-32), and the same for a ``FlowRecord`` (``record_identity``) as for the
  ``EdgeKey`` of the window it feeds (``edge_identity``).
* The internal topic's format is ``detector_flow`` (``detector.decoders.internal``).
* Takeover of an input partition: the ingest stage publishes, with each commit, per input
  partition the committed position and when its last data arrived (``detector.handover``); a
  new owner that finds nothing to read past that very position keeps the partition's idle clock
  running from that last data instead of restarting it (``Repartitioner._on_caught_up``).
  Otherwise a newly assigned partition holds the watermark until it delivers data or idles.
* Checkpoints: a replica's ``detection.checkpoint_path`` restores the incidents of every
  partition it owned; on each assignment it keeps those of partitions it owns and has no
  handed-over state for, and releases the rest to their owners. It also restores the
  baselines and where they are in the window log.
* Reporting (with shared scoring): an anomaly is reported by the owner of its subject's
  partition (``subject_partition``; callerless subjects belong to partition 0), for window
  times from the partition's handed-over horizon on; on taking a partition over, the window
  times this replica scored already (``DetectionStage.history``) are reported from that
  horizon. Closed windows hold their commit until every replica could score them; the
  horizon published is at most the window time scored so far.
* State handover on rebalance: an edge owner losing partitions commits past its closed windows,
  then drops (does not emit) the open windows of the identities of those partitions; the new
  owner rebuilds them from the committed offsets, and the internal topic is the changelog. Open
  incidents move through the compacted state topic (``detector.handover``). On shutdown the edge
  owner does not flush open windows either (a rolling restart must not split windows): the next
  owner, or this replica after restart, rebuilds them.
* Span joining in the ingest stage pairs the halves of a trace that reach the same replica;
  partition traces by trace id upstream (the OpenTelemetry Collector's Kafka exporter
  ``partition_traces_by_id``) so both halves do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from detector.anomalies import Anomaly, Subject
from detector.decoders.internal import decode_clocks, encode_clocks, encode_records
from detector.errors import InfrastructureError
from detector.exchange import WindowExchange
from detector.flows import ANONYMOUS, EdgeKey, EdgeWindow, WindowAggregator
from detector.handover import HandoverLog
from detector.pipeline import Pipeline, PipelineStats
from detector.records import UNKNOWN, FlowRecord
from detector.sources import Batch, Source
from detector.sources.kafka import KafkaSettings, await_acks, client_kwargs

log = logging.getLogger(__name__)

# watermark streams of the edge owner: "origin:<internal partition>|<input partition>"
ORIGIN_PREFIX = "origin:"
HOLD_PREFIX = "hold:"  # holds the watermark until an assigned partition's first clock message
CLOCK_INTERVAL_S = 0.5  # how often an ingest replica announces its input partitions' clocks


class ScaleOutSettings(BaseModel):
    """``scale_out:`` in the config: the internal topic replicas share the work through."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field("mesh-detector-flows", min_length=1)
    # Created with this many partitions when missing; an existing topic keeps its own count.
    # More partitions than replicas lets the group rebalance evenly as replicas come and go.
    partitions: int = Field(12, gt=0)
    replication_factor: int = Field(1, gt=0)
    group_id: str = Field("mesh-detector-edges", min_length=1)  # the edge owners' group
    state_topic: str | None = None  # incident handover; default "<topic>-state"
    # Closed windows every replica scores (``detector.exchange``); default "<topic>-windows".
    windows_topic: str | None = None
    # Its retention: a replica starting without a checkpoint reads it all (it learns what the
    # others learned since they started); one with a checkpoint only what came after it.
    windows_retention_h: float = Field(24.0, gt=0)
    max_records_per_message: int = Field(1000, gt=0)
    # The producer keeps one request in flight per broker: batches, not round trips, set the
    # pace. 200 ms of delay is nothing next to a 60 s window.
    linger_ms: int = Field(200, ge=0)
    commit_interval_s: float = Field(1.0, gt=0)  # ingest commits at most this often

    @property
    def state_topic_name(self) -> str:
        return self.state_topic or f"{self.topic}-state"

    @property
    def windows_topic_name(self) -> str:
        return self.windows_topic or f"{self.topic}-windows"


# ---------------------------------------------------------------------------------------------
# Keys and partitions


def identity_key(principal: str, cluster: str) -> bytes:
    return f"{principal}@{cluster}".encode()


def partition_of(key: bytes, partitions: int) -> int:
    # CRC-32 is stable across processes (str hash() is salted) and costs well under a microsecond.
    return zlib.crc32(key) % partitions


def record_identity(r: FlowRecord) -> bytes:
    """The caller identity a record's window is keyed by (as ``WindowAggregator`` keys it)."""
    principal = r.src_principal or (
        f"{r.src_namespace}/{r.src_workload}" if r.src_workload else ANONYMOUS
    )
    return identity_key(principal, r.src_cluster or UNKNOWN)


def edge_identity(key: EdgeKey) -> bytes:
    return identity_key(key[0], key[1])


def subject_partition(subject: Subject, partitions: int) -> int:
    """The partition of an incident's subject. One without a caller (a mesh-wide shift, a
    service's latency or errors) belongs to partition 0: its owner reports it."""
    if subject.principal is None and subject.src_ip is None:
        return 0
    key = identity_key(subject.principal or ANONYMOUS, subject.src_cluster or UNKNOWN)
    return partition_of(key, partitions)


def stream_partition(stream: str) -> int | None:
    """The partition number of a Kafka stream name ``topic[p]``."""
    if stream.endswith("]") and "[" in stream:
        try:
            return int(stream[stream.rindex("[") + 1 : -1])
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------------------------------------
# Stage 1: ingest -> internal topic


class Repartitioner(Pipeline):
    """Decode -> join -> resolve, then forward to the internal topic; see the module docstring."""

    def __init__(
        self,
        *args: Any,
        scale: ScaleOutSettings,
        kafka: KafkaSettings,
        handover: HandoverLog | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.scale = scale
        self.kafka = kafka
        self.handover = handover  # input partitions' positions and quiet times (takeover)
        self.forwarded = 0  # records sent
        self.messages = 0  # messages sent
        self._producer: Any = None
        self._partitions = 0
        self._pending: dict[int, list[FlowRecord]] = {}
        self._inflight: list[asyncio.Future[Any]] = []
        self._clocks_at = -math.inf
        self._announced: frozenset[str] = frozenset()
        self._stale = _StaleBatches()
        # input partitions just taken over: their previous owner's published state
        self._handed: dict[str, dict[str, Any]] = {}
        # input partitions taken over with nothing to read: when their last data arrived (epoch)
        self._quiet_since: dict[str, float] = {}
        self._published: dict[str, tuple[int, float]] = {}  # stream -> (next offset, wall)

    @property
    def partitions(self) -> int:
        """Partitions of the internal topic (0 until the producer has read its metadata)."""
        return self._partitions

    async def start(self) -> None:
        """Create the internal topic if needed and connect the producer (idempotent). Call it
        before the edge owner subscribes: a broker that auto-creates topics on a consumer's
        metadata request would otherwise create it with its default partition count."""
        if self._producer is None:
            await self._start_producer()

    async def run(self, sources: Sequence[Source]) -> PipelineStats:
        for src in sources:
            assigned = getattr(src, "on_assigned", None)
            caught_up = getattr(src, "on_caught_up", None)
            if assigned is not None and caught_up is not None and self.handover is not None:
                assigned(self._on_assigned)
                caught_up(self._on_caught_up)
        await self.start()
        try:
            return await super().run(sources)
        finally:
            producer, self._producer = self._producer, None
            if producer is not None:
                await producer.stop()
            if self.handover is not None:
                await self.handover.stop()

    def process_batch(self, batch: Batch) -> None:
        if self._stale.skip(batch):
            return
        records = self.prepare_batch(batch)
        if records is None:
            since = self._quiet_since.pop(batch.stream, None)
            if since is not None and not batch.end:
                self._inherit_quiet(batch.stream, since)
            return
        newest = self._bucket(records)
        if newest > -math.inf:
            self.aggregator.note_event_time(batch.stream, newest)  # the span joiner's clock
        self._finish_batch(batch, len(records))

    def _bucket(self, records: list[FlowRecord]) -> float:
        """Queue ``records`` by the internal partition of their caller; their newest event time."""
        n = self._partitions
        pending = self._pending
        newest = -math.inf
        cache: dict[tuple[str | None, ...], int] = {}
        for r in records:
            ck = (r.src_principal, r.src_cluster, r.src_namespace, r.src_workload)
            p = cache.get(ck)
            if p is None:
                p = cache[ck] = partition_of(record_identity(r), n)
            bucket = pending.get(p)
            if bucket is None:
                pending[p] = [r]
            else:
                bucket.append(r)
            if r.ts > newest:
                newest = r.ts
        return newest

    async def _after_batch(self) -> None:
        await self._send_pending()
        if len(self._inflight) > 10_000:
            await self._await_acks()
        if time.monotonic() - self._last_commit >= self.scale.commit_interval_s:
            await self._commit()  # after the acks: never past unsent records
        await self._emit([])  # metrics

    def _drain_all(self) -> list[Any]:
        self._bucket(self._unjoined_rest())  # sent with the final commit
        return []

    async def _commit(self) -> None:
        await self._send_pending()
        await self._await_acks()
        await self._publish_positions(self.aggregator.stream_clocks())
        await super()._commit()

    async def _on_revoked(self, streams: Sequence[str]) -> None:
        await self._send_pending()
        await self._await_acks()
        await self._publish_positions(streams)
        await super()._on_revoked(streams)
        self._stale.revoked(streams)
        for stream in streams:
            self._published.pop(stream, None)
            self._handed.pop(stream, None)
            self._quiet_since.pop(stream, None)

    # -- takeover of input partitions -----------------------------------------------------------
    #
    # An input partition holds the edge owners' watermark until it delivers data or has been
    # silent for ``idle_stream_s`` (as in one process). A rebalance hands every partition over
    # again (and the eager protocol even revokes and reassigns the ones a replica keeps); if the
    # new owner started the idle clock at the takeover, a silent partition would hold every
    # window back for ``idle_stream_s`` after each rebalance, on top of the time the partition
    # had already been silent (a sparse partition, idle for minutes, would hold the watermark
    # again at its old event time). So each owner publishes, with its commits, the position it
    # commits and when the partition's last data arrived. A new owner whose first fetch finds
    # nothing past the position it reads from (``KafkaSource.on_caught_up``), and finds that
    # same position in the published state, knows the partition has been silent since that
    # last data: it continues that idle clock (an idle partition is announced idle). A partition
    # with something to read (records written while nobody owned it, or not yet committed), or
    # without a matching state, holds the watermark from the takeover as before: its records are
    # never made late by the takeover. Carrying over an idle state *without* that check would:
    # records written while nobody owned the partition are older than what the watermark ran to.

    async def _on_assigned(self, streams: Sequence[str]) -> None:
        """Read what the previous owners published about ``streams`` (before their data)."""
        if self.handover is None:
            return
        for stream in streams:
            self._handed.pop(stream, None)
            self._quiet_since.pop(stream, None)
        self._handed.update(await self.handover.read(streams))

    def _on_caught_up(self, stream: str, offset: int) -> None:
        """``stream``, just taken over, has nothing to read past ``offset``. If its previous
        owner published that same position, the partition has been silent since its last data
        there: continue that idle clock."""
        state = self._handed.pop(stream, None) or {}
        since = state.get("quiet_since")
        if state.get("next") != offset or not isinstance(since, int | float):
            return  # no state, or one from another position: hold as for any new partition
        log.info("input partition %s taken over silent since %.1f s", stream, time.time() - since)
        if stream in self._announced:
            self._inherit_quiet(stream, float(since))
        else:
            self._quiet_since[stream] = float(since)  # applied when its announcement is read

    def _inherit_quiet(self, stream: str, since: float) -> None:
        """``stream`` was just announced, with nothing to read since its last data at ``since``
        (epoch seconds, the previous owner's clock): its idle clock runs from there."""
        now = time.monotonic()
        quiet = max(0.0, time.time() - since)  # a previous owner's clock ahead of ours: none
        self._stream_wall[stream] = now - quiet
        if quiet >= self.settings.idle_stream_s:
            self.aggregator.mark_idle(stream, True)
            self._clocks_at = -math.inf  # tell the edge owners at the next chance

    async def _publish_positions(self, streams: Iterable[str]) -> None:
        """Publish, per input partition of ``streams``, the position about to be committed and
        when its last data arrived (epoch seconds); see ``_on_assigned``. Published before the
        offsets are committed: a commit that fails leaves a state ahead of the committed offset,
        which the next owner does not use."""
        if self.handover is None:
            return
        positions = self.aggregator.positions()
        now, epoch = time.monotonic(), time.time()
        states: dict[str, dict[str, Any]] = {}
        for stream in streams:
            nxt, wall = positions.get(stream), self._stream_wall.get(stream)
            if nxt is None or wall is None or self._published.get(stream) == (nxt, wall):
                continue
            states[stream] = {"next": nxt, "quiet_since": round(epoch - (now - wall), 3)}
            self._published[stream] = (nxt, wall)
        await self.handover.publish(states)

    # -- producer ----------------------------------------------------------------------------

    async def _start_producer(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        s = self.scale
        await ensure_topic(self.kafka, s.topic, s.partitions, s.replication_factor)
        producer = AIOKafkaProducer(
            **client_kwargs(self.kafka, "scale-out producer"),
            acks="all",
            linger_ms=s.linger_ms,
            max_batch_size=4 * 1024 * 1024,
            max_request_size=16 * 1024 * 1024,
        )
        try:
            await asyncio.wait_for(producer.start(), timeout=self.kafka.connect_timeout_s)
            parts = await producer.partitions_for(s.topic)
        except (TimeoutError, KafkaError, OSError) as e:
            await producer.stop()
            servers = ",".join(self.kafka.bootstrap_servers)
            raise InfrastructureError(
                f"scale-out: cannot produce to {s.topic} at {servers}: {type(e).__name__} {e}"
            ) from None
        if not parts:
            await producer.stop()
            raise InfrastructureError(f"scale-out: topic {s.topic} has no partitions")
        self._partitions = len(parts)
        if self._partitions != s.partitions:
            log.warning(
                "scale-out topic %s has %d partitions (config says %d); using %d",
                s.topic,
                self._partitions,
                s.partitions,
                self._partitions,
            )
        self._producer = producer

    async def _on_idle(self) -> None:
        await super()._on_idle()
        await self._send_clocks(force=False)

    async def _send_clocks(self, force: bool) -> None:
        """Announce every input partition this replica owns, with its event time and idleness,
        to every internal partition (see ``EdgeOwnerPipeline._take_clocks``)."""
        clocks = self.aggregator.stream_clocks()
        now = time.monotonic()
        if not clocks or not (force or now - self._clocks_at >= CLOCK_INTERVAL_S):
            return
        self._clocks_at = now
        await self._send_clock_unit(encode_clocks(clocks))

    async def _send_clock_unit(self, unit: bytes) -> None:
        producer = self._producer
        if producer is None:
            raise InfrastructureError("scale-out producer is not running")
        from aiokafka.errors import KafkaError

        try:
            for p in range(self._partitions):
                self._inflight.append(await producer.send(self.scale.topic, unit, partition=p))
        except KafkaError as e:
            raise InfrastructureError(
                f"scale-out: send to {self.scale.topic} failed: {e!r}"
            ) from None

    async def _send_pending(self) -> None:
        clocks = self.aggregator.stream_clocks()
        new = set(clocks) - self._announced
        self._announced = frozenset(clocks)
        if new:
            # A newly assigned input partition is announced (no event time yet) before its
            # first records, so it holds every edge owner's watermark from the start; unless it
            # is idle already (taken over silent, see ``_on_assigned``).
            await self._send_clock_unit(encode_clocks({s: (None, clocks[s][1]) for s in new}))
        await self._send_records()
        # Clocks go after the records they cover: "everything up to this event time was sent
        # before this message" must hold in every internal partition.
        await self._send_clocks(force=bool(new))

    async def _send_records(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        producer = self._producer
        if producer is None:
            raise InfrastructureError("scale-out producer is not running")
        topic = self.scale.topic
        step = self.scale.max_records_per_message
        from aiokafka.errors import KafkaError

        try:
            for p, recs in pending.items():
                for chunk in _chunks(recs, step):
                    fut = await producer.send(topic, encode_records(chunk), partition=p)
                    self._inflight.append(fut)
                    self.forwarded += len(chunk)
                    self.messages += 1
        except KafkaError as e:
            raise InfrastructureError(f"scale-out: send to {topic} failed: {e!r}") from None

    async def _await_acks(self) -> None:
        inflight, self._inflight = self._inflight, []
        await await_acks(inflight, f"records for {self.scale.topic}")


class _StaleBatches:
    """Batches of a revoked partition that still waited in the pipeline's queue. Its next owner
    (maybe this replica again, after an eager rebalance) reads them again from the commit, so
    processing them would count them twice. The source announces a (re)assigned partition with
    an empty batch, queued after every stale one: from there on its batches are fresh."""

    def __init__(self) -> None:
        self._revoked: set[str] = set()

    def revoked(self, streams: Sequence[str]) -> None:
        self._revoked.update(streams)

    def skip(self, batch: Batch) -> bool:
        if batch.stream not in self._revoked:
            return False
        if not batch.units and not batch.end:
            self._revoked.discard(batch.stream)  # the announcement of a new assignment
            return False
        return bool(batch.units)


def _chunks(records: list[FlowRecord], step: int) -> list[list[FlowRecord]]:
    """``records`` in runs of about ``step``, cut only where the input offset changes: the
    records of one unit stay in one message (the edge owner's duplicate check relies on it)."""
    if len(records) <= step:
        return [records]
    out = []
    start = 0
    n = len(records)
    while start < n:
        end = min(start + step, n)
        while end < n and records[end].offset == records[end - 1].offset:
            end += 1
        out.append(records[start:end])
        start = end
    return out


# ---------------------------------------------------------------------------------------------
# Stage 2: internal topic -> windows -> detection


class EdgeOwnerPipeline(Pipeline):
    """The usual aggregation and scoring over the internal topic, handing state over on
    rebalance; see the module docstring."""

    def __init__(
        self,
        *args: Any,
        partitions: Callable[[], int],
        handover: HandoverLog | None = None,
        exchange: WindowExchange | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._partition_count = partitions  # known once the topic's metadata is read
        self.handover = handover
        # Shared scoring (``detector.exchange``): the sinks that score every replica's windows
        # (detection stages) get them from the window log, the others this replica's own.
        self.exchange = exchange if any(hasattr(s, "owns") for s in self.sinks) else None
        self._shared: list[Any] = (
            [s for s in self.sinks if hasattr(s, "owns")] if self.exchange else []
        )
        self._marks: dict[int, float] = {}  # per owned internal partition: the mark published
        # per owned internal stream: anomalies of window times from here on are ours to report
        self._report_from: dict[str, float] = {}
        self.history_reported = 0  # anomalies reported at takeovers (see ``_on_assigned``)
        self.shared_scoring_cpu_s = 0.0  # CPU seconds spent scoring the window log's batches
        self.dropped_on_revoke = 0
        self.replayed_skipped = 0  # records of windows the previous owner already emitted
        self.incidents_adopted = 0
        self.incidents_released = 0  # restored (checkpoint) incidents another owner carries
        self.stale_dropped = 0  # units of partitions revoked while they waited in the queue
        # per internal stream: windows starting before this were emitted by a previous owner
        self._horizon: dict[str, float] = {}
        # Per internal stream taken over: windows the previous owner had not emitted but this
        # replica's aggregator had already closed (for its other partitions) are rebuilt here
        # (see ``_catch_up``): (aggregator, closed_before of the main one at takeover).
        self._catchup: dict[str, tuple[WindowAggregator, float]] = {}
        self.catchup_windows = 0  # edge windows emitted by catch-up aggregators
        # finished catch-ups (shared scoring) whose closed windows still wait to be scored
        self._catchup_done: list[tuple[str, WindowAggregator]] = []
        self._owned: set[str] = set()
        self._origin_seen: dict[str, float] = {}  # input partition -> last announced (monotonic)
        # per input partition, its newest announced clock in any internal partition: (event
        # time, idle, when announced (monotonic)); see ``_hold_known_inputs``
        self._input_clocks: dict[str, tuple[float | None, bool, float]] = {}
        self._provisional: set[str] = set()  # origins held at a clock assumed at assignment
        self._stale = _StaleBatches()
        self._unclocked: set[str] = set()  # assigned partitions whose first clock is unread
        self.duplicates_dropped = 0
        # per internal stream, per input partition: the highest offset taken
        self._hw: dict[str, dict[str | None, int]] = {}

    def process_batch(self, batch: Batch) -> None:
        if self._stale.skip(batch):
            self.stale_dropped += len(batch.units)
            return
        if not batch.units:
            self.prepare_batch(batch)  # registers or ends the stream
            # The watermark follows the input partitions (their clock messages), never the
            # internal partition itself: one with no records (few callers, or a quiet night)
            # would otherwise hold every window of this replica back.
            self.aggregator.ignore_clock(batch.stream)
            if not batch.end:
                # (Re)assigned: read from the commit, records may come before the first clock
                # message names every input partition; until then nothing may close.
                self.aggregator.register_stream(HOLD_PREFIX + batch.stream)
                self._unclocked.add(batch.stream)
                self._hold_known_inputs(batch.stream)
            return
        stream = batch.stream
        self._stream_wall[stream] = time.monotonic()
        units, offsets = self._take_clocks(batch)
        records: list[FlowRecord] = []
        # Message by message: the duplicate check needs message boundaries (see ``_dedupe``).
        # The records were resolved (and spans joined) by the ingest stage already.
        for unit, off in zip(units, offsets, strict=False):
            one = replace(batch, units=[unit], offsets=[off])
            records.extend(self._dedupe(stream, self.decode_batch(one, resolve=False)))
        horizon = self._horizon.get(stream)
        if horizon is not None:
            kept = [r for r in records if r.ts >= horizon]
            self.replayed_skipped += len(records) - len(kept)
            records = kept
        aggregated = len(records)
        if stream in self._catchup:
            records = self._catch_up(stream, records, batch.offsets[0])
        # Records move their input partition's clock at once (the clock messages may lag).
        newest: dict[str | None, float] = {}
        for r in records:
            if r.ts > newest.get(r.source, -math.inf):
                newest[r.source] = r.ts
        agg = self.aggregator
        prefix = f"{ORIGIN_PREFIX}{stream}|"
        for origin, ts in newest.items():
            if origin is not None:
                agg.note_event_time(prefix + origin, ts)
        if records:
            agg.add_batch(stream, records, batch.offsets[0])
        self._finish_batch(batch, aggregated)

    def _catch_up(
        self, stream: str, records: list[FlowRecord], first_offset: int
    ) -> list[FlowRecord]:
        """Records of ``stream`` (just taken over) for windows this replica closed before the
        takeover go to the stream's catch-up aggregator; the rest are returned for the main one.

        A previous owner that died behind this replica had not emitted those windows, yet the
        main aggregator had closed them (for its own partitions): there its records would be
        late, and lost. The catch-up aggregator holds only this stream's windows from the
        previous owner's horizon up to the main aggregator's ``closed_before`` at the takeover
        (none of which this replica emitted for the stream), and closes them as the stream's
        own event time passes them; then it is dropped."""
        cu, cut = self._catchup[stream]
        back = [r for r in records if r.ts < cut]
        if back:
            cu.add_batch(stream, back, first_offset)
        if records:
            cu.note_event_time(stream, max(r.ts for r in records))
        return [r for r in records if r.ts >= cut] if back else records

    def _caught_up_windows(self) -> list[EdgeWindow]:
        """Closed windows of the catch-up aggregators; finished ones are dropped."""
        out: list[EdgeWindow] = []
        clocks = self.aggregator.stream_clocks()
        lateness = self.settings.allowed_lateness_s
        for stream, (cu, cut) in list(self._catchup.items()):
            out.extend(cu.close_ready())
            # The stream's input partitions (their clock messages, as for the main watermark)
            # have all passed ``cut`` or gone idle: nothing below it can arrive on time.
            prefix = f"{ORIGIN_PREFIX}{stream}|"
            origins = [c for name, c in clocks.items() if name.startswith(prefix)]
            passed = bool(origins) and all(
                idle or (ts is not None and ts - lateness >= cut) for ts, idle in origins
            )
            if passed or cu.closed_before >= cut or cu.watermark >= cut:
                out.extend(cu.flush())
                if self.exchange is not None:  # its windows hold the commit until scored
                    self._catchup_done.append((stream, cu))
                del self._catchup[stream]
        self.catchup_windows += len(out)
        return out

    async def _after_batch(self) -> None:
        windows = self.aggregator.close_ready()
        if self._catchup:
            windows += self._caught_up_windows()
        await self._emit(windows)

    # -- shared scoring (``detector.exchange``) ----------------------------------------------------

    def _window_sinks(self) -> list[Any]:
        return [s for s in self.sinks if s not in self._shared]

    async def _emit(self, windows: list[EdgeWindow]) -> None:
        if self.exchange is not None:
            await self._publish_windows(windows)
            await self._score_shared()
        await super()._emit(windows)

    def _mark(self, stream: str) -> float:
        """Every window of ``stream``'s identities starting before this was published."""
        closed = self.aggregator.closed_before
        if stream in self._catchup:
            closed = min(closed, self._catchup[stream][0].closed_before)
        return closed

    async def _publish_windows(self, windows: list[EdgeWindow]) -> None:
        """This replica's closed windows, by internal partition, then the marks of the
        partitions it owns (the log is the only way its windows reach any detection stage)."""
        exchange = self.exchange
        n = self._partition_count()
        if exchange is None or n <= 0:
            return
        by_part: dict[int, list[EdgeWindow]] = {}
        for w in windows:
            p = partition_of(identity_key(w.src_principal, w.src_cluster), n)
            by_part.setdefault(p, []).append(w)
        for p, stream in self._stream_by_part.items():
            mark = self._mark(stream)
            if p in by_part or (mark > self._marks.get(p, -math.inf) and mark > -math.inf):
                await exchange.publish(p, mark, by_part.pop(p, []))
                self._marks[p] = mark
        for p, ws in by_part.items():  # not owned any more (cannot happen; never lost)
            await exchange.publish(p, None, ws)

    async def _score_shared(self) -> None:
        """Every window time every partition has closed goes to the detection stages: the
        same batches, in the same order, on every replica. Their closed windows then stop
        holding this replica's commit."""
        exchange = self.exchange
        if exchange is None:
            return
        batches = exchange.complete()
        t0 = time.process_time()
        for batch in batches:
            for sink in self._shared:
                await sink.emit(batch)
        self.shared_scoring_cpu_s += time.process_time() - t0
        ledger = exchange.ledger
        if ledger is None:
            return
        done = ledger.scored_before
        self.aggregator.release_closed(done)
        for cu, _ in self._catchup.values():
            cu.release_closed(done)
        for _, cu in self._catchup_done:
            cu.release_closed(done)
        self._catchup_done = [(s, cu) for s, cu in self._catchup_done if cu.holds_closed]
        m = self.metrics
        m.shared_pending.set(ledger.pending_windows)
        if done > -math.inf:
            m.shared_scored_before.set(done)

    def _owns(self, a: Anomaly) -> bool:
        """An anomaly this replica reports: its subject's partition is ours, and its window
        time is not one the partition's previous owner already reported."""
        n = self._partition_count()
        stream = self._stream_by_part.get(subject_partition(a.subject, n)) if n > 0 else None
        return stream is not None and a.window_start >= self._report_from.get(stream, -math.inf)

    @property
    def _stream_by_part(self) -> dict[int, str]:
        return {p: s for s in self._owned if (p := stream_partition(s)) is not None}

    def _new_aggregator_held(self) -> WindowAggregator:
        agg = self.new_aggregator()
        if self.exchange is not None:
            agg.hold_closed()
        return agg

    def _positions(self) -> dict[str, int]:
        # open catch-up windows hold their stream's commit back, as open windows do
        out = self.aggregator.positions()
        catchups = [cu for cu, _ in self._catchup.values()] + [cu for _, cu in self._catchup_done]
        for cu in catchups:
            for stream, off in cu.positions().items():
                if off < out.get(stream, off + 1):
                    out[stream] = off
        return out

    def _take_clocks(self, batch: Batch) -> tuple[list[bytes], list[int]]:
        """Apply the clock messages of ``batch``; return its other units and their offsets.

        The watermark follows the input partitions (as in one process), not the internal ones:
        an internal partition mixes several ingest replicas, one of which may lag. Each ingest
        replica announces, in every internal partition, every input partition it owns with its
        event time (None: none yet) and whether it is idle. Everything it sent to that internal
        partition before was older, so the pair (internal partition, input partition) is a
        watermark stream of its own: an input partition holds the watermark from the moment it
        is assigned, and records of one input partition read late from one internal partition
        (which the consumer fetches at its own pace) are not late."""
        units: list[bytes] = []
        offsets: list[int] = []
        agg = self.aggregator
        now = time.monotonic()
        prefix = f"{ORIGIN_PREFIX}{batch.stream}|"
        for unit, off in zip(batch.units, batch.offsets, strict=False):
            if not unit.startswith(b"{"):
                units.append(unit)
                offsets.append(off)
                continue
            clocks = decode_clocks(unit)
            if clocks is None:
                self._bad(batch.stream, off, "bad_clock", unit)
                continue
            known = self._input_clocks
            provisional = self._provisional
            for origin, (ts, idle) in clocks.items():
                name = prefix + origin
                if name in provisional:
                    # this partition's own clock supersedes the one assumed at assignment,
                    # even when lower: its records from the commit on may be older
                    provisional.discard(name)
                    agg.set_event_time(name, ts if ts is not None else -math.inf)
                elif ts is None:
                    agg.register_stream(name)
                else:
                    agg.note_event_time(name, ts)
                agg.mark_idle(name, idle)
                self._origin_seen[name] = now
                before = known.get(origin)
                newest = (
                    ts if before is None or before[0] is None else max(ts or -math.inf, before[0])
                )
                known[origin] = (newest, idle, now)
            if batch.stream in self._unclocked:
                self._unclocked.discard(batch.stream)
                agg.forget_stream(HOLD_PREFIX + batch.stream)
        return units, offsets

    def _hold_known_inputs(self, stream: str) -> None:
        """A (re)assigned internal partition holds the watermark, from the start, at the last
        known clock of every input partition announced anywhere (not idle, not timed out),
        not only of those its first clock message names. An input partition whose ingest
        replica died is announced by nobody until another replica takes it over, and then
        resent from its commit: were the watermark to follow only the live ones meanwhile
        (as after an eager rebalance that revoked every internal partition, and with them
        every origin), those records would be late. Those clocks are provisional: the
        partition's own clock messages replace them (even lower: read again from an older
        commit, its records are older than what the other partitions announced)."""
        now = time.monotonic()
        limit = 3 * self.settings.idle_stream_s
        agg = self.aggregator
        prefix = f"{ORIGIN_PREFIX}{stream}|"
        for origin, (ts, idle, seen) in self._input_clocks.items():
            if ts is None or idle or now - seen >= limit:
                continue
            name = prefix + origin
            agg.note_event_time(name, ts)
            self._origin_seen[name] = seen
            self._provisional.add(name)

    async def _on_idle(self) -> None:
        # An input partition nobody announces any more (its ingest replica died and no other
        # took it over, or its topic went away) stops holding the watermark after a while;
        # long enough for a consumer-group session to expire and another replica to take over.
        now = time.monotonic()
        limit = 3 * self.settings.idle_stream_s
        for name, seen in self._origin_seen.items():
            if now - seen >= limit:
                self.aggregator.mark_idle(name, True)
        await super()._on_idle()
        if self._catchup:  # a stream being caught up may have gone quiet meanwhile
            await self._emit(self._caught_up_windows())

    def _dedupe(self, stream: str, records: list[FlowRecord]) -> list[FlowRecord]:
        """Drop records an ingest replica sent again after taking over an input partition from
        the committed offset. Within one internal partition the records of one input partition
        arrive in offset order; going back means "sent again". Several records of one unit
        (OTLP) share its offset; a unit never spans two messages (``_chunks``), so an equal
        offset is kept only right after a record of the same unit in the same message:
        ``records`` is one message."""
        hw = self._hw.setdefault(stream, {})
        prev: dict[str | None, int] = {}
        out: list[FlowRecord] = []
        dropped = 0
        for r in records:
            off = r.offset
            if off is None:
                out.append(r)
                continue
            origin = r.source
            top = hw.get(origin, -1)
            if off > top or (off == top and prev.get(origin) == off):
                hw[origin] = off
                out.append(r)
            else:
                dropped += 1
            prev[origin] = off
        if dropped:
            self.duplicates_dropped += dropped
        return out

    async def run(self, sources: Sequence[Source]) -> PipelineStats:
        for src in sources:
            hook = getattr(src, "on_assigned", None)
            if hook is not None:
                hook(self._on_assigned)
        try:
            await self._open_exchange()
            return await super().run(sources)
        finally:
            if self.exchange is not None:
                await self.exchange.stop()
            if self.handover is not None:
                await self.handover.stop()

    async def _open_exchange(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        n = self._partition_count()
        if n <= 0:
            raise InfrastructureError("scale-out: the internal topic's partitions are unknown")
        for stage in self._shared:
            restored = getattr(stage, "restored", None) or {}
            if restored.get("exchange"):
                exchange.resume_from(restored["exchange"])
        await exchange.start(n)
        ledger = exchange.ledger
        assert ledger is not None
        self.aggregator.hold_closed()
        for stage in self._shared:
            stage.owns = self._owns
            stage.extra_state = ledger.state

    async def _on_assigned(self, streams: Sequence[str]) -> None:
        """Take over partitions: the previous owner's horizon and open incidents."""
        if self.handover is None:
            self._owned.update(streams)
            return
        by_part = {p: s for s in streams if (p := stream_partition(s)) is not None}
        t0 = time.monotonic()
        states = await self.handover.read(by_part)
        log.info(
            "took over %d partition(s) of %s (state of %d) in %.2fs",
            len(by_part),
            self.handover.topic,
            len(states),
            time.monotonic() - t0,
        )
        self._release_foreign_incidents([*self._owned, *streams], set(states))
        adopt = [getattr(s, "adopt_incidents", None) for s in self.sinks]
        main_closed = self.aggregator.closed_before
        for stream in streams:
            self._report_from[stream] = -math.inf
        for p, state in states.items():
            closed = state.get("closed_before")
            if isinstance(closed, int | float):
                self._horizon[by_part[p]] = float(closed)
                self._report_from[by_part[p]] = float(closed)
                if closed < main_closed:
                    self._catchup[by_part[p]] = (self._new_catchup(float(closed)), main_closed)
                    log.info(
                        "%s: its previous owner emitted windows before %.0f, this replica "
                        "closed up to %.0f: rebuilding those in between",
                        by_part[p],
                        closed,
                        main_closed,
                    )
            incidents = state.get("incidents") or []
            for fn in adopt:
                if fn is not None and incidents:
                    self.incidents_adopted += fn(incidents)
        self._owned.update(streams)  # only now: our own commits must not publish state first
        await self._report_taken_over(streams)

    async def _report_taken_over(self, streams: Sequence[str]) -> None:
        """Window times this replica scored before it took ``streams`` over, and that their
        previous owner had not reported (from its horizon on): their anomalies are ours now."""
        if not self._shared:
            return
        taken = set(streams)

        def belongs(a: Anomaly) -> bool:
            return (
                self._owns(a)
                and self._stream_by_part.get(subject_partition(a.subject, self._partition_count()))
                in taken
            )

        for stage in self._shared:
            self.history_reported += await stage.report_history(belongs)

    def _new_catchup(self, horizon: float) -> WindowAggregator:
        cu = self._new_aggregator_held()
        cu.treat_as_closed_before(horizon)
        return cu

    def _release_foreign_incidents(self, owned: Sequence[str], handed: set[int]) -> None:
        """Forget open incidents of partitions this replica does not own, and of partitions
        whose handed-over state is about to be adopted. A checkpoint restored at start holds
        the incidents of every partition the replica owned before; the owners now carrying them
        on (or the state published with the commit we resume from, which matches the input
        re-read from there better than any checkpoint) decide instead."""
        n = self._partition_count()
        if n <= 0:
            return
        mine = {p for p in map(stream_partition, owned) if p is not None}

        def foreign(subject: Subject) -> bool:
            p = subject_partition(subject, n)
            return p is not None and (p not in mine or p in handed)

        for sink in self.sinks:
            release = getattr(sink, "release_incidents", None)
            if release is not None:
                self.incidents_released += release(foreign)

    async def _commit(self) -> None:
        # State first, then offsets: the state is never older than the committed position.
        # (Published windows need no acknowledgement here: their records' offsets stay held
        # until every replica scored them, which they can only once the log has them.)
        await self._publish_state()
        await super()._commit()

    async def _publish_state(self) -> None:
        n = self._partition_count()
        if self.handover is not None and self._owned and n > 0:
            closed = self.aggregator.closed_before
            states: dict[int, dict[str, Any]] = {}
            for stream in self._owned:
                p = stream_partition(stream)
                if p is None:
                    continue
                horizon = max(closed, self._horizon.get(stream, -math.inf))
                if stream in self._catchup:  # its windows below this are not all emitted yet
                    horizon = self._catchup[stream][0].closed_before
                if self.exchange is not None and self.exchange.ledger is not None:
                    # windows are reported once scored, and scored once every partition closed
                    horizon = min(horizon, self.exchange.ledger.scored_before)
                states[p] = {
                    "closed_before": horizon if horizon > -math.inf else None,
                    "incidents": [],
                }
            owned = set(states)
            for sink in self.sinks:
                export = getattr(sink, "export_incidents", None)
                if export is None:
                    continue
                for d in export(lambda subj: subject_partition(subj, n) in owned):
                    p = subject_partition(Subject(**d["subject"]), n)
                    if p in states:
                        states[p]["incidents"].append(d)
            await self.handover.publish(states)

    async def _on_revoked(self, streams: Sequence[str]) -> None:
        # Commit past what is closed while we still own the partitions, then forget the open
        # windows of their identities: the next owner rebuilds them from that commit.
        await self._score_shared()  # what is complete is reported before the state goes out
        if self.exchange is not None:
            await self.exchange.flush()  # what this replica published is in the log
        await self._publish_state()
        await super()._on_revoked(streams)
        self._stale.revoked(streams)
        self._owned.difference_update(streams)
        for stream in streams:
            self.aggregator.release_stream(stream)  # committed above: the next owner's now
            self._report_from.pop(stream, None)
            if (p := stream_partition(stream)) is not None:
                self._marks.pop(p, None)
            self._catchup.pop(stream, None)  # the next owner rebuilds them from the commit
            self._hw.pop(stream, None)
            self._unclocked.discard(stream)
            self.aggregator.forget_stream(HOLD_PREFIX + stream)
            prefix = f"{ORIGIN_PREFIX}{stream}|"
            for name in [n for n in self._origin_seen if n.startswith(prefix)]:
                del self._origin_seen[name]
                self._provisional.discard(name)
                self.aggregator.forget_stream(name)
        revoked = {p for p in map(stream_partition, streams) if p is not None}
        n = self._partition_count()
        if not revoked or n <= 0:
            return
        self.dropped_on_revoke += self.aggregator.drop_edges(
            lambda k: partition_of(edge_identity(k), n) in revoked
        )
        for sink in self.sinks:
            release = getattr(sink, "release_incidents", None)
            if release is not None:
                release(lambda subj: subject_partition(subj, n) in revoked)

    def _drain_all(self) -> list[Any]:
        # Never flush open windows on stop: the next owner (or this replica after a restart)
        # rebuilds them from the committed offsets, so a rolling restart never splits a window.
        return []


async def ensure_topic(
    kafka: KafkaSettings,
    topic: str,
    partitions: int,
    replication_factor: int,
    configs: dict[str, str] | None = None,
) -> None:
    """Create ``topic`` unless it exists (several replicas may race to create it)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**client_kwargs(kafka, "scale-out admin"))
    try:
        await asyncio.wait_for(admin.start(), timeout=kafka.connect_timeout_s)
        existing = await admin.list_topics()
        if topic in existing:
            return
        with contextlib.suppress(TopicAlreadyExistsError):  # another replica was first
            await admin.create_topics(
                [NewTopic(topic, partitions, replication_factor, topic_configs=configs or {})]
            )
    except (TimeoutError, KafkaError, OSError) as e:
        raise InfrastructureError(
            f"scale-out: cannot create topic {topic} at {','.join(kafka.bootstrap_servers)}: "
            f"{type(e).__name__} {e}".rstrip()
        ) from None
    finally:
        await admin.close()
