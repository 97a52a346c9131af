"""The pipeline: sources -> decode -> resolve -> (join spans) -> aggregate -> window sinks.

Contract:
* ``Pipeline.run(sources)`` pumps every source into one bounded queue (backpressure: a source
  awaits while the core is busy) and processes batches in the core, which is plain synchronous
  code. It returns ``PipelineStats`` when every source has ended (or ``stop()`` was called),
  after flushing every open window to the sinks.
* Decoding: a unit over ``max_record_bytes`` is rejected as ``oversized``; ``DecodeError`` and
  ``PartialDecode`` are counted by reason and dead-lettered with the stream and position, and
  processing goes on with the next unit; any other exception from a decoder is caught too
  (reason ``decoder_crash``): bad input never stops the service.
* Closed windows go to every sink (``WindowSink.emit``) before offsets are committed, and
  offsets are committed only up to the positions the aggregator says are fully processed:
  at-least-once, nothing skipped. A sink or source raising ``InfrastructureError`` stops the run
  with that error (the service then exits non-zero).
* The watermark waits for every known stream; a stream with no data for ``idle_stream_s`` of
  wall clock stops holding it; when every stream is idle, event time follows the wall clock so
  windows still close on a quiet mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from detector import fastpath
from detector.deadletters import DeadLetters
from detector.decoders import Decoder, get_decoder
from detector.errors import DecodeError, InfrastructureError, PartialDecode
from detector.flows import EdgeWindow, Resolver, WindowAggregator
from detector.instrumentation import Metrics
from detector.records import FlowRecord
from detector.sources import Batch, Source, StaticAttrs


class WindowSink(Protocol):
    """Receives closed edge windows; returning means they are safely handled (acknowledged)."""

    async def emit(self, windows: list[EdgeWindow]) -> None: ...

    async def close(self) -> None: ...


class CallbackSink:
    """Adapts a plain function (sync or async) to ``WindowSink``."""

    def __init__(self, fn: Callable[[list[EdgeWindow]], Awaitable[None] | None]) -> None:
        self.fn = fn

    async def emit(self, windows: list[EdgeWindow]) -> None:
        result = self.fn(windows)
        if result is not None:
            await result

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class PipelineSettings:
    window_s: float = 60.0
    allowed_lateness_s: float = 30.0
    idle_stream_s: float = 10.0
    max_open_edges: int = 1_000_000
    max_routes_per_service: int = 100
    edge_idle_ttl_s: float = 86_400.0
    span_join_ttl_s: float = 30.0
    span_join_max_pending: int = 100_000
    max_record_bytes: int = 1024 * 1024
    queue_batches: int = 64
    trust_domains: dict[str, str] = field(default_factory=dict)
    cidrs: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class PipelineStats:
    units: int = 0
    records: int = 0
    bad_units: int = 0
    late: int = 0
    windows_closed: int = 0
    edge_windows: int = 0
    elapsed_s: float = 0.0
    bad_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def units_per_s(self) -> float:
        return self.units / self.elapsed_s if self.elapsed_s > 0 else 0.0


_END = object()
COMMIT_INTERVAL_S = 5.0
# Gauges that need a look outside the core (consumer lag, outbox counts, blind clusters) are
# refreshed at most this often (wall seconds), and counters after every closed-window batch.
METRICS_INTERVAL_S = 1.0


class Pipeline:
    def __init__(
        self,
        settings: PipelineSettings | None = None,
        sinks: Iterable[WindowSink] = (),
        dead_letters: DeadLetters | None = None,
        metrics: Metrics | None = None,
        on_progress: Callable[[Batch], None] | None = None,
    ) -> None:
        self.settings = s = settings or PipelineSettings()
        self.sinks = list(sinks)
        self.dead_letters = dead_letters or DeadLetters()
        self.metrics = metrics or Metrics()
        self.on_progress = on_progress
        self.resolver = Resolver(s.trust_domains, s.cidrs)
        self.aggregator = self.new_aggregator()
        self.joiner: Any = None  # created on the first span (see ``_join``)
        self.stats = PipelineStats()
        self._stop = asyncio.Event()
        self._stream_source: dict[str, Source] = {}
        self._stream_wall: dict[str, float] = {}
        self._decoders: dict[str, Decoder] = {}
        self._late_seen: dict[str, int] = {}
        self._overflow_seen = 0
        self._joins_seen: dict[str, int] = {}
        self.ready = False
        self._last_commit = time.monotonic()
        self._metrics_at = -math.inf  # monotonic time of the last periodic metrics refresh

    # -- public ------------------------------------------------------------------------------

    def new_aggregator(self) -> WindowAggregator:
        """A window aggregator with this pipeline's settings."""
        s = self.settings
        return WindowAggregator(
            window_s=s.window_s,
            allowed_lateness_s=s.allowed_lateness_s,
            max_open_edges=s.max_open_edges,
            max_routes_per_service=s.max_routes_per_service,
            edge_idle_ttl_s=s.edge_idle_ttl_s,
        )

    def stop(self) -> None:
        self._stop.set()

    @property
    def streams_seen(self) -> int:
        """Streams that delivered or announced themselves (readiness: sources assigned)."""
        return len(self._stream_wall)

    async def run(self, sources: Sequence[Source]) -> PipelineStats:
        start = time.perf_counter()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.settings.queue_batches)
        for src in sources:
            hook = getattr(src, "on_revoked", None)
            if hook is not None:
                hook(self._on_revoked)
        pumps = [asyncio.create_task(self._pump(src, queue)) for src in sources]
        stopper = asyncio.create_task(self._stop.wait())
        remaining = len(pumps)
        tick = max(0.05, min(1.0, self.settings.idle_stream_s / 4))
        self.ready = True
        try:
            while remaining:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getter, stopper}, timeout=tick, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    if stopper in done:
                        break
                    await self._on_idle()
                    continue
                item = getter.result()
                if item is _END:
                    remaining -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                src, batch = item
                self._stream_source[batch.stream] = src
                self.process_batch(batch)
                self.metrics.queue_depth.set(queue.qsize())
                await self._after_batch()
            # End of input (or stop): everything still open is as complete as it will get.
            await self._emit(self._drain_all())
            await self._commit()
        finally:
            self.ready = False
            stopper.cancel()
            for p in pumps:
                p.cancel()
            for p in pumps:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await p
            for src in sources:
                with contextlib.suppress(Exception):
                    await src.stop()
            self.dead_letters.flush()
            self.stats.elapsed_s = time.perf_counter() - start
        return self.stats

    # -- core (synchronous) ------------------------------------------------------------------

    def decode_batch(self, batch: Batch, resolve: bool = True) -> list[FlowRecord]:
        """Decode (and resolve) one batch; bad units are counted and dead-lettered."""
        decode = self._decoders.get(batch.fmt)
        if decode is None:
            decode = self._decoders[batch.fmt] = get_decoder(batch.fmt)
        stream = batch.stream
        maxb = self.settings.max_record_bytes
        # Compiled loops take the units they can (for ``auto``: the access-log units ``sniff``
        # names); anything else goes through ``slow``, so records and dead letters are the same.
        fused = fastpath.batch_decoder(batch.fmt)
        if fused is not None:

            def slow(unit: bytes, off: int) -> list[FlowRecord] | None:
                return self._decode_unit(decode, stream, unit, off)

            out, bad = fused(batch.units, batch.offsets, stream, maxb, slow)
        else:
            out = []
            append = out.append
            extend = out.extend
            bad = 0
            decode_unit = self._decode_unit
            for unit, off in zip(batch.units, batch.offsets, strict=False):
                recs = decode_unit(decode, stream, unit, off)
                if recs is None:
                    bad += 1
                elif len(recs) == 1:
                    append(recs[0])
                elif recs:
                    extend(recs)
        self.stats.units += len(batch.units)
        self.stats.bad_units += bad
        if batch.units:
            self.metrics.records.labels(self._source_name(stream), batch.fmt).inc(
                len(batch.units) - bad
            )
        if not resolve:
            return out
        fill = self.resolver.resolve
        static = batch.static
        return [fill(r, static) for r in out]

    def _decode_unit(
        self, decode: Decoder, stream: str, unit: bytes, off: int
    ) -> list[FlowRecord] | None:
        """One unit's records; None when it is bad (counted and dead-lettered here)."""
        if len(unit) > self.settings.max_record_bytes:
            self._bad(stream, off, "oversized", unit, f"{len(unit)}+ bytes")
            return None
        try:
            return decode(unit, stream, off)
        except DecodeError as e:
            self._bad(stream, off, e.reason, unit, e.detail)
            return None
        except PartialDecode as e:
            for reason in e.problems:
                self._bad(stream, off, reason, unit, "item of a multi-record unit")
            return e.records
        except RecursionError:
            self._bad(stream, off, "too_deep", unit)
            return None
        except Exception as e:  # a decoder bug must not stop the service
            self._bad(stream, off, "decoder_crash", unit, repr(e)[:200])
            return None

    def process_batch(self, batch: Batch) -> None:
        """Decode, resolve, join and aggregate one batch (the whole synchronous core)."""
        agg = self.aggregator
        stream = batch.stream
        records = self.prepare_batch(batch)
        if records is None:
            return
        # Offsets are tracked per batch window: a record's exact position matters only for the
        # window it fed, and the batch's first offset is a safe lower bound for every record.
        if records:
            agg.add_batch(stream, records, batch.offsets[0])
        self._finish_batch(batch, len(records))

    def _finish_batch(self, batch: Batch, records: int) -> None:
        """A batch's units are seen (whatever became of them): move the stream's position, count,
        end the stream if it ended, report progress."""
        agg = self.aggregator
        agg.note_offset(batch.stream, batch.offsets[-1])
        self.stats.records += records
        if batch.end:
            agg.end_stream(batch.stream)
        if self.on_progress is not None:
            self.on_progress(batch)

    def prepare_batch(self, batch: Batch) -> list[FlowRecord] | None:
        """Decode, join and resolve one batch; None for a control batch (no units), which only
        registers or ends its stream."""
        agg = self.aggregator
        stream = batch.stream
        self._stream_wall[stream] = time.monotonic()
        if not batch.units:
            if batch.end:
                agg.end_stream(stream)
            else:
                agg.register_stream(stream)
            return None
        records = self.decode_batch(batch, resolve=False)
        if records and (self.joiner is not None or fastpath.has_spans(records)):
            # join before resolution: a half's missing cluster must not read "unknown" yet
            records = self._join(records)
        return fastpath.resolve_records(records, self.resolver, batch.static)

    async def _after_batch(self) -> None:
        """After each batch: emit the windows the watermark closed (and commit past them)."""
        await self._emit(self.aggregator.close_ready())

    # -- helpers -----------------------------------------------------------------------------

    def _join(self, records: list[FlowRecord]) -> list[FlowRecord]:
        if self.joiner is None:
            from detector.spans import SpanJoiner

            self.joiner = SpanJoiner(
                ttl_s=self.settings.span_join_ttl_s, max_pending=self.settings.span_join_max_pending
            )
        out: list[FlowRecord] = []
        add = self.joiner.add
        for r in records:
            out.extend(add(r))
        wm = self.aggregator.watermark
        if wm > -math.inf:
            # the joiner's TTL runs from the newest event time every stream has reached
            out.extend(self.joiner.expire(wm + self.settings.allowed_lateness_s))
        return out

    def _drain_all(self) -> list[EdgeWindow]:
        rest = self._unjoined_rest()
        if rest:
            self.aggregator.add_batch("span-join", rest)
        return self.aggregator.flush()

    def _unjoined_rest(self) -> list[FlowRecord]:
        """End of input: the span halves still waiting for their other half, resolved."""
        if self.joiner is None:
            return []
        fill = self.resolver.resolve
        static = StaticAttrs()
        return [fill(r, static) for r in self.joiner.expire(math.inf)]

    def _bad(
        self, stream: str, off: int | None, reason: str, unit: bytes, detail: str = ""
    ) -> None:
        self.dead_letters.add(stream, off, reason, unit, detail)
        self.stats.bad_by_reason[reason] = self.stats.bad_by_reason.get(reason, 0) + 1
        self.metrics.bad_records.labels(self._source_name(stream), reason).inc()

    def _source_name(self, stream: str) -> str:
        src = self._stream_source.get(stream)
        return getattr(src, "name", "unknown") if src is not None else "unknown"

    async def _pump(self, src: Source, queue: asyncio.Queue[Any]) -> None:
        try:
            async for batch in src.batches():
                await queue.put((src, batch))
        except asyncio.CancelledError:
            raise
        except InfrastructureError as e:
            await queue.put(e)
        except Exception as e:  # a source bug is an infrastructure failure: exit, restart
            await queue.put(InfrastructureError(f"source {src.name} failed: {e!r}"))
        await queue.put(_END)

    async def _on_revoked(self, streams: Sequence[str]) -> None:
        """Partitions are being taken away: commit what is safe for them while we still own
        them, so the next owner re-reads as little as possible (at-least-once: records of
        still-open windows are read again by the next owner)."""
        positions = self._positions()
        by_source: dict[int, tuple[Source, dict[str, int]]] = {}
        for stream in streams:
            src = self._stream_source.get(stream)
            if src is not None and stream in positions:
                by_source.setdefault(id(src), (src, {}))[1][stream] = positions[stream]
        for src, per_stream in by_source.values():
            await src.commit(per_stream)
        for stream in streams:
            self.aggregator.end_stream(stream)

    async def _on_idle(self) -> None:
        now = time.monotonic()
        agg = self.aggregator
        idle_s = self.settings.idle_stream_s
        all_idle = True
        for stream, wall in self._stream_wall.items():
            idle = now - wall >= idle_s
            agg.mark_idle(stream, idle)
            all_idle = all_idle and idle
        if all_idle and self._stream_wall:
            newest = agg.newest_event_ts
            if newest > -math.inf:
                # A quiet mesh: let event time follow the wall clock so windows still close.
                quiet = now - max(self._stream_wall.values())
                agg.advance_to(newest + quiet - idle_s)
        await self._emit(agg.close_ready())

    async def _emit(self, windows: list[EdgeWindow]) -> None:
        agg = self.aggregator
        m = self.metrics
        if windows:
            per: dict[tuple[str, str, str], int] = {}
            for w in windows:
                k = (w.src_cluster, w.dst_cluster)
                for outcome, n in (
                    ("ok", w.ok),
                    ("error", w.errors),
                    ("denied", w.denied),
                    ("unauthenticated", w.unauthenticated),
                ):
                    if n:
                        per[(*k, outcome)] = per.get((*k, outcome), 0) + n
            for (sc, dc, outcome), n in per.items():
                m.flow_records.labels(sc, dc, outcome).inc(n)
            for sink in self._window_sinks():
                await sink.emit(windows)  # InfrastructureError propagates: exit, restart
            self.stats.edge_windows += len(windows)
            m.edge_windows.inc(len(windows))
            end = max(w.window_end for w in windows)
            m.window_lag.set(max(0.0, time.time() - end))
        st = agg.stats
        m.windows_closed.inc(st.windows_closed - self.stats.windows_closed)
        self.stats.windows_closed = st.windows_closed
        for stream, n in st.late_by_stream.items():
            seen = self._late_seen.get(stream, 0)
            if n > seen:
                m.late_records.labels(self._source_name(stream)).inc(n - seen)
                self._late_seen[stream] = n
        self.stats.late = st.late
        if st.overflow > self._overflow_seen:
            m.overflow_records.inc(st.overflow - self._overflow_seen)
            self._overflow_seen = st.overflow
        m.edges_tracked.set(agg.edges_tracked)
        m.open_edges.set(agg.open_edges)
        if agg.watermark > -math.inf:
            m.watermark.set(agg.watermark)
        await self._export_metrics(windows)
        # Positions move when windows close; otherwise a slow periodic commit covers batches
        # that were entirely late or bad.
        if windows or time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
            await self._commit()

    async def _export_metrics(self, windows: list[EdgeWindow]) -> None:
        """Metrics beyond the core's own: clusters seen in ``windows``, then (after a batch, or
        every ``METRICS_INTERVAL_S``) blind clusters, consumer lag and what sinks export."""
        m = self.metrics
        wall = time.time()
        if windows:
            newest: dict[str, float] = {}
            for w in windows:
                for c in (w.src_cluster, w.dst_cluster):
                    if w.last_seen > newest.get(c, -math.inf):
                        newest[c] = w.last_seen
            m.observe_clusters(newest, wall)
        mono = time.monotonic()
        slow = mono - self._metrics_at >= METRICS_INTERVAL_S
        if not (windows or slow):
            return
        if slow:
            self._metrics_at = mono
            m.update_blind(wall, self.settings.window_s + self.settings.allowed_lateness_s)
            for src in {id(s): s for s in self._stream_source.values()}.values():
                lag = getattr(src, "lag", None)
                if callable(lag):
                    with contextlib.suppress(Exception):  # metrics never stop the pipeline
                        m.set_consumer_lag(lag())
        for sink in self.sinks:
            export = getattr(sink, "export_metrics", None)
            if export is not None:
                await export(m, wall, slow)

    def _window_sinks(self) -> list[WindowSink]:
        """The sinks this pipeline's closed windows go to (scale-out scores elsewhere)."""
        return self.sinks

    def _positions(self) -> dict[str, int]:
        """Per stream, the next offset safe to commit."""
        return self.aggregator.positions()

    async def _commit(self) -> None:
        positions = self._positions()
        by_source: dict[int, tuple[Source, dict[str, int]]] = {}
        for stream, next_offset in positions.items():
            src = self._stream_source.get(stream)
            if src is None:
                continue
            by_source.setdefault(id(src), (src, {}))[1][stream] = next_offset
        for src, per_stream in by_source.values():
            await src.commit(per_stream)
        self._last_commit = time.monotonic()


def settings_from_config(cfg: Any) -> PipelineSettings:
    """``PipelineSettings`` from a validated ``DetectorConfig``."""
    a = cfg.aggregation
    return PipelineSettings(
        window_s=a.window_s,
        allowed_lateness_s=a.allowed_lateness_s,
        idle_stream_s=a.idle_stream_s,
        max_open_edges=a.max_open_edges,
        max_routes_per_service=a.max_routes_per_service,
        edge_idle_ttl_s=a.edge_idle_ttl_s,
        span_join_ttl_s=a.span_join_ttl_s,
        span_join_max_pending=a.span_join_max_pending,
        max_record_bytes=cfg.dead_letters.max_record_bytes,
        queue_batches=cfg.pipeline.queue_batches,
        trust_domains=dict(cfg.resolution.trust_domains),
        cidrs=dict(cfg.resolution.cidrs),
    )
