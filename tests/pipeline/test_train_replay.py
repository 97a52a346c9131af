"""simulate -> train -> replay -> evaluate through the real command line, on a small mesh.

Checks the contracts of the offline commands: a versioned artifact with a manifest, findings as
OCSF Detection Findings (validated against the schema) with event-time ``time`` in ms, an
``actions.jsonl`` beside them, determinism of finding uids across two replays, and model
version listing, diffing, reverting and refusing a damaged artifact.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tests.conftest import SHARED

pytestmark = pytest.mark.timeout(900)  # the module fixtures simulate, train and replay


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    # 26 h of training so every hour of the day is seen; 5 h of test with every scenario
    r = cli("simulate", "--out", str(out), "--train-hours", "26", "--test-hours", "5", "--gz",
            "--rate-multiplier", "0.1", "--intensity", "3")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def model(sim: Path) -> Path:
    out = sim / "models"
    r = cli("train", "--cluster-from-filename", "--input", str(sim / "train"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("v0001")
    return out


@pytest.fixture(scope="module")
def replayed(sim: Path, model: Path) -> Path:
    out = sim / "replay"
    r = cli("replay", "--cluster-from-filename", "--model", str(model), "--input",
            str(sim / "test"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_artifact_manifest(model: Path) -> None:
    assert (model / "CURRENT").read_text().strip() == "v0001"
    m = json.loads((model / "v0001" / "manifest.json").read_text())
    assert m["format"] == "detector-baseline" and m["window_s"] == 60
    assert {"numpy", "scikit-learn", "scipy", "python"} <= set(m["libraries"])
    assert set(m["models"]) == {"novelty", "seasonal", "bursts", "multivariate"}
    t = m["training"]
    assert t["last_event_ts"] - t["first_event_ts"] >= 25 * 3600
    assert t["first_event_ts"] < t["calibration_from_ts"] < t["last_event_ts"]
    assert m["metrics"]["edge_windows"] > 1000 and m["features"]


def test_findings_are_valid_ocsf_in_event_time(sim: Path, replayed: Path) -> None:
    schema = json.loads(
        (SHARED / "schemas/ocsf/jsonschema/1.8.0/detection_finding.schema.json").read_text()
    )
    validator = Draft202012Validator(schema)
    lines = (replayed / "findings.jsonl").read_text().splitlines()
    assert lines, "no findings at all on a test span full of attacks"
    span = json.loads((sim / "manifest.json").read_text())["spans"]["test"]
    for line in lines:
        f = json.loads(line)
        errors = [e.message for e in validator.iter_errors(f)]
        assert not errors, errors[:3]
        assert f["type_uid"] == f["class_uid"] * 100 + f["activity_id"]
        assert span["start"] * 1000 <= f["time"] <= (span["end"] + 3600) * 1000
    assert (replayed / "actions.jsonl").exists()


def test_evaluation_finds_attacks_and_spares_traps(sim: Path, replayed: Path) -> None:
    r = cli("evaluate", "--json", "--labels", str(sim / "test" / "labels.jsonl"),
            "--findings", str(replayed / "findings.jsonl"))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    detected = {s["scenario"] for s in rep["scenarios"] if s["kind"] == "attack" and s["detected"]}
    # a short training span and faint traffic: the unmistakable attacks must still be found
    assert {"lateral_movement", "credential_stuffing", "k8s_api_abuse"} <= detected, rep
    assert rep["traps_flagged"] == [], rep


def test_replay_is_deterministic(sim: Path, model: Path, replayed: Path, tmp_path: Path) -> None:
    r = cli("replay", "--cluster-from-filename", "--model", str(model), "--input",
            str(sim / "test"), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr

    def uids(p: Path) -> list[tuple[str, int, int]]:
        return [(f["finding_info"]["uid"], f["activity_id"], f["time"])
                for f in map(json.loads, (p / "findings.jsonl").read_text().splitlines())]

    assert uids(tmp_path) == uids(replayed)


def test_models_list_diff_revert_and_refuse_damage(sim: Path, model: Path, tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(model, models)
    # a second version from the test span
    r = cli("train", "--cluster-from-filename", "--input", str(sim / "test"), "--out", str(models))
    assert r.returncode == 0, r.stderr
    listing = cli("models", "list", str(models)).stdout
    assert "  v0001" in listing and "* v0002" in listing
    d = json.loads(cli("models", "diff", str(models), "v0001", "v0002").stdout)
    assert d["from"] == "v0001" and d["to"] == "v0002"
    assert d["edges"]["added_total"] > 0  # the test span has attack edges training never saw
    assert cli("models", "revert", str(models), "v0001").returncode == 0
    assert (models / "CURRENT").read_text().strip() == "v0001"
    # damage: a flipped byte in the state is refused with one readable line, exit 2
    state = models / "v0002" / "state.json.gz"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    bad = cli("replay", "--model", str(models / "v0002"), "--input", str(sim / "test"),
              "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "checksum" in bad.stderr and "Traceback" not in bad.stderr
    # an incompatible library version is refused too
    man = models / "v0001" / "manifest.json"
    m = json.loads(man.read_text())
    m["libraries"]["scikit-learn"] = "0.1.0"
    man.write_text(json.dumps(m))
    bad = cli("replay", "--model", str(models), "--input", str(sim / "test"), "--out",
              str(tmp_path / "y"))
    assert bad.returncode == 2 and "scikit-learn" in bad.stderr


def test_state_is_json_not_pickle(model: Path) -> None:
    state = json.loads(gzip.decompress((model / "v0001" / "state.json.gz").read_bytes()))
    assert set(state["models"]) == {"novelty", "seasonal", "bursts", "multivariate"}


def test_run_with_a_model_emits_findings_and_replay_honours_config(
    sim: Path, model: Path, replayed: Path, tmp_path: Path
) -> None:
    import yaml

    files = sorted((sim / "test").glob("*.gz"))
    findings = tmp_path / "findings.jsonl"
    cfg = {
        "sources": [
            {"type": "file", "name": f.name.split(".")[0] + str(i), "paths": [str(f)],
             "cluster": f.name.split(".")[0]}
            for i, f in enumerate(files)
        ],
        "aggregation": {"window_s": 60, "allowed_lateness_s": 30},
        "detection": {"model": str(model)},
        "sinks": {"console": {"enabled": False}, "findings_jsonl": {"path": str(findings)}},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli("check-config", str(path)).returncode == 0
    r = cli("run", "-c", str(path))
    assert r.returncode == 0, r.stderr
    live = {json.loads(x)["finding_info"]["uid"] for x in findings.read_text().splitlines()}
    offline = {json.loads(x)["finding_info"]["uid"]
               for x in (replayed / "findings.jsonl").read_text().splitlines()}
    assert live and live == offline  # the service and the replay find the same incidents

    # a config that silences lateral movement is honoured by replay (back-testing thresholds)
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text(yaml.safe_dump({
        "sources": [{"type": "stdin"}],
        "detection": {"thresholds": {"per_type": {"lateral_movement": 101}}},
    }))
    out = tmp_path / "quiet"
    r = cli("replay", "--cluster-from-filename", "-c", str(quiet), "--model", str(model),
            "--input", str(sim / "test"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    types = {json.loads(x)["unmapped"]["finding_type"]
             for x in (out / "findings.jsonl").read_text().splitlines()}
    assert "lateral_movement" not in types and types

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sources": [{"type": "stdin"}],
                                   "detection": {"thresholds": {"per_type": {"lateral": 5}}}}))
    r = cli("check-config", str(bad))
    assert r.returncode == 2 and "unknown finding type" in r.stderr


def test_service_delivers_signed_findings_and_actions_and_dead_letters_replay(
    sim: Path, model: Path, tmp_path: Path
) -> None:
    """The whole response path of `detector run`: findings and remediation activities reach a
    real HTTP receiver, signed (checked by the standardwebhooks library); what the receiver
    refused becomes dead letters that `detector deliveries replay` sends again."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import yaml
    from standardwebhooks import Webhook

    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    verifier = Webhook(secret)
    got: dict[str, dict] = {}
    refuse = {"on": True}

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if refuse["on"]:
                self.send_response(400)  # a permanent refusal: dead letter, not retried
                self.end_headers()
                return
            payload = verifier.verify(body, dict(self.headers))  # raises on a bad signature
            got[self.headers["webhook-id"]] = payload
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        files = sorted((sim / "test").glob("*.gz"))
        cfg = {
            "sources": [{"type": "file", "name": f"f{i}", "paths": [str(f)],
                         "cluster": f.name.split(".")[0]} for i, f in enumerate(files)],
            "detection": {"model": str(model)},
            "delivery": {
                "outbox_path": str(tmp_path / "outbox.db"),
                "drain_s": 20,
                "webhooks": [{"name": "soc", "url": f"http://127.0.0.1:{server.server_port}/hook",
                              "secrets": [secret], "max_attempts": 3, "backoff_base_s": 0.05}],
            },
            "sinks": {"console": {"enabled": False}},
        }
        path = tmp_path / "svc.yaml"
        path.write_text(yaml.safe_dump(cfg))
        r = cli("run", "-c", str(path))
        assert r.returncode == 0, r.stderr
        listing = cli("deliveries", "list", "-c", str(path)).stdout.splitlines()
        summary = json.loads(listing[0])
        dead = [json.loads(x) for x in listing[1:]]
        assert dead and summary["counts"].get("dead", 0) >= len(dead)
        assert all(d["reason"] == "http_400" for d in dead)
        refuse["on"] = False
        assert cli("deliveries", "replay", "-c", str(path), "--all").returncode == 0
        # a second run of the service (same input, same outbox) delivers the re-queued rows;
        # the findings it makes again carry the same webhook-ids and are not queued twice
        r = cli("run", "-c", str(path))
        assert r.returncode == 0, r.stderr
    finally:
        server.shutdown()
    kinds = {p.get("class_uid") for p in got.values()}
    assert kinds == {2004, 7001}, kinds  # detection findings and remediation activities
    after = json.loads(cli("deliveries", "list", "-c", str(path)).stdout.splitlines()[0])
    assert after["counts"].get("dead", 0) == 0 and after["counts"].get("pending", 0) == 0
    assert len(got) == summary["counts"]["dead"] + summary["counts"].get("delivered", 0)


