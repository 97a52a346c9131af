"""Simulator source: the built-in traffic simulator as a ``Source`` (demo, tests, benchmarks).

Contract (see ``detector.sources`` for the common one):
* Streams are ``sim/<cluster>/<fmt>`` (e.g. ``sim/prod-eu/envoy_json``), each with
  ``StaticAttrs(cluster=<cluster>)``: the cluster whose proxies/API server wrote the records.
  Positions are 1-based record numbers per stream.
* Batches come in event-time order across streams: all buffered streams are flushed together
  every ``flush_s`` of event time (or when a stream holds ``batch_size`` units), so no stream
  runs ahead of another by more than that.
* ``limit`` caps the number of records; ``speedup`` paces event time against the wall clock
  (``None``: as fast as possible; ``60.0``: one simulated minute per second). When the span or
  the limit is exhausted every stream gets a final empty ``end=True`` batch; after ``stop()`` the
  iterator ends at the next batch boundary (without end markers: the pipeline is shutting down).
* ``commit`` is ignored: the simulator is deterministic, a restart replays the same records.
* Generation runs in the event loop between awaits (it is CPU-bound and fast); with pacing, the
  source sleeps instead of generating ahead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from detector.simulation.scenarios import Scenario
from detector.simulation.traffic import SimOptions, Simulator
from detector.sources import Batch, StaticAttrs


class SimulatorSource:
    """A ``Source`` producing simulated mesh telemetry (see the module docstring)."""

    def __init__(
        self,
        *,
        seed: int = 7,
        start: float | None = None,
        duration_s: float = 3600.0,
        rate_multiplier: float = 1.0,
        speedup: float | None = None,
        limit: int | None = None,
        formats: Sequence[str] = ("envoy_json", "envoy_text", "k8s_audit"),
        scenarios: Sequence[Scenario] = (),
        batch_size: int = 500,
        flush_s: float = 1.0,
        name: str = "simulator",
        **options: Any,
    ) -> None:
        # Default start: the last whole hour before now, so a live demo shows plausible clocks.
        self.start = float(start if start is not None else (time.time() // 3600 - 1) * 3600)
        self.end = self.start + duration_s
        self.speedup = speedup
        self.limit = limit
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.name = name
        self._stopped = False
        self.sim = Simulator(
            SimOptions(
                seed=seed,
                formats=tuple(formats),
                scenarios=tuple(scenarios),
                rate_multiplier=rate_multiplier,
                **options,
            )
        )

    async def batches(self) -> AsyncIterator[Batch]:
        buffers: dict[tuple[str, str], list[bytes]] = {}
        firsts: dict[tuple[str, str], int] = {}
        counts: dict[tuple[str, str], int] = {}
        wall0 = time.monotonic()
        next_flush = self.start + self.flush_s
        produced = 0
        finished = True

        def take(key: tuple[str, str]) -> Batch:
            units = buffers.pop(key)
            first = firsts.pop(key)
            fmt, cluster = key[1], key[0]
            return Batch(
                stream=f"sim/{cluster}/{fmt}",
                fmt=fmt,
                units=units,
                offsets=list(range(first, first + len(units))),
                static=StaticAttrs(cluster=cluster),
            )

        async def pace(ts: float) -> None:
            if self.speedup:
                due = wall0 + (ts - self.start) / self.speedup
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the pipeline run between batches

        for fmt, cluster, ts, unit in self.sim.records(self.start, self.end):
            if self._stopped:
                finished = False
                break
            if ts >= next_flush and buffers:
                # Flush every stream up to this event time, in a fixed order.
                await pace(next_flush)
                for key in sorted(buffers):
                    yield take(key)
                if self._stopped:
                    finished = False
                    break
            if ts >= next_flush:
                next_flush = ts - (ts - self.start) % self.flush_s + self.flush_s
            key = (cluster, fmt)
            buf = buffers.get(key)
            if buf is None:
                buf = buffers[key] = []
                n = counts.get(key, 0)
                firsts[key] = n + 1
            buf.append(unit)
            counts[key] = counts.get(key, 0) + 1
            produced += 1  # noqa: SIM113 - counts records kept, not loop turns
            if len(buf) >= self.batch_size:
                yield take(key)
            if self.limit is not None and produced >= self.limit:
                break
        if finished:
            for key in sorted(buffers):
                yield take(key)
            for cluster, fmt in sorted(counts):
                yield Batch(
                    stream=f"sim/{cluster}/{fmt}",
                    fmt=fmt,
                    units=[],
                    offsets=[],
                    static=StaticAttrs(cluster=cluster),
                    end=True,
                )

    async def commit(self, positions: Mapping[str, int]) -> None:
        return None  # deterministic: a restart regenerates the same records

    async def stop(self) -> None:
        self._stopped = True
