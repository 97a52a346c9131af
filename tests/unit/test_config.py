"""Config loading: strict validation, one-line errors, env substitution, the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.config import default_config, load_config, parse_config
from detector.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_minimal_file_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
sources:
  - type: file
    paths: [a.log, b.log.gz]
    format: envoy_json
    cluster: prod-eu
resolution:
  trust_domains: {cluster.local: prod-eu}
  cidrs: {"10.8.0.0/16": prod-us}
aggregation: {window_s: 30}
"""))
    src = cfg.sources[0]
    assert src.type == "file" and src.paths == ["a.log", "b.log.gz"]
    assert cfg.aggregation.window_s == 30 and cfg.aggregation.allowed_lateness_s == 30


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("sources: [{type: file, paths: [a], formatt: auto}]", "sources[0].formatt: unknown key"),
        ("sources: [{type: file, paths: [a]}]\naggregation: {window: 5}",
         "aggregation.window: unknown key"),
        ("sources: [{type: file, paths: [a], format: nginx}]", "unknown format 'nginx'"),
        ("sources: [{type: carrier-pigeon}]", "sources[0]"),
        ("sources: []", "sources"),
        ("sources: [{type: file, paths: [a]}]\naggregation: {window_s: -1}", "window_s"),
        ("sources: [{type: file, paths: [a]}]\nresolution: {cidrs: {'10.0.0.0/33': x}}",
         "bad CIDR"),
        ("sources: [{type: file, paths: [a]}, {type: file, paths: [b]}]", "unique"),
        ("- just a list", "mapping"),
        ("sources: [\n  {type: file", "not valid YAML"),
        ("sources: [{type: file, paths: [a]}]\nscale_out: {}", "scale_out needs a kafka source"),
        (
            "sources: [{type: kafka, bootstrap_servers: 'k:9092', topics: [{name: t}], group_id: g}]\n"
            "scale_out: {}\nresponse: {mode: approval, approval: {secret: s3cret}}",
            "approval does not combine with scale_out",
        ),
    ],
)
def test_errors_are_one_readable_line(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 400


def test_env_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DET_TEST_CLUSTER", "from-env")
    cfg = load_config(write(tmp_path, """
sources: [{type: file, paths: [a], cluster: "${env:DET_TEST_CLUSTER}",
           namespace: "${env:DET_TEST_UNSET:-fallback}"}]
"""))
    assert cfg.sources[0].cluster == "from-env"
    assert cfg.sources[0].namespace == "fallback"
    with pytest.raises(ConfigError, match="DET_TEST_MISSING is not set"):
        load_config(write(tmp_path, "sources: [{type: file, paths: ['${env:DET_TEST_MISSING}']}]"))


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_kafka_source_rejects_typos_and_passes_security_options() -> None:
    base = {"type": "kafka", "bootstrap_servers": "127.0.0.1:9092", "group_id": "g",
            "topics": [{"name": "istio-eu", "format": "envoy_json", "cluster": "eu"}]}
    cfg = parse_config({"sources": [base]})
    assert cfg.sources[0].type == "kafka"
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"sources": [{**base, "bootstrap_server": "x"}]})


def test_default_config_is_the_embedded_demo() -> None:
    cfg = default_config()
    assert [s.type for s in cfg.sources] == ["simulate"]


def test_env_references_in_comments_are_ignored_and_values_stay_strings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DET_TEST_ODD", "a: b # not yaml structure")
    cfg = load_config(write(tmp_path, """
# secrets come from the environment: ${env:SOME_UNSET_NAME}
sources: [{type: file, paths: ["${env:DET_TEST_ODD}"]}]
"""))
    assert cfg.sources[0].paths == ["a: b # not yaml structure"]


def test_every_shipped_pipeline_and_readme_example_is_a_valid_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("DETECTOR_APPROVAL_SECRET", "x" * 32)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka.example:9092")
    monkeypatch.setenv("SOC_WEBHOOK_SECRET", "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
    pipelines = sorted((root / "pipelines").glob("*.yaml"))
    assert len(pipelines) >= 5
    assert root / "pipelines" / "istio-kafka-scale-out.yaml" in pipelines
    for p in pipelines:
        load_config(p)
    readme = (root / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        text = block if "sources:" in block else "sources: [{type: stdin}]\n" + block
        load_config(write(tmp_path, text))


def test_scale_out_pipeline_is_istio_kafka_run_by_replicas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipelines = Path(__file__).resolve().parents[2] / "pipelines"
    for name in ("DETECTOR_STATE_DIR", "KAFKA_REPLICATION_FACTOR", "KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    single = load_config(pipelines / "istio-kafka.yaml")
    scaled = load_config(pipelines / "istio-kafka-scale-out.yaml")
    a, b = single.model_dump(mode="json"), scaled.model_dump(mode="json")
    assert a.pop("scale_out") is None
    so = b.pop("scale_out")
    assert a == b  # the same pipeline, plus scale_out
    (src,) = scaled.sources
    assert so["topic"] not in {t.name for t in src.topics}
    assert so["group_id"] != src.group_id
    assert so["replication_factor"] == 3 and so["partitions"] > 1
    # replicas on one host each get their own dead letters
    monkeypatch.setenv("DETECTOR_STATE_DIR", str(tmp_path / "r1"))
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "1")
    r1 = load_config(pipelines / "istio-kafka-scale-out.yaml")
    assert r1.dead_letters.path == str(tmp_path / "r1" / "dead-letters.jsonl")
    assert r1.scale_out is not None and r1.scale_out.replication_factor == 1
