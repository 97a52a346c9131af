"""Scale-out on a real broker: replicas sharing the input through the internal topic.

What is pinned here:
* Two replicas, the second joining mid-run (a real consumer-group rebalance of both the input and
  the internal topic, open windows handed over), emit exactly the edge windows one replica
  emits on the same input: same edges, same counts, nothing lost, nothing counted twice.
* Both replicas really share the work (each emits windows; no edge window comes from both).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from detector.config import DetectorConfig, parse_config
from detector.decoders.envoy import decode_json
from detector.flows import EdgeWindow, Resolver
from detector.pipeline import CallbackSink, PipelineStats
from detector.repartition import partition_of, record_identity
from detector.runner import Replica, build_replica, run_replica
from detector.sources import StaticAttrs
from tests.integration.test_kafka_pipeline import T0, istio_json, unique_name

if TYPE_CHECKING:
    from conftest import KafkaHelper  # tests/integration/conftest.py (fixture ``kafka``)

pytestmark = pytest.mark.kafka

INPUT_PARTITIONS = 4
INTERNAL_PARTITIONS = 6
WINDOWS = 5
CALLERS = [(f"sa{i}", f"ns{i % 3}") for i in range(24)]
SERVICES = [("orders", "shop"), ("payments", "pay"), ("users", "id")]


def data_lines(per_window: int) -> list[bytes]:
    out = []
    i = 0
    for w in range(WINDOWS):
        for k in range(per_window):
            sa, sns = CALLERS[(k * 7 + w) % len(CALLERS)]
            svc, ns = SERVICES[k % len(SERVICES)]
            out.append(istio_json(T0 + w * 60 + k * 59.0 / per_window, sa, sns, svc, ns, i))
            i += 1
    return out


def sentinel_lines(
    ts: float = T0 + 600, cluster: str = "east", partitions: int = INTERNAL_PARTITIONS
) -> list[bytes]:
    """Lines far ahead in event time whose callers cover every internal partition: each edge
    owner's watermark moves past the data windows, so every one of them closes."""
    resolver, static = Resolver({}, {}), StaticAttrs(cluster=cluster)
    covered: dict[int, bytes] = {}
    i = 0
    while len(covered) < partitions:
        line = istio_json(ts, f"sentinel{i}", "zz", "orders", "shop", 10**6 + i)
        rec = resolver.resolve(decode_json(line, "x", 0)[0], static)
        covered.setdefault(partition_of(record_identity(rec), partitions), line)
        i += 1
    return list(covered.values())


def replica_config(bootstrap: str, topic: str, tag: str) -> DetectorConfig:
    return parse_config(
        {
            "sources": [
                {
                    "type": "kafka",
                    "name": "mesh",
                    "bootstrap_servers": [bootstrap],
                    "group_id": f"ingest-{tag}",
                    "topics": [{"name": topic, "format": "envoy_json", "cluster": "east"}],
                    "auto_offset_reset": "earliest",
                    "connect_timeout_s": 20,
                    "session_timeout_ms": 4000,
                    "heartbeat_interval_ms": 300,
                    "poll_timeout_ms": 200,
                    "max_poll_records": 200,
                }
            ],
            "aggregation": {"window_s": 60, "allowed_lateness_s": 5, "idle_stream_s": 1},
            "sinks": {"console": {"enabled": False}},
            "scale_out": {
                "topic": f"flows-{tag}",
                "partitions": INTERNAL_PARTITIONS,
                "group_id": f"edges-{tag}",
                "commit_interval_s": 0.2,
            },
        },
        "test",
    )


class ReplicaRun:
    """One replica (ingest + edge owner) in a task, with the windows it emitted."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.windows: list[EdgeWindow] = []
        self.replica: Replica = build_replica(cfg, sinks=[CallbackSink(self.windows.extend)])
        self.task: asyncio.Task[PipelineStats] = asyncio.create_task(run_replica(self.replica))

    def check(self) -> None:
        if self.task.done():
            self.task.result()
            raise AssertionError("replica ended early")

    async def stop(self) -> None:
        self.replica.stop()
        await asyncio.wait_for(self.task, timeout=30)


async def wait_for(runs: list[ReplicaRun], cond: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for r in runs:
            r.check()
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)


def forwarded_everything(runs: list[ReplicaRun], per_partition: int) -> Callable[[], bool]:
    def cond() -> bool:
        pos: dict[str, int] = {}
        for r in runs:
            for stream, off in r.replica.ingest.aggregator.positions().items():
                pos[stream] = max(pos.get(stream, 0), off)
        return len(pos) == INPUT_PARTITIONS and all(v >= per_partition for v in pos.values())

    return cond


def summary(windows: list[EdgeWindow]) -> Counter[tuple[Any, ...]]:
    return Counter(
        (w.window_start, w.edge, w.requests, w.errors, w.bytes_out)
        for w in windows
        if "sentinel" not in w.src_principal
    )


async def run_scenario(kafka: KafkaHelper, lines: list[bytes], join_second_after: int | None
                       ) -> list[ReplicaRun]:
    tag = unique_name("so")
    topic = await kafka.create_topic(f"mesh-{tag}", partitions=INPUT_PARTITIONS)
    await kafka.produce(topic, lines, partitions=list(range(INPUT_PARTITIONS)))
    cfg = replica_config(kafka.bootstrap, topic, tag)
    runs = [ReplicaRun(cfg)]
    try:
        if join_second_after is not None:
            first = runs[0]
            await wait_for(runs, lambda: first.replica.owner.stats.records >= join_second_after)
            runs.append(ReplicaRun(cfg))
            # both groups rebalance; wait until the newcomer owns internal partitions
            await wait_for(runs, lambda: runs[1].replica.owner.streams_seen > 0)
        await wait_for(runs, forwarded_everything(runs, len(lines) // INPUT_PARTITIONS))
        await asyncio.sleep(0.5)  # the last acknowledged sends reach the edge owners
        await kafka.produce(topic, sentinel_lines(), partition=0)
        starts = {T0 + 60 * w for w in range(WINDOWS)}
        await wait_for(
            runs, lambda: starts <= {w.window_start for r in runs for w in r.windows}
        )
        await asyncio.sleep(1.5)  # anything emitted twice would show up now
    finally:
        for r in runs:
            with contextlib.suppress(Exception):
                await r.stop()
    return runs


@pytest.mark.timeout(240)
async def test_two_replicas_with_a_rebalance_emit_what_one_replica_emits(
    kafka: KafkaHelper,
) -> None:
    lines = data_lines(per_window=400)
    one = await run_scenario(kafka, lines, join_second_after=None)
    expected = summary(one[0].windows)
    assert sum(k[2] * n for k, n in expected.items()) == len(lines)  # every record, once

    two = await run_scenario(kafka, lines, join_second_after=len(lines) // 3)
    got = summary([w for r in two for w in r.windows])
    # the rebalance made no record late: the handed-over partitions held the watermark until
    # their clocks were read again
    assert [r.replica.owner.aggregator.stats.late for r in two] == [0, 0]
    assert got == expected
    # the work was shared: each replica emitted windows, no edge window came from both
    per = [summary(r.windows) for r in two]
    assert all(per), "a replica emitted nothing"
    assert not (set(per[0]) & set(per[1]))
    assert two[0].replica.owner.dropped_on_revoke > 0  # open windows were handed over
