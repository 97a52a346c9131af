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
from detector.errors import ConfigError, DetectorError, InfrastructureError

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
        except DetectorError as e:  # e.g. an incompatible or damaged model artifact
            click.echo(f"detector: {e}", err=True)
            sys.exit(2)
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
    import logging

    from detector.config import load_config
    from detector.runner import print_summary, run_config

    # one line per event of the service itself (never per record), to stderr
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    if config_path is None:
        _run_demo(quiet)
        return
    cfg = load_config(config_path)
    if quiet:
        cfg = cfg.model_copy(
            update={
                "sinks": cfg.sinks.model_copy(
                    update={"console": cfg.sinks.console.model_copy(update={"enabled": False})}
                )
            }
        )
    pipeline, stats = run_config(cfg)
    print_summary(pipeline, stats)


def _run_demo(quiet: bool) -> None:
    """The embedded demo: train on simulated traffic, then score a live simulated hour."""
    import tempfile

    from detector.demo import prepare
    from detector.runner import print_summary, run_config

    click.echo(
        "detector: no config given: running the embedded demo. Training a model on 3 hours of "
        "simulated traffic of three clusters (a few seconds)...",
        err=True,
    )
    with tempfile.TemporaryDirectory(prefix="detector-demo-") as tmp:
        cfg = prepare(Path(tmp) / "model")
        if quiet:
            cfg = cfg.model_copy(
                update={
                    "sinks": cfg.sinks.model_copy(
                        update={"console": cfg.sinks.console.model_copy(update={"enabled": False})}
                    )
                }
            )
        click.echo(
            "detector: now the last hour of event time at 300x, with attacks (lateral movement, "
            "a replayed credential, exfiltration, credential stuffing, probing, Kubernetes API "
            "abuse, a slow ramp) and traps (a global surge, a rollout, an outage) injected. "
            "FINDING lines are OCSF findings; actions are proposed in dry run. Use -c CONFIG "
            "for real input.",
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


def _settings(window_s: float | None, lateness_s: float | None) -> Any:
    from detector.pipeline import PipelineSettings

    s = PipelineSettings(allowed_lateness_s=30.0)
    if window_s is not None:
        s.window_s = window_s
    if lateness_s is not None:
        s.allowed_lateness_s = lateness_s
    return s


_cluster_from_filename = click.option(
    "--cluster-from-filename",
    is_flag=True,
    help="Each input file names its cluster: 'prod-eu.k8s_audit.jsonl' comes from prod-eu "
    "(for logs that do not name their cluster, such as Kubernetes audit files).",
)

_inputs = click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    required=True,
    type=click.Path(),
    help="Telemetry file or folder (repeatable; .gz allowed; formats sniffed per record).",
)


@main.command()
@_inputs
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Model directory: a new version is written in it and made current.",
)
@click.option("--window-s", type=float, help="Window length in seconds (default 60).")
@click.option("--lateness-s", type=float, help="Allowed lateness in seconds (default 30).")
@_cluster_from_filename
@click.option(
    "--calibration-share",
    type=click.FloatRange(0.05, 0.9),
    default=0.3,
    show_default=True,
    help="Share of the training span (the latest part) held out to calibrate each model's scores.",
)
@_friendly
def train(
    inputs: tuple[str, ...],
    out_dir: str,
    window_s: float | None,
    lateness_s: float | None,
    cluster_from_filename: bool,
    calibration_share: float,
) -> None:
    """Learn baselines from recorded telemetry and write a versioned model artifact.

    The artifact (OUT/vNNNN/manifest.json + state.json.gz) records the features, library
    versions, training span and offline metrics; OUT/CURRENT names the active version.
    See 'detector models --help' to list, diff and revert versions.
    """
    from detector.replay import train as do_train

    res = do_train(
        inputs,
        out_dir,
        _settings(window_s, lateness_s),
        calibration_share,
        cluster_from_filename=cluster_from_filename,
    )
    m = res.scorer.stats
    click.echo(
        f"detector: trained {res.version_dir} on {res.stats.records} records "
        f"({m.window_times} windows, {m.edge_windows} edge windows; "
        f"{res.stats.units_per_s:,.0f} units/s); bad {res.stats.bad_units}",
        err=True,
    )
    click.echo(str(res.version_dir))


