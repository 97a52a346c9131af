"""The pipeline core: decode with dead letters, aggregation, sinks, commits, backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping

import orjson
import pytest

from detector import decoders
from detector.errors import DecodeError, InfrastructureError, PartialDecode
from detector.flows import EdgeWindow
from detector.pipeline import CallbackSink, Pipeline, PipelineSettings
from detector.records import FlowRecord
from detector.sources import Batch, StaticAttrs


def _toy_decode(data: bytes, source: str | None = None, offset: int | None = None) -> list[FlowRecord]:
    """A tiny format for testing the core: {"ts":..,"p":..,"s":..} or control words."""
    if data == b"crash":
        raise ZeroDivisionError("decoder bug")
    if data == b"partial":
        raise PartialDecode([FlowRecord(ts=5, src_principal="p", dst_service="s")], ["bad_item"])
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DecodeError("not_json") from None
    return [FlowRecord(ts=float(d["ts"]), src_principal=d.get("p"), dst_service=d.get("s"),
                       source=source, offset=offset)]


@pytest.fixture(autouse=True)
def toy_format() -> Iterator[None]:
    decoders._cache["toy"] = _toy_decode
    yield
    decoders._cache.pop("toy", None)


def unit(ts: float, p: str = "a", s: str = "svc") -> bytes:
    return orjson.dumps({"ts": ts, "p": p, "s": s})


class ListSource:
    """A source of prepared batches that records what the pipeline commits."""

    def __init__(self, batches: list[Batch], name: str = "list") -> None:
        self.name = name
        self._batches = batches
        self.commits: list[dict[str, int]] = []
        self.stopped = False

    async def batches(self) -> AsyncIterator[Batch]:
        for b in self._batches:
            yield b
            await asyncio.sleep(0)

    async def commit(self, positions: Mapping[str, int]) -> None:
        self.commits.append(dict(positions))

    async def stop(self) -> None:
        self.stopped = True


def batch(stream: str, units: list[bytes], first: int, end: bool = False) -> Batch:
    return Batch(stream, "toy", units, list(range(first, first + len(units))),
                 StaticAttrs(cluster="c1"), end=end)


async def test_bad_input_is_counted_dead_lettered_and_good_records_survive() -> None:
    windows: list[EdgeWindow] = []
    p = Pipeline(PipelineSettings(window_s=60, allowed_lateness_s=0, max_record_bytes=100),
                 sinks=[CallbackSink(windows.extend)])
    units = [unit(1), b"{not json", unit(2), b"crash", b"x" * 101, b"partial", unit(3)]
    src = ListSource([batch("f", units, 1, end=True)])
    stats = await p.run([src])
    assert sum(w.requests for w in windows) == 4  # 3 good + 1 good item of the partial unit
    assert stats.bad_by_reason == {"not_json": 1, "decoder_crash": 1, "oversized": 1,
                                   "bad_item": 1}
    assert stats.bad_units == 3  # the partial unit still gave a record
    dl = {(d["reason"], d["offset"]) for d in p.dead_letters.recent}
    assert dl == {("not_json", 2), ("decoder_crash", 4), ("oversized", 5), ("bad_item", 6)}
    assert all(d["stream"] == "f" for d in p.dead_letters.recent)
    # the static attribute of the stream resolved the destination cluster
    assert {w.dst_cluster for w in windows} == {"c1"}
    assert src.stopped


async def test_windows_reach_sinks_before_commit_and_commit_is_safe() -> None:
    events: list[tuple[str, object]] = []

    class Src(ListSource):
        async def commit(self, positions: Mapping[str, int]) -> None:
            events.append(("commit", dict(positions)))

    def sink(ws: list[EdgeWindow]) -> None:
        events.append(("windows", sorted({w.window_start for w in ws})))

    p = Pipeline(PipelineSettings(window_s=60, allowed_lateness_s=0),
                 sinks=[CallbackSink(sink)])
    src = Src([
        batch("t[0]", [unit(10), unit(20)], 100),
        batch("t[0]", [unit(70)], 102),  # closes [0,60): safe to commit up to 102
        batch("t[0]", [unit(130)], 103),  # closes [60,120): safe up to 103
    ])
    await p.run([src])
    assert events[0] == ("windows", [0.0])
    assert events[1] == ("commit", {"t[0]": 102})
    assert events[2] == ("windows", [60.0])
    assert events[3] == ("commit", {"t[0]": 103})
    assert events[-1] == ("commit", {"t[0]": 104})  # after the final flush


async def test_sink_failure_stops_the_run_without_committing() -> None:
    class Broken:
        async def emit(self, windows: list[EdgeWindow]) -> None:
            raise InfrastructureError("webhook store unavailable")

        async def close(self) -> None:
            return None

    p = Pipeline(PipelineSettings(window_s=60, allowed_lateness_s=0), sinks=[Broken()])
    src = ListSource([batch("t[0]", [unit(10)], 0), batch("t[0]", [unit(100)], 1)])
    with pytest.raises(InfrastructureError):
        await p.run([src])
    assert src.commits == []


async def test_source_failure_is_infrastructure_error() -> None:
    class Failing(ListSource):
        async def batches(self) -> AsyncIterator[Batch]:
            yield batch("x", [unit(1)], 0)
            raise ConnectionResetError("broker went away")

    with pytest.raises(InfrastructureError, match="broker went away"):
        await Pipeline().run([Failing([])])


async def test_two_sources_interleave_in_event_time_without_late_records() -> None:
    windows: list[EdgeWindow] = []
    p = Pipeline(PipelineSettings(window_s=60, allowed_lateness_s=0),
                 sinks=[CallbackSink(windows.extend)])
    # stream b announces itself before it has data, so a's progress cannot close its windows
    a = ListSource([batch("b", [], 0), batch("a", [unit(t) for t in range(0, 600, 10)], 0,
                                             end=True)], name="a")

    class Slow(ListSource):
        async def batches(self) -> AsyncIterator[Batch]:
            await asyncio.sleep(0.05)
            async for b in super().batches():
                yield b

    b = Slow([batch("b", [unit(t, p="bb") for t in range(0, 600, 30)], 0, end=True)], name="b")
    await p.run([a, b])
    assert p.aggregator.stats.late == 0
    assert sum(w.requests for w in windows) == 60 + 20


async def test_stop_flushes_open_windows() -> None:
    windows: list[EdgeWindow] = []
    p = Pipeline(PipelineSettings(window_s=3600), sinks=[CallbackSink(windows.extend)])

    class Endless(ListSource):
        async def batches(self) -> AsyncIterator[Batch]:
            i = 0
            while True:
                yield batch("e", [unit(i)], i)
                i += 1
                await asyncio.sleep(0.001)

    async def stop_soon() -> None:
        await asyncio.sleep(0.2)
        p.stop()

    src = Endless([])
    _, stats = await asyncio.gather(stop_soon(), p.run([src]))
    assert stats.records > 0
    assert sum(w.requests for w in windows) == stats.records
    assert src.stopped


async def test_idle_streams_let_windows_close_on_a_quiet_mesh() -> None:
    windows: list[EdgeWindow] = []
    p = Pipeline(PipelineSettings(window_s=1, allowed_lateness_s=0, idle_stream_s=0.2),
                 sinks=[CallbackSink(windows.extend)])

    class Quiet(ListSource):
        async def batches(self) -> AsyncIterator[Batch]:
            yield batch("q", [unit(100.5)], 0)
            await asyncio.sleep(1.5)  # nothing more arrives for a while

    task = asyncio.create_task(p.run([Quiet([])]))
    await asyncio.sleep(1.2)
    assert [w.window_start for w in windows] == [100.0], "window not closed while idle"
    await task


async def test_bounded_queue_applies_backpressure() -> None:
    produced = 0

    class Fast(ListSource):
        async def batches(self) -> AsyncIterator[Batch]:
            nonlocal produced
            for i in range(1000):
                produced += 1
                yield batch("f", [unit(i)], i)

    p = Pipeline(PipelineSettings(queue_batches=4))
    orig = p.process_batch
    seen_gap = []

    def slow_process(b: Batch) -> None:
        seen_gap.append(produced - b.offsets[0])
        orig(b)

    p.process_batch = slow_process  # type: ignore[method-assign]
    await p.run([Fast([])])
    # the source can never run more than queue size (+ the one in hand) ahead of the core
    assert max(seen_gap) <= 4 + 2


async def test_revoked_partitions_commit_safe_positions_and_release_the_clock() -> None:
    class Rebalancing(ListSource):
        def __init__(self, batches: list[Batch]) -> None:
            super().__init__(batches)
            self.revoke_cbs: list = []

        def on_revoked(self, cb) -> None:  # type: ignore[no-untyped-def]
            self.revoke_cbs.append(cb)

        async def batches(self) -> AsyncIterator[Batch]:
            yield batch("t[0]", [unit(10)], 100)
            yield batch("t[1]", [unit(20)], 7)
            await asyncio.sleep(0.01)
            for cb in self.revoke_cbs:  # the broker takes t[1] away
                await cb(["t[1]"])

    p = Pipeline(PipelineSettings(window_s=60, allowed_lateness_s=0))
    src = Rebalancing([])
    await p.run([src])
    # while still owned, t[1] was committed at the first offset of its open window, not past it
    assert src.commits[0] == {"t[1]": 7}
    assert "t[1]" not in p.aggregator._stream_max_ts
