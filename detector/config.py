"""The detector's configuration: one YAML file, validated strictly.

Contract:
* ``load_config(path)`` reads YAML, substitutes ``${env:NAME}`` (secrets stay out of files;
  an unset variable is an error, ``${env:NAME:-default}`` gives a default), and validates
  against ``DetectorConfig``. Unknown keys are rejected everywhere, so a typo never silently
  falls back to a default. Any problem raises ``ConfigError`` whose message is one readable line
  naming the place (``sources[0].bootstrap_servers: field required``).
* ``default_config()`` is the embedded demo: the built-in simulator through the whole pipeline
  to the console.
* Option names carry their unit (``window_s``, ``max_record_bytes``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from detector.decoders import FORMATS
from detector.delivery.settings import DeliverySettings
from detector.errors import ConfigError
from detector.remediation.playbooks import ResponseConfig
from detector.repartition import ScaleOutSettings
from detector.sources.kafka import KafkaSettings


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_format(v: str) -> str:
    if v not in FORMATS:
        raise ValueError(f"unknown format {v!r}; known: {', '.join(FORMATS)}")
    return v


class FileSourceConfig(Strict):
    """Files (plain or .gz), read line by line; ``follow`` keeps reading as they grow."""

    type: Literal["file"]
    name: str = "file"
    paths: list[str] = Field(min_length=1)
    format: str = "auto"
    follow: bool = False
    poll_interval_s: float = Field(0.5, gt=0)
    cluster: str | None = None
    namespace: str | None = None
    batch_lines: int = Field(2000, gt=0)

    _fmt = field_validator("format")(_check_format)


class StdinSourceConfig(Strict):
    type: Literal["stdin"]
    name: str = "stdin"
    format: str = "auto"
    cluster: str | None = None
    namespace: str | None = None
    batch_lines: int = Field(500, gt=0)

    _fmt = field_validator("format")(_check_format)


class SimulateSourceConfig(Strict):
    """The built-in multi-cluster traffic simulator (the embedded demo)."""

    type: Literal["simulate"]
    name: str = "simulate"
    seed: int = 7
    start: float | None = None  # epoch seconds of event time; default: now, aligned to the hour
    duration_s: float = Field(3600.0, gt=0)
    speedup: float | None = Field(120.0, gt=0)  # event seconds per wall second; null = max speed
    rate_multiplier: float = Field(1.0, gt=0)
    limit: int | None = Field(None, gt=0)
    scenarios: bool = False  # inject the labelled attacks and traps


class KafkaSourceConfig(KafkaSettings):
    type: Literal["kafka"]
    name: str = "kafka"


SourceConfig = Annotated[
    FileSourceConfig | StdinSourceConfig | SimulateSourceConfig | KafkaSourceConfig,
    Field(discriminator="type"),
]


class ResolutionConfig(Strict):
    """DESIGN.md §3: maps used when a record does not name its clusters."""

    trust_domains: dict[str, str] = {}  # SPIFFE/Linkerd trust domain -> cluster
    cidrs: dict[str, str] = {}  # peer address CIDR -> cluster

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: dict[str, str]) -> dict[str, str]:
        import ipaddress

        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as e:
                raise ValueError(f"bad CIDR {cidr!r}") from e
        return v


class AggregationConfig(Strict):
    window_s: float = Field(60.0, gt=0)
    allowed_lateness_s: float = Field(30.0, ge=0)
    idle_stream_s: float = Field(10.0, gt=0)  # wall seconds before an idle stream stops the clock
    max_open_edges: int = Field(1_000_000, gt=0)
    max_routes_per_service: int = Field(100, gt=0)
    edge_idle_ttl_s: float = Field(86_400.0, gt=0)
    span_join_ttl_s: float = Field(30.0, gt=0)
    span_join_max_pending: int = Field(100_000, gt=0)


class DeadLetterConfig(Strict):
    path: str | None = None  # JSON lines; null keeps the last ``max_records`` in memory only
    max_records: int = Field(10_000, gt=0)
    max_file_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_record_bytes: int = Field(1024 * 1024, gt=0)  # larger units are rejected as oversized
    keep_bytes: int = Field(4096, gt=0)  # how much of a bad unit is kept


class PipelineConfig(Strict):
    queue_batches: int = Field(64, gt=0)  # bounded queue between sources and the core


class ConsoleSinkConfig(Strict):
    enabled: bool = True
    top_edges: int = Field(8, ge=0)


class JsonlSinkConfig(Strict):
    path: str | None = None  # closed edge windows as JSON lines


class SinksConfig(Strict):
    console: ConsoleSinkConfig = ConsoleSinkConfig()
    windows_jsonl: JsonlSinkConfig = JsonlSinkConfig()
    findings_jsonl: JsonlSinkConfig = JsonlSinkConfig()  # OCSF findings, one per line
    actions_jsonl: JsonlSinkConfig = JsonlSinkConfig()  # remediation action records


class ThresholdsConfig(Strict):
    """Minimum risk for a finding: 10 per decade of improbability (60 = p < 1e-6)."""

    min_risk: float = Field(60.0, ge=0, le=100)  # security findings
    operational_min_risk: float = Field(60.0, ge=0, le=100)
    context_min_risk: float = Field(50.0, ge=0, le=100)
    per_type: dict[str, float] = {}  # finding type -> minimum risk (overrides the above)

    @field_validator("per_type")
    @classmethod
    def _known_types(cls, v: dict[str, float]) -> dict[str, float]:
        from detector.anomalies import FINDING_TYPES

        unknown = sorted(set(v) - set(FINDING_TYPES))
        if unknown:
            raise ValueError(f"unknown finding type(s) {unknown}; known: {sorted(FINDING_TYPES)}")
        return v


class AllowRuleConfig(Strict):
    """Known-good traffic (globs). Without finding_types the edge is not scored at all."""

    principal: str = "*"
    src_cluster: str = "*"
    dst_service: str = "*"
    dst_cluster: str = "*"
    finding_types: list[str] = []


class IncidentsConfig(Strict):
    close_after_quiet_s: float = Field(900.0, gt=0)
    update_min_interval_s: float = Field(300.0, ge=0)
    max_open: int = Field(10_000, gt=0)


class DetectionConfig(Strict):
    """Scoring of closed windows with a model written by ``detector train``."""

    model: str | None = None  # model directory; none: windows are aggregated, not scored
    learn_online: bool = True
    thresholds: ThresholdsConfig = ThresholdsConfig()
    allow: list[AllowRuleConfig] = []
    incidents: IncidentsConfig = IncidentsConfig()
    # live state (online-learned baselines, open incidents, actions): a restart resumes from it
    checkpoint_path: str | None = None
    checkpoint_interval_s: float = Field(300.0, gt=0)  # event time
    # online-learned baselines written as new model versions into this model directory
    snapshot_dir: str | None = None
    snapshot_interval_s: float = Field(86_400.0, gt=0)  # event time


class ServiceConfig(Strict):
    """HTTP endpoints of the long-running service: /healthz, /readyz, /metrics."""

    listen_host: str = "0.0.0.0"
    listen_port: int | None = Field(None, ge=0, le=65535)  # none: no endpoints (CLI use)
    # traces of our own work (a span per window scored, per delivery), OTLP/HTTP, e.g.
    # http://otel-collector.observability:4318/v1/traces; none: tracing off (no-op, free)
    otlp_traces_endpoint: str | None = None


class DetectorConfig(Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    resolution: ResolutionConfig = ResolutionConfig()
    aggregation: AggregationConfig = AggregationConfig()
    dead_letters: DeadLetterConfig = DeadLetterConfig()
    pipeline: PipelineConfig = PipelineConfig()
    sinks: SinksConfig = SinksConfig()
    detection: DetectionConfig = DetectionConfig()
    service: ServiceConfig = ServiceConfig()
    response: ResponseConfig = ResponseConfig()  # playbooks and rails (dry run by default)
    delivery: DeliverySettings = DeliverySettings()  # webhooks (durable outbox), Alertmanager
    # Replicas sharing the input through an internal topic (``detector.repartition``); the
    # broker and its security settings are those of the first Kafka source.
    scale_out: ScaleOutSettings | None = None

    @model_validator(mode="after")
    def _scale_out_needs_kafka(self) -> DetectorConfig:
        if self.scale_out is not None and not any(
            isinstance(s, KafkaSourceConfig) for s in self.sources
        ):
            raise ValueError("scale_out needs a kafka source (its broker carries the shared topic)")
        if self.scale_out is not None and self.response.mode == "approval":
            # a link must reach the replica that proposed the action, and a Service in front
            # of several replicas sends it to any of them
            raise ValueError(
                "response.mode approval does not combine with scale_out yet (an approval link "
                "must reach the replica that proposed the action); use dry_run or auto"
            )
        return self

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[Any]) -> list[Any]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {', '.join(sorted(dup))}")
        return v


_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"environment variable {name} is not set (config uses it)")
            return default
        return value

    return _ENV.sub(repl, text)


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ""
        for p in e["loc"]:
            if isinstance(p, int):
                loc += f"[{p}]"
            elif p in ("file", "stdin", "simulate", "kafka") and loc.endswith("]"):
                continue  # the discriminator tag adds nothing for a reader
            else:
                loc += f".{p}" if loc else str(p)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        parts.append(f"{loc or 'config'}: {msg}")
    more = len(err.errors()) - 3
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_config(data: Any, origin: str = "config") -> DetectorConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    try:
        return DetectorConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {_one_line(e)}") from None


def _substitute_values(node: Any) -> Any:
    """``${env:...}`` in string values only: a reference in a YAML comment is left alone, and
    a secret with YAML-special characters cannot change the document's structure."""
    if isinstance(node, str):
        return _substitute(node)
    if isinstance(node, dict):
        return {k: _substitute_values(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_values(v) for v in node]
    return node


def load_config(path: str | Path) -> DetectorConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror or e}") from None
    try:
        data = _substitute_values(yaml.safe_load(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}:{where}: not valid YAML: {problem}") from None
    return parse_config(data, str(p))


def default_config() -> DetectorConfig:
    """The embedded demo: simulated multi-cluster traffic through the whole pipeline."""
    return parse_config(
        {
            "sources": [{"type": "simulate", "duration_s": 3600, "speedup": 300}],
            # the simulated clusters' pod networks: names a caller's cluster by its address
            "resolution": {
                "cidrs": {
                    "10.10.0.0/16": "prod-eu",
                    "10.20.0.0/16": "prod-us",
                    "10.30.0.0/16": "staging",
                }
            },
            "aggregation": {"window_s": 60, "allowed_lateness_s": 10},
        },
        "embedded default",
    )