def test_checkpoint_resumes_online_learning_and_snapshots_versions(
    sim: Path, model: Path, tmp_path: Path
) -> None:
    from detector import artifacts
    from detector.config import parse_config
    from detector.detection import from_config
    from detector.runner import run_config

    files = sorted((sim / "test").glob("*.gz"))
    ckpt = tmp_path / "state" / "checkpoint.json.gz"
    snaps = tmp_path / "snapshots"
    cfg = parse_config({
        "sources": [{"type": "file", "name": f"f{i}", "paths": [str(f)],
                     "cluster": f.name.split(".")[0]} for i, f in enumerate(files)],
        "detection": {"model": str(model), "checkpoint_path": str(ckpt),
                      "checkpoint_interval_s": 600, "snapshot_dir": str(snaps),
                      "snapshot_interval_s": 3600},
        "sinks": {"console": {"enabled": False}},
    })
    base_windows = artifacts.load(model).state["models"]["seasonal"]["state"]["n_h"]
    run_config(cfg)
    assert ckpt.exists()
    # a restart resumes from the checkpoint: the baselines learned online are there at once
    stage = from_config(cfg, console=False)
    seasonal = next(m for m in stage.scorer.models if m.name == "seasonal")
    assert seasonal.n_h_.sum() > sum(base_windows) + 200  # ~5 h of test windows learned
    assert stage.checkpointer.last_saved_ts is not None
    # snapshots are model versions like any other
    versions = artifacts.versions(snaps)
    assert len(versions) >= 3
    snap = artifacts.load(snaps)
    assert snap.manifest["training"]["online_snapshot"] is True
    # a checkpoint grown from another model version is not used
    other = cfg.model_copy(update={"detection": cfg.detection.model_copy(
        update={"model": str(snaps)})})
    fresh = from_config(other, console=False)
    fresh_seasonal = next(m for m in fresh.scorer.models if m.name == "seasonal")
    assert fresh_seasonal.n_h_.sum() == sum(snap.state["models"]["seasonal"]["state"]["n_h"])
