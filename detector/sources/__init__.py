"""Sources: where raw units come from (Kafka, files, stdin, the built-in simulator).

Contract of every source (see ``Source``):
* ``batches()`` is an async iterator of ``Batch``: units (bytes) of one stream (a Kafka
  partition, a file), in stream order, each with its position. It ends when the input ends
  (files without follow, stdin EOF, simulator done) or when ``stop()`` was called; a Kafka source
  runs until stopped.
* Each batch names its format and the static attributes of its stream (``StaticAttrs``: e.g. the
  cluster of a per-cluster topic), so one source may carry several formats.
* ``commit(positions)`` is called by the pipeline with, per stream, the next position that is safe
  to resume from (every unit before it is fully processed: its window closed and its results
  acknowledged). Sources that cannot resume (stdin, simulator) ignore it.
* Infrastructure failure (broker unreachable past its timeout, unreadable file) raises
  ``InfrastructureError``; bad content never does (that is the decoder's business).
* Sources apply backpressure by awaiting: the pipeline pulls batches from a bounded queue.
* Event time is held back by every stream the pipeline knows: a source may announce a stream
  with an empty batch before it has data (files do, so a slow file is not overtaken by a fast
  one), and marks a stream's last batch with ``end=True`` so it stops holding the clock.
* A unit longer than the configured maximum may be delivered cut to ``max_record_bytes + 1``
  bytes; the pipeline rejects it as ``oversized`` without reading the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StaticAttrs:
    """Attributes a stream asserts for every record it carries (DESIGN.md §3, third rule)."""

    cluster: str | None = None  # the cluster the stream comes from (a topic per cluster)
    src_cluster: str | None = None  # overrides for one side only, when the stream knows it
    dst_cluster: str | None = None
    namespace: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """Consecutive units of one stream."""

    stream: str  # stable name of the stream: "topic[partition]", a file path, "stdin"
    fmt: str  # decoder format name (``detector.decoders.FORMATS``)
    units: list[bytes]
    offsets: list[int]  # position of each unit (Kafka offset, 1-based line number)
    static: StaticAttrs = field(default_factory=StaticAttrs)
    end: bool = False  # the stream has no more data after this batch


class Source(Protocol):
    """A stream of batches; see the module docstring for the contract."""

    name: str

    def batches(self) -> AsyncIterator[Batch]: ...

    async def commit(self, positions: Mapping[str, int]) -> None: ...

    async def stop(self) -> None: ...