@main.command()
@click.option(
    "-m",
    "--model",
    "model_dir",
    required=True,
    type=click.Path(),
    help="Model directory (its CURRENT version) or one version's folder.",
)
@_inputs
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where findings.jsonl and actions.jsonl are written.",
)
@click.option("--lateness-s", type=float, help="Allowed lateness in seconds (default 30).")
@_cluster_from_filename
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Take thresholds, allow-list and incident settings from this config's detection "
    "section (the same file the service runs with), to back-test them.",
)
@_friendly
def replay(
    model_dir: str,
    inputs: tuple[str, ...],
    out_dir: str,
    lateness_s: float | None,
    cluster_from_filename: bool,
    config_path: Path | None,
) -> None:
    """Run detection over recorded telemetry in event time, as fast as the machine allows.

    Writes OUT/findings.jsonl (one OCSF Detection Finding per line, `time` in epoch ms of
    event time) and OUT/actions.jsonl (one line per remediation action the playbooks would
    take). The same incident keeps one finding_info.uid through create/update/close.
    """
    from detector.config import load_config
    from detector.replay import replay as do_replay

    cfg = load_config(config_path) if config_path else None
    res = do_replay(
        model_dir,
        inputs,
        out_dir,
        _settings(None, lateness_s),
        cluster_from_filename=cluster_from_filename,
        detection=cfg.detection if cfg else None,
        response=cfg.response if cfg else None,
    )
    types = ", ".join(f"{k} {v}" for k, v in sorted(res.by_type.items())) or "none"
    click.echo(
        f"detector: replayed {res.stats.records} records "
        f"({res.stats.units_per_s:,.0f} units/s): {res.findings} finding events "
        f"({types}); {res.actions} actions; bad {res.stats.bad_units}",
        err=True,
    )


@main.command()
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for train/, test/ (with labels.jsonl) and manifest.json.",
)
@click.option("--train-hours", type=click.FloatRange(1, 24 * 30), default=48, show_default=True)
@click.option("--test-hours", type=click.FloatRange(1, 24 * 7), default=12, show_default=True)
@click.option(
    "--start",
    default="2026-01-05T00:00:00Z",
    show_default=True,
    help="Event time the training span starts at (ISO 8601).",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--intensity",
    type=click.FloatRange(0.05, 10),
    default=1.0,
    show_default=True,
    help="Scale of every injected scenario.",
)
@click.option(
    "--scenarios/--no-scenarios",
    default=True,
    show_default=True,
    help="Inject the labelled attacks and traps into the test span.",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["envoy_json", "envoy_text", "k8s_audit", "hubble", "otlp_proto_traces"]),
    help="Formats to write (repeatable; default Istio JSON and text and k8s audit).",
)
@click.option(
    "--rate-multiplier",
    type=click.FloatRange(0.01, 100),
    default=1.0,
    show_default=True,
    help="Scale of the organic traffic (scenarios keep theirs).",
)
@click.option("--gz", is_flag=True, help="Write gzip-compressed files.")
@_friendly
def simulate(
    out_dir: str,
    train_hours: float,
    test_hours: float,
    start: str,
    seed: int,
    intensity: float,
    scenarios: bool,
    formats: tuple[str, ...],
    rate_multiplier: float,
    gz: bool,
) -> None:
    """Generate multi-cluster mesh telemetry in the real formats, with labelled scenarios.

    \b
    Three clusters (prod-eu, prod-us, staging) sharing one trust domain, with daily and weekly
    rhythms. The test span carries attacks (lateral movement, credential replay from another
    cluster, exfiltration, credential stuffing, policy probing, Kubernetes API abuse, a slow
    ramp) and traps that must not raise security findings (a global surge, a new service
    rollout, an availability outage); OUT/test/labels.jsonl is the ground truth.
    """
    import datetime as dt

    from detector.simulation import default_scenarios, write_files

    try:
        t0 = dt.datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {start}", param_hint="--start") from None
    train_s, test_s = train_hours * 3600, test_hours * 3600
    scen = default_scenarios(t0 + train_s, test_s, intensity) if scenarios else []
    kwargs: dict[str, Any] = {"formats": formats} if formats else {}
    if rate_multiplier != 1.0:
        kwargs["rate_multiplier"] = rate_multiplier
    manifest = write_files(
        out_dir,
        train_start=t0,
        train_s=train_s,
        test_s=test_s,
        seed=seed,
        scenarios=scen,
        gz=gz,
        **kwargs,
    )
    total = sum(manifest["files"].values())
    click.echo(
        f"detector: wrote {total} records in {len(manifest['files'])} files to {out_dir}"
        f" ({len(scen)} scenarios)",
        err=True,
    )


@main.command()
@click.option(
    "--labels",
    required=True,
    type=click.Path(dir_okay=False),
    help="Ground truth (labels.jsonl written by 'detector simulate').",
)
@click.option(
    "--findings",
    required=True,
    type=click.Path(dir_okay=False),
    help="findings.jsonl written by 'detector replay'.",
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False),
    help="The simulation's manifest.json (for the test span; default: beside labels).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_friendly
