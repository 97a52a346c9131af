"""State handover between replicas: a compacted Kafka topic, one record per internal partition
(edge owners) or input partition (ingest).

Contract:
* ``HandoverLog.publish(states)`` writes, for each internal partition number, its state as the
  edge owner commits: ``closed_before`` (windows starting before it were emitted, and, with
  shared scoring, scored and reported: their records must not seed a second, partial copy at
  the next owner, which reports the partition's anomalies from there on) and the open
  ``incidents`` of the partition's identities (so an ongoing incident keeps its
  ``finding_info.uid`` across owners).
  It is awaited (acknowledged) before the offsets are committed, so the state is never older
  than the committed position.
* The ingest stage publishes, for each input partition it owns (a stream name, key
  ``input:<stream>``), where its committed position is and when its last data arrived
  (``detector.repartition.Repartitioner``), so that whoever takes the partition over next can
  tell whether, and for how long, it has been silent.
* ``HandoverLog.read(partitions)`` gives the newest state of each of ``partitions`` (reading the
  topic from the start; compaction keeps it small). A partition with no state is absent.
* The topic (key ``p<N>`` or ``input:<stream>``, JSON values) is created with
  ``cleanup.policy=compact`` when missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import orjson

from detector.errors import InfrastructureError
from detector.sources.kafka import KafkaSettings, client_kwargs

READ_TIMEOUT_S = 20.0
INPUT_KEY = "input:"  # key prefix of an input partition's state (the stream name follows)

K = TypeVar("K", int, str)  # an internal partition number, or an input partition's stream


def _key(k: int | str) -> bytes:
    return (f"p{k}" if isinstance(k, int) else INPUT_KEY + k).encode()


class HandoverLog:
    def __init__(self, kafka: KafkaSettings, topic: str, replication_factor: int = 1) -> None:
        self.kafka = kafka
        self.topic = topic
        self.replication_factor = replication_factor
        self._producer: Any = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        from aiokafka import AIOKafkaProducer

        from detector.repartition import ensure_topic

        await ensure_topic(
            self.kafka, self.topic, 1, self.replication_factor, {"cleanup.policy": "compact"}
        )
        producer = AIOKafkaProducer(**client_kwargs(self.kafka, "handover producer"), acks="all")
        try:
            await asyncio.wait_for(producer.start(), timeout=self.kafka.connect_timeout_s)
        except Exception as e:
            await producer.stop()
            raise InfrastructureError(f"handover: cannot produce to {self.topic}: {e!r}") from None
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, states: Mapping[K, Mapping[str, Any]]) -> None:
        if not states:
            return
        await self.start()
        from aiokafka.errors import KafkaError

        try:
            futs = [
                await self._producer.send(self.topic, orjson.dumps(state), key=_key(p), partition=0)
                for p, state in states.items()
            ]
            await asyncio.gather(*futs)
        except KafkaError as e:
            raise InfrastructureError(f"handover: publish to {self.topic} failed: {e!r}") from None

    async def read(self, partitions: Iterable[K]) -> dict[K, dict[str, Any]]:
        wanted = {_key(p): p for p in partitions}
        if not wanted:
            return {}
        await self.start()
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(self.topic, 0)
        consumer = AIOKafkaConsumer(
            **client_kwargs(self.kafka, "handover reader"), enable_auto_commit=False
        )
        out: dict[K, dict[str, Any]] = {}
        try:
            await asyncio.wait_for(consumer.start(), timeout=self.kafka.connect_timeout_s)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            deadline = time.monotonic() + READ_TIMEOUT_S
            while await consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"handover: reading {self.topic} timed out")
                data = await consumer.getmany(tp, timeout_ms=500)
                for msg in data.get(tp, []):
                    p = wanted.get(msg.key or b"")
                    if p is None or msg.value is None:
                        continue
                    with contextlib.suppress(orjson.JSONDecodeError):
                        state = orjson.loads(msg.value)
                        if isinstance(state, dict):
                            out[p] = state
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
        return out
