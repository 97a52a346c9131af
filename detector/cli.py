"""The ``detector`` command line: run, check-config, parse.

Contract: exit 0 on success; 2 on a configuration or usage error (one readable line on stderr,
no traceback); 3 when infrastructure fails (broker, files, sinks), so Kubernetes restarts us;
130 on Ctrl-C. Output meant for programs goes to stdout, everything for people to stderr.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from detector import __version__
from detector.decoders import FORMATS
from detector.errors import ConfigError, InfrastructureError

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn our errors into one line and an exit code instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            click.echo(f"detector: config error: {e}", err=True)
            sys.exit(2)
        except InfrastructureError as e:
            click.echo(f"detector: infrastructure failure: {e}", err=True)
            sys.exit(3)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="detector")
def main() -> None:
    """Streaming anomaly detector for multi-cluster service meshes.

    It reads mesh access logs (Envoy/Istio text and JSON, Linkerd), traces (OTLP), Cilium
    Hubble flows and Kubernetes audit events from Kafka, files or stdin; learns which identity
    in which cluster talks to which service and how; and reports what breaks that baseline.

    \b
    Start here:
      detector run                       the embedded demo: simulated multi-cluster traffic
      detector parse --format auto FILE  what the detector makes of your logs, as JSON lines
      detector check-config CONFIG       validate a config file without running anything
      detector run -c CONFIG             run a pipeline (Kafka, files, stdin) from a config
    """


@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config (see pipelines/). Without one, the embedded demo runs: the built-in "
    "simulator of a three-cluster mesh through the whole pipeline, printed to the console.",
)
@click.option("--quiet", is_flag=True, help="No per-window console output (summary only).")
@_friendly
def run(config_path: Path | None, quiet: bool) -> None:
    """Run the detector until its sources end or it receives SIGTERM/SIGINT.

    On SIGTERM it stops fetching, drains what it has, flushes every open window to the sinks,
    commits offsets and exits 0. A broken broker, file or sink exits 3.
    """
    from detector.config import default_config, load_config
    from detector.runner import print_summary, run_config

    cfg = load_config(config_path) if config_path else default_config()
    if quiet:
        cfg = cfg.model_copy(
            update={
                "sinks": cfg.sinks.model_copy(
                    update={"console": cfg.sinks.console.model_copy(update={"enabled": False})}
                )
            }
        )
    if config_path is None:
        click.echo(
            "detector: no config given: running the embedded demo (simulated traffic of three "
            "clusters, one hour of event time at 300x). Use -c CONFIG for real input.",
            err=True,
        )
    pipeline, stats = run_config(cfg)
    print_summary(pipeline, stats)


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False, path_type=Path))
@_friendly
def check_config(config_path: Path) -> None:
    """Validate CONFIG_PATH strictly (unknown keys are errors) and summarise it.

    Exit 0 when valid, 2 with one line naming the problem otherwise. Environment references
    (${env:NAME}) are resolved, so run it where the detector will run.
    """
    from detector.config import load_config

    cfg = load_config(config_path)
    kinds = ", ".join(f"{s.type}:{s.name}" for s in cfg.sources)
    a = cfg.aggregation
    click.echo(
        f"{config_path}: ok: sources [{kinds}]; windows {a.window_s:g}s, lateness "
        f"{a.allowed_lateness_s:g}s; {len(cfg.resolution.trust_domains)} trust domain(s), "
        f"{len(cfg.resolution.cidrs)} CIDR(s) mapped"
    )


@main.command()
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="Input format; 'auto' sniffs every record (and unwraps CRI, docker, Fluent Bit, OTel).",
)
@click.option("--cluster", help="Cluster the input comes from (a static attribute of the source).")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Use this config's resolution maps (trust domains, CIDRs).",
)
@click.option("--show-bad/--no-show-bad", default=True, help="Report each bad record on stderr.")
@click.option("--strict", is_flag=True, help="Exit 1 if any record was bad.")
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True))
@_friendly
def parse(
    fmt: str,
    cluster: str | None,
    config_path: Path | None,
    show_bad: bool,
    strict: bool,
    files: tuple[str, ...],
) -> None:
    """Decode FILES (plain or .gz; '-' for stdin) and print normalised records as JSON lines.

    This is how to check what the detector makes of your logs: each output line is one
    canonical record (identity, clusters, service, route, outcome, bytes, latency) after
    identity and cluster resolution, with `route_template` as aggregation will use it.
    Bad records are reported on stderr with their file and line, and counted by reason.
    """
    from detector.config import load_config
    from detector.flows import template_path
    from detector.pipeline import Pipeline, PipelineSettings
    from detector.sources import Source, StaticAttrs

    settings = PipelineSettings()
    if config_path:
        cfg = load_config(config_path)
        settings.trust_domains = dict(cfg.resolution.trust_domains)
        settings.cidrs = dict(cfg.resolution.cidrs)
    pipeline = Pipeline(settings)
    static = StaticAttrs(cluster=cluster)
    out = sys.stdout.buffer
    shown_bad = 0

    sources: list[Source] = []
    paths = [p for p in files if p != "-"]
    for p in paths:
        if not Path(p).is_file():
            raise InfrastructureError(f"no such file: {p}")
    if paths:
        from detector.sources.file import FileSource

        sources.append(FileSource(paths, fmt=fmt, static=static))
    if "-" in files:
        from detector.sources.stdin import StdinSource

        sources.append(StdinSource(fmt=fmt, static=static))

    async def go() -> None:
        nonlocal shown_bad
        for src in sources:
            async for batch in src.batches():
                before = len(pipeline.dead_letters.recent)
                records = pipeline.decode_batch(batch)
                lines = []
                for r in records:
                    d = r._asdict()
                    d["route_template"] = template_path(r.route) if r.route else None
                    lines.append(orjson.dumps(d))
                if lines:
                    try:
                        out.write(b"\n".join(lines) + b"\n")
                    except BrokenPipeError:
                        return
                if show_bad:
                    recent = list(pipeline.dead_letters.recent)[before:]
                    for dl in recent[: max(0, 50 - shown_bad)]:
                        click.echo(
                            f"detector: {dl['stream']}:{dl['offset']}: bad record "
                            f"({dl['reason']}) {dl['detail']}".rstrip(),
                            err=True,
                        )
                    shown_bad += len(recent)

    asyncio.run(go())
    out.flush()
    st = pipeline.stats
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(st.bad_by_reason.items()))
    click.echo(
        f"detector: parsed {st.units} units into {st.units - st.bad_units} good units; "
        f"bad {st.bad_units}{' (' + reasons + ')' if reasons else ''}",
        err=True,
    )
    if strict and st.bad_units:
        sys.exit(1)


if __name__ == "__main__":
    main()