def evaluate(labels: str, findings: str, manifest: str | None, as_json: bool) -> None:
    """Score findings against labelled scenarios: recall, time to detect, false positives per
    hour, precision per scenario, whether any trap raised a security finding, and which
    scenarios got remediation actions (read from actions.jsonl beside the findings)."""
    from detector.evaluation import evaluate as do_eval
    from detector.evaluation import format_report, read_jsonl

    man_path = (
        Path(manifest) if manifest else Path(labels).resolve().parent.parent / "manifest.json"
    )
    try:
        span = orjson.loads(man_path.read_bytes())["spans"]["test"]
    except (OSError, KeyError, orjson.JSONDecodeError) as e:
        raise InfrastructureError(f"cannot read the test span from {man_path}: {e}") from None
    actions_path = Path(findings).with_name("actions.jsonl")
    actions = read_jsonl(actions_path) if actions_path.exists() else []
    report = do_eval(
        read_jsonl(labels), read_jsonl(findings), (span["start"], span["end"]), actions=actions
    )
    if as_json:
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_report(report))


@main.group()
def deliveries() -> None:
    """The webhook outbox: list and resend undeliverable messages (dead letters).

    Safe while the service runs: the outbox is SQLite in WAL mode, and these commands never
    touch messages the service has in flight. Resent messages keep their webhook-id, so
    receivers that already have them drop them.
    """


_config_required = click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The service's config (its delivery.outbox_path names the outbox).",
)


@deliveries.command("list")
@_config_required
@click.option("--endpoint", help="Only this endpoint.")
@click.option("--reason", help="Only dead letters with this reason (e.g. http_400).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@_friendly
def deliveries_list(
    config_path: Path, endpoint: str | None, reason: str | None, limit: int
) -> None:
    """Counts per state, disabled endpoints, then one JSON line per dead letter."""
    from detector.config import load_config
    from detector.delivery import OutboxStore

    store = OutboxStore(load_config(config_path).delivery.outbox_path, recover=False)
    try:
        summary = {"counts": store.counts(endpoint), "disabled": store.disabled_endpoints()}
        click.echo(orjson.dumps(summary).decode())
        for d in store.list_dead(endpoint=endpoint, reason=reason, limit=limit):
            click.echo(orjson.dumps(d.to_dict()).decode())
    finally:
        store.close()


@deliveries.command("replay")
@_config_required
@click.option("--id", "ids", type=int, multiple=True, help="Dead letter id (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --endpoint).")
@click.option("--endpoint", help="Only this endpoint.")
@click.option(
    "--enable-endpoint",
    is_flag=True,
    help="First re-enable the endpoint (one that answered 410 Gone is disabled).",
)
@_friendly
def deliveries_replay(
    config_path: Path,
    ids: tuple[int, ...],
    all_: bool,
    endpoint: str | None,
    enable_endpoint: bool,
) -> None:
    """Queue dead letters again, with their original webhook-id and body."""
    from detector.config import load_config
    from detector.delivery import OutboxStore

    if not ids and not all_:
        raise click.UsageError("give --id N (repeatable) or --all")
    if enable_endpoint and not endpoint:
        raise click.UsageError("--enable-endpoint needs --endpoint")
    store = OutboxStore(load_config(config_path).delivery.outbox_path, recover=False)
    try:
        if enable_endpoint and endpoint:
            store.enable_endpoint(endpoint)
        n = store.replay_dead(list(ids) or None, endpoint=endpoint)
        click.echo(f"re-queued {n} dead letter(s) with their original webhook-id")
    finally:
        store.close()


@main.group()
def models() -> None:
    """List, compare and revert versions of a model directory written by 'detector train'."""


@models.command("list")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@_friendly
def models_list(model_dir: Path) -> None:
    """List versions with their training span; * marks the current one."""
    import datetime as dt

    from detector import artifacts

    cur = artifacts.current(model_dir)
    names = artifacts.versions(model_dir)
    if not names:
        raise artifacts.ArtifactError(f"{model_dir}: no model versions")
    for name in names:
        m = artifacts.read_manifest(model_dir / name)
        t = m.get("training", {})

        def day(ts: float | None) -> str:
            if ts is None:
                return "?"
            return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")

        click.echo(
            f"{'*' if name == cur else ' '} {name}  created {m.get('created')}  trained on "
            f"{day(t.get('first_event_ts'))} .. {day(t.get('last_event_ts'))}  "
            f"{m.get('metrics', {}).get('edge_windows', '?')} edge windows"
        )


@models.command("diff")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("version_a")
@click.argument("version_b", required=False)
@_friendly
def models_diff(model_dir: Path, version_a: str, version_b: str | None) -> None:
    """What changed from VERSION_A to VERSION_B (default: the current version), as JSON."""
    from detector import artifacts

    b = version_b or artifacts.current(model_dir) or ""
    d = artifacts.diff(artifacts.load(model_dir / version_a), artifacts.load(model_dir / b))
    click.echo(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())


@models.command("revert")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("version")
@_friendly
def models_revert(model_dir: Path, version: str) -> None:
    """Make VERSION the current one (after checking it loads)."""
    from detector import artifacts

    artifacts.load(model_dir / version)
    artifacts.set_current(model_dir, version)
    click.echo(f"{model_dir}: current version is now {version}")


if __name__ == "__main__":
    main()
