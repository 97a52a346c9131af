"""Assembly: a validated config -> sources, sinks and a pipeline, run until done or signalled.

Contract:
* ``build_sources(cfg)`` creates one source per config entry; ``build_sinks(cfg)`` the sinks.
* ``run_config(cfg)`` runs the pipeline; SIGTERM/SIGINT stop fetching, drain, flush every open
  window to the sinks, commit and return (DESIGN.md §7). Infrastructure failure propagates as
  ``InfrastructureError`` for the CLI to turn into a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from detector.config import (
    DetectorConfig,
    FileSourceConfig,
    KafkaSourceConfig,
    SimulateSourceConfig,
    StdinSourceConfig,
)
from detector.deadletters import DeadLetters
from detector.pipeline import Pipeline, PipelineStats, WindowSink, settings_from_config
from detector.sources import Source, StaticAttrs
from detector.sources.kafka import KafkaTopic

if TYPE_CHECKING:
    from detector.repartition import EdgeOwnerPipeline, Repartitioner

log = logging.getLogger(__name__)


def build_sources(cfg: DetectorConfig) -> list[Source]:
    max_bytes = cfg.dead_letters.max_record_bytes
    out: list[Source] = []
    for sc in cfg.sources:
        if isinstance(sc, FileSourceConfig):
            from detector.sources.file import FileSource

            out.append(
                FileSource(
                    sc.paths,
                    fmt=sc.format,
                    static=StaticAttrs(cluster=sc.cluster, namespace=sc.namespace),
                    follow=sc.follow,
                    poll_interval_s=sc.poll_interval_s,
                    batch_lines=sc.batch_lines,
                    max_record_bytes=max_bytes,
                    name=sc.name,
                )
            )
        elif isinstance(sc, StdinSourceConfig):
            from detector.sources.stdin import StdinSource

            out.append(
                StdinSource(
                    fmt=sc.format,
                    static=StaticAttrs(cluster=sc.cluster, namespace=sc.namespace),
                    batch_lines=sc.batch_lines,
                    max_record_bytes=max_bytes,
                    name=sc.name,
                )
            )
        elif isinstance(sc, SimulateSourceConfig):
            from detector.sources.simulate import SimulatorSource

            scenarios: list[Any] = []
            start = sc.start
            if sc.scenarios:
                from detector.simulation.scenarios import default_scenarios

                start = start if start is not None else _hour_before_now()
                scenarios = default_scenarios(start, sc.duration_s)
            out.append(
                SimulatorSource(
                    seed=sc.seed,
                    start=start,
                    duration_s=sc.duration_s,
                    rate_multiplier=sc.rate_multiplier,
                    speedup=sc.speedup,
                    limit=sc.limit,
                    scenarios=scenarios,
                    name=sc.name,
                )
            )
        elif isinstance(sc, KafkaSourceConfig):
            from detector.sources.kafka import KafkaSource

            out.append(KafkaSource(sc))
    return out


def _hour_before_now() -> float:
    import time

    return float((time.time() // 3600 - 1) * 3600)


def build_sinks(cfg: DetectorConfig) -> list[WindowSink]:
    sinks: list[WindowSink] = []
    if cfg.sinks.console.enabled:
        from detector.sinks.console import ConsoleSink

        sinks.append(ConsoleSink(top_edges=cfg.sinks.console.top_edges))
    if cfg.sinks.windows_jsonl.path:
        from detector.sinks.jsonl import JsonlSink

        sinks.append(JsonlSink(cfg.sinks.windows_jsonl.path))
    return sinks


def _window_and_detection_sinks(cfg: DetectorConfig) -> list[WindowSink]:
    sinks = build_sinks(cfg)
    if cfg.detection.model:
        from detector.detection import from_config

        sinks.append(from_config(cfg, console=cfg.sinks.console.enabled))
    return sinks


def _dead_letters(cfg: DetectorConfig) -> DeadLetters:
    dl = cfg.dead_letters
    return DeadLetters(dl.path, dl.max_records, dl.max_file_bytes, dl.keep_bytes)


def build_pipeline(cfg: DetectorConfig, sinks: list[WindowSink] | None = None) -> Pipeline:
    return Pipeline(
        settings_from_config(cfg),
        sinks=sinks if sinks is not None else _window_and_detection_sinks(cfg),
        dead_letters=_dead_letters(cfg),
    )


async def _serve(
    pipeline: Pipeline,
    listen: tuple[str, int] | None,
    approval_secret: str | None,
    more: tuple[Pipeline, ...] = (),
) -> Any:
    """The HTTP endpoints (and approval links) for ``pipeline``, or None without ``listen``."""
    if listen is None:
        return None
    from detector.web import serve

    base = None
    stage = next((s for s in pipeline.sinks if hasattr(s, "decide")), None)
    if approval_secret and stage is not None:
        from detector.remediation import approval_app

        base = approval_app(stage, approval_secret)  # type: ignore[arg-type]
    server = await serve(pipeline, *listen, base=base, more=more)
    log.info("serving /healthz /readyz /metrics on %s:%d", listen[0], server.port)
    return server


def _on_signals(loop: asyncio.AbstractEventLoop, handler: Any) -> list[signal.Signals]:
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    return installed


async def _close_sinks(pipeline: Pipeline) -> None:
    for sink in pipeline.sinks:
        with contextlib.suppress(Exception):
            await sink.close()


async def run_pipeline(
    pipeline: Pipeline,
    sources: list[Source],
    listen: tuple[str, int] | None = None,
    approval_secret: str | None = None,
) -> PipelineStats:
    freeze_loaded_state()
    loop = asyncio.get_running_loop()
    server = await _serve(pipeline, listen, approval_secret)
    installed = _on_signals(loop, pipeline.stop)
    try:
        return await pipeline.run(sources)
    finally:
        if server is not None:
            await server.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
        await _close_sinks(pipeline)
        pipeline.dead_letters.close()


def freeze_loaded_state() -> None:
    """Keep what is loaded so far (the model's baselines: hundreds of thousands of objects)
    out of the garbage collector's full collections. The hot path allocates records quickly
    enough to trigger them often, and each one walked the whole model again: about 5 us per
    event with a model loaded (bench_scaleout --score)."""
    gc.collect()
    gc.freeze()


def run_config(cfg: DetectorConfig, **kwargs: Any) -> tuple[Pipeline, PipelineStats]:
    if cfg.service.otlp_traces_endpoint:
        from detector.tracing import configure

        configure(cfg.service.otlp_traces_endpoint)
    svc = cfg.service
    listen = (svc.listen_host, svc.listen_port) if svc.listen_port is not None else None
    r = cfg.response
    secret = r.approval.secret if r.mode == "approval" else None
    if cfg.scale_out is not None:
        replica = build_replica(cfg, **kwargs)
        stats = asyncio.run(run_replica(replica, listen, secret))
        return replica.owner, stats
    pipeline = build_pipeline(cfg, **kwargs)
    sources = build_sources(cfg)
    stats = asyncio.run(run_pipeline(pipeline, sources, listen, secret))
    return pipeline, stats


# ---------------------------------------------------------------------------------------------
# Scale-out: one replica = ingest stage + edge-owner stage (``detector.repartition``)


@dataclass
class Replica:
    ingest: Repartitioner
    ingest_sources: list[Source]
    owner: EdgeOwnerPipeline
    owner_sources: list[Source]
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Graceful stop (what SIGTERM does): ``run_replica`` returns once both stages end."""
        self.stopping.set()


def build_replica(cfg: DetectorConfig, sinks: list[WindowSink] | None = None) -> Replica:
    from detector.decoders.internal import FORMAT
    from detector.exchange import WindowExchange
    from detector.handover import HandoverLog
    from detector.instrumentation import Metrics
    from detector.repartition import EdgeOwnerPipeline, Repartitioner
    from detector.sources.kafka import KafkaSettings, KafkaSource

    scale = cfg.scale_out
    assert scale is not None
    kafka_cfg = next(s for s in cfg.sources if isinstance(s, KafkaSourceConfig))
    kafka = KafkaSettings(**{k: getattr(kafka_cfg, k) for k in KafkaSettings.model_fields})
    metrics = Metrics()
    settings = settings_from_config(cfg)
    ingest = Repartitioner(
        settings,
        dead_letters=_dead_letters(cfg),
        metrics=metrics,
        scale=scale,
        kafka=kafka,
        handover=HandoverLog(kafka, scale.state_topic_name, scale.replication_factor),
    )
    owner_src = KafkaSource(
        kafka.model_copy(
            update={
                "topics": [KafkaTopic(name=scale.topic, format=FORMAT)],
                "group_id": scale.group_id,
                # The internal topic is ours: a new group reads all of it (nothing is skipped).
                "auto_offset_reset": "earliest",
            }
        ),
        name="scale-out",
    )
    owner = EdgeOwnerPipeline(
        settings,
        sinks=sinks if sinks is not None else _window_and_detection_sinks(cfg),
        metrics=metrics,
        partitions=lambda: ingest.partitions,
        handover=HandoverLog(kafka, scale.state_topic_name, scale.replication_factor),
        exchange=WindowExchange(
            kafka,
            scale.windows_topic_name,
            scale.replication_factor,
            retention_ms=int(scale.windows_retention_h * 3_600_000),
        ),
    )
    return Replica(ingest, build_sources(cfg), owner, [owner_src])


async def run_replica(
    replica: Replica,
    listen: tuple[str, int] | None = None,
    approval_secret: str | None = None,
) -> PipelineStats:
    """Run both stages until signalled; on SIGTERM the ingest stage stops first (sends what it
    decoded, commits), then the edge owner (commits past its closed windows)."""
    loop = asyncio.get_running_loop()
    ingest, owner = replica.ingest, replica.owner
    stopping = replica.stopping
    freeze_loaded_state()
    installed = _on_signals(loop, stopping.set)
    server = await _serve(owner, listen, approval_secret, more=(ingest,))
    await ingest.start()  # the internal topic exists before the edge owner subscribes to it
    ingest_task = asyncio.create_task(ingest.run(replica.ingest_sources))
    owner_task = asyncio.create_task(owner.run(replica.owner_sources))
    stop_task = asyncio.create_task(stopping.wait())
    try:
        # Whichever ends first: a signal, or a stage failing (infrastructure: exit, restart).
        done, _ = await asyncio.wait(
            {ingest_task, owner_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
        )
        for t in done & {ingest_task, owner_task}:
            t.result()  # raises what stopped it
        if ingest_task not in done or stop_task in done:
            ingest.stop()
            await ingest_task
        owner.stop()
        return await owner_task
    finally:
        stop_task.cancel()
        for t in (ingest_task, owner_task):
            if not t.done():
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
        if server is not None:
            await server.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
        await _close_sinks(owner)
        ingest.dead_letters.close()
        owner.dead_letters.close()


def print_summary(p: Pipeline, stats: PipelineStats, out: Any = None) -> None:
    out = out or sys.stderr
    agg = p.aggregator.stats
    bad = ", ".join(f"{k} {v}" for k, v in sorted(stats.bad_by_reason.items())) or "none"
    print(
        f"detector: {stats.units} units -> {stats.records} records in {stats.elapsed_s:.1f}s "
        f"({stats.units_per_s:,.0f} units/s); {stats.edge_windows} edge windows in "
        f"{stats.windows_closed} windows; late {agg.late}; overflow {agg.overflow}; "
        f"bad {stats.bad_units} ({bad})",
        file=out,
    )
