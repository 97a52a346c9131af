"""The window log of shared scoring (``detector.exchange.WindowExchange``) on a real broker.

What is pinned here: windows two edge owners publish come back to every reader as the same
complete window times, in order; a reader resuming from a checkpoint's ledger state gets
exactly the window times after it, and a reader without one reads the log from its start.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from detector.exchange import WindowExchange
from detector.flows import EdgeWindow
from detector.sources.kafka import KafkaSettings
from tests.integration.conftest import unique_name
from tests.unit.test_exchange import window

if TYPE_CHECKING:
    from conftest import KafkaHelper  # tests/integration/conftest.py (fixture ``kafka``)

pytestmark = pytest.mark.kafka


def exchange(bootstrap: str, topic: str) -> WindowExchange:
    kafka = KafkaSettings(
        bootstrap_servers=[bootstrap],
        group_id="unused",
        topics=[{"name": "unused"}],
        connect_timeout_s=20,
    )
    return WindowExchange(kafka, topic, retention_ms=3_600_000)


async def complete(ex: WindowExchange, times: int, timeout_s: float = 30) -> list[list[EdgeWindow]]:
    out: list[list[EdgeWindow]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < times:
        assert time.monotonic() < deadline, f"got {len(out)} of {times} window times"
        out += ex.complete()
        await asyncio.sleep(0.05)
    return out


@pytest.mark.timeout(120)
async def test_every_reader_gets_the_same_window_times_and_a_checkpoint_resumes_them(
    kafka: KafkaHelper,
) -> None:
    topic = unique_name("windows")
    owner_a, owner_b = exchange(kafka.bootstrap, topic), exchange(kafka.bootstrap, topic)
    await owner_a.start(2)
    await owner_b.start(2)
    reader = exchange(kafka.bootstrap, topic)
    try:
        # owner A has partition 0, owner B partition 1; B lags one window behind A
        await owner_a.publish(0, 120.0, [window(0, "a1"), window(60, "a2")])
        await owner_b.publish(1, 60.0, [window(0, "b1")])
        await owner_a.flush()
        await owner_b.flush()
        await reader.start(2)
        first = await complete(reader, 1)
        assert first == [[window(0, "a1"), window(0, "b1")]]
        assert await complete(owner_a, 1) == first  # the owners read the same log
        assert reader.ledger is not None
        state = reader.ledger.state()  # what a checkpoint taken now keeps
        await owner_b.publish(1, 180.0, [window(60, "b2"), window(120, "b3")])
        await owner_a.publish(0, 180.0, [window(120, "a3")])
        await owner_a.flush()
        await owner_b.flush()
        rest = await complete(reader, 2)
        assert rest == [
            [window(60, "a2"), window(60, "b2")],
            [window(120, "a3"), window(120, "b3")],
        ]
        resumed, fresh = exchange(kafka.bootstrap, topic), exchange(kafka.bootstrap, topic)
        resumed.resume_from(state)
        await resumed.start(2)
        await fresh.start(2)
        try:
            assert await complete(resumed, 2) == rest
            assert await complete(fresh, 3) == first + rest
        finally:
            await resumed.stop()
            await fresh.stop()
    finally:
        for ex in (owner_a, owner_b, reader):
            await ex.stop()
