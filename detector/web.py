"""The service's HTTP endpoints: ``/healthz``, ``/readyz`` and ``/metrics`` (Prometheus).

Contract:
* ``/healthz``: 200 while the event loop answers (liveness: a stuck loop fails it).
* ``/readyz``: 200 once the pipeline runs, every source has delivered or announced a stream,
  the model (when configured) is loaded and no sink has failed; 503 with the reasons otherwise.
  A scale-out replica is ready once both stages run with partitions assigned (``more``), and
  the edge owner has restored the handed-over state of its partitions.
* ``/metrics``: the pipeline's registry in the Prometheus text format (``instrumentation``).
* In approval mode the same server answers the signed approve/deny links
  (``/v1/approvals/{action_id}/{approve|deny}``, see ``remediation.rails``).
* ``serve(pipeline, host, port)`` starts the endpoints on the running loop and returns a
  ``Server`` whose ``close()`` stops them; it never blocks the pipeline (aiohttp on the same
  loop, handlers do no work beyond reading counters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from detector.pipeline import Pipeline


def readiness(pipeline: Pipeline, *more: Pipeline) -> list[str]:
    """Why the service is not ready (empty: ready). ``more``: other stages of the same process
    (a scale-out replica's ingest stage), which must be running with sources assigned too."""
    reasons = []
    for i, p in enumerate((pipeline, *more)):
        what = "pipeline" if i == 0 else f"stage {type(p).__name__}"
        if not p.ready:
            reasons.append(f"{what} not running")
        if not p.streams_seen:
            reasons.append(f"{what}: no source stream assigned yet")
    for sink in pipeline.sinks:
        if getattr(sink, "failed", False):
            reasons.append(f"sink {type(sink).__name__} failing")
    return reasons


def app(
    pipeline: Pipeline, base: web.Application | None = None, more: tuple[Pipeline, ...] = ()
) -> web.Application:
    """The endpoints, added to ``base`` when given (the approval callbacks' app)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reasons = readiness(pipeline, *more)
        if reasons:
            return web.Response(status=503, text="not ready: " + "; ".join(reasons) + "\n")
        return web.Response(text="ready\n")

    async def metrics(_: web.Request) -> web.Response:
        body = pipeline.metrics.exposition()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    a = base if base is not None else web.Application()
    a.router.add_get("/healthz", healthz)
    a.router.add_get("/readyz", readyz)
    a.router.add_get("/metrics", metrics)
    return a


@dataclass
class Server:
    runner: Any
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(
    pipeline: Pipeline,
    host: str,
    port: int,
    base: web.Application | None = None,
    more: tuple[Pipeline, ...] = (),
) -> Server:
    runner = web.AppRunner(app(pipeline, base, more), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]  # port 0: the one the OS chose
    return Server(runner, bound)
