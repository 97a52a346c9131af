"""Benchmark: webhook deliveries/s through the durable outbox vs a bare aiohttp POST loop.

Usage: ``.venv/bin/python benchmarks/bench_outbox.py [--n 20000] [--incidents 2000]``

A receiver runs in a separate process on 127.0.0.1 (so it does not share the sender's event
loop), answers 204 and verifies one request in ``--verify-every`` with the independent
``standardwebhooks`` library. In the same run the script measures:
* baseline: the same bodies POSTed by a plain aiohttp loop with the same concurrency (no
  signing, no SQLite) - the ceiling of this machine's loopback HTTP;
* outbox: ``WebhookSink.emit`` of N OCSF-shaped findings in pipeline-sized batches (each batch
  committed to SQLite, WAL, synchronous=FULL) while the workers sign and deliver, ordered per
  incident; time from the first emit until the queue is empty.
It prints both rates and their ratio (target: >= 1,000 deliveries/s).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from detector.delivery import WebhookEndpointSettings, WebhookSink
from detector.delivery.signing import new_secret


def _receiver(port_q: Any, secret: str, verify_every: int) -> None:
    from aiohttp import web
    from standardwebhooks import Webhook

    wh = Webhook(secret)
    state = {"n": 0, "verified": 0, "bad": 0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        state["n"] += 1
        if verify_every and "webhook-id" in request.headers and state["n"] % verify_every == 0:
            try:
                wh.verify(body, dict(request.headers), json_parse=False)
                state["verified"] += 1
            except Exception:
                state["bad"] += 1
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.json_response(state)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_get("/count", count)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_q.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


def findings(n: int, incidents: int) -> list[dict[str, Any]]:
    ns = uuid.UUID("5d1c0a9e-3b7f-4c2d-8e6a-9f0b1c2d3e4f")
    out = []
    for k in range(n):
        i, seq = k % incidents, k // incidents
        inc = str(uuid.uuid5(ns, str(i)))
        out.append(
            {
                "class_uid": 2004,
                "activity_id": 1 if seq == 0 else 2,
                "type_uid": 200401 if seq == 0 else 200402,
                "time": 1_700_000_000_000 + seq * 60_000,
                "severity_id": 4,
                "severity": "High",
                "message": "identity spiffe://td/ns/shop/sa/cart@east called payments@west "
                "for the first time; 120 requests in 60 s; expected none " * 3,
                "finding_info": {
                    "uid": inc,
                    "title": "Unseen cross-cluster edge",
                    "types": ["UNSEEN_EDGE", "security"],
                    "first_seen_time": 1_700_000_000_000,
                },
                "metadata": {
                    "uid": str(uuid.uuid5(uuid.UUID(inc), str(seq))),
                    "correlation_uid": inc,
                    "sequence": seq,
                    "version": "1.8.0",
                },
                "unmapped": {"observed": 120, "expected": None, "p_value": 1e-6},
            }
        )
    return out


async def baseline(url: str, bodies: list[bytes], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def post(b: bytes) -> None:
            async with sem, s.post(url, data=b, headers={"content-type": "application/json"}) as r:
                await r.read()
                assert r.status == 204

        t0 = time.perf_counter()
        await asyncio.gather(*(post(b) for b in bodies))
        return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> None:
    secret = new_secret()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_receiver, args=(q, secret, args.verify_every), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=30)
        url = f"http://127.0.0.1:{port}/hook"
        items = findings(args.n, args.incidents)
        bodies = [orjson.dumps(f) for f in items]
        avg = sum(map(len, bodies)) / len(bodies)
        print(
            f"{args.n} findings, {args.incidents} incidents, {avg:.0f} B each, concurrency "
            f"{args.concurrency}, batch {args.batch}, emit batches of {args.emit_batch}"
        )

        base_s = await baseline(url, bodies, args.concurrency)
        base_rate = args.n / base_s
        print(f"baseline  bare aiohttp POST loop : {base_rate:8.0f} deliveries/s ({base_s:.2f} s)")

        with tempfile.TemporaryDirectory() as tmp:
            ep = WebhookEndpointSettings(
                name="bench",
                url=url,
                secrets=[secret],
                concurrency=args.concurrency,
                batch=args.batch,
            )
            sink = await WebhookSink.open(Path(tmp) / "outbox.sqlite", [ep], synchronous="FULL")
            t0 = time.perf_counter()
            for k in range(0, args.n, args.emit_batch):
                await sink.emit(items[k : k + args.emit_batch])
            t_enq = time.perf_counter() - t0
            ok = await sink.drain(600)
            total = time.perf_counter() - t0
            counts = await sink.outbox.counts()
            await sink.close()
        rate = args.n / total
        print(
            f"outbox    emit (committed)       : {args.n / t_enq:8.0f} findings/s ({t_enq:.2f} s,"
            " concurrent with delivery)"
        )
        print(
            f"outbox    signed, durable, ordered: {rate:8.0f} deliveries/s ({total:.2f} s)"
            f"  ratio to baseline {rate / base_rate:.2f}  target >= 1000/s:"
            f" {'OK' if rate >= 1000 else 'MISSED'}"
        )
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/count") as r:
            st = await r.json()
        print(
            f"receiver: {st['n']} requests ({st['n'] - args.n} for the outbox beyond the "
            f"baseline's {args.n}), {st['verified']} verified, {st['bad']} bad; "
            f"outbox rows {counts}; drained={ok}"
        )
    finally:
        proc.terminate()
        proc.join(5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--incidents", type=int, default=2_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--emit-batch", type=int, default=500)
    p.add_argument("--verify-every", type=int, default=100)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
