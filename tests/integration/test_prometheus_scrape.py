"""A real Prometheus scrapes the running service, and every metric the dashboard and the alert
rules query is one the service exports.

The real command in a subprocess (a file source in follow mode, HTTP on loopback, as in
tests/pipeline/test_service.py) and the real ``prometheus`` server (Debian package) on a free
loopback port, scraping every second; both are killed at the end. Every wait is bounded. A
missing ``prometheus`` binary FAILS the test (CI installs it).

Metric families with labels appear in the exposition (HELP/TYPE lines) from the start but have
series only once something happened (a finding, a delivery, a Kafka partition); the service
here has no model, webhook or Kafka source, so for those the test checks the declaration, and
for every family with samples that Prometheus stored them.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from tests.http_helpers import get, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "detector-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
NAME = re.compile(r"\bdetector_[a-z0-9_]+")
SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")
# Families that must have live series in this setup (no model, webhook or Kafka needed).
LIVE = {
    "detector_records_total",
    "detector_flow_records_total",
    "detector_bad_records_total",
    "detector_window_lag_seconds",
    "detector_watermark_seconds",
    "detector_edges_tracked",
    "detector_open_edge_windows",
    "detector_cluster_last_event_seconds",
    "detector_blind",
    "detector_overflow_records_total",
}

LINE = ('{"start_time":"%s","method":"GET","path":"/api/v1/items/%d",'
        '"protocol":"HTTP/1.1","response_code":200,"response_flags":"-","bytes_received":10,'
        '"bytes_sent":100,"duration":5,"upstream_cluster":"inbound|8080||",'
        '"requested_server_name":"outbound_.8080_._.cart.orders.svc.cluster.local",'
        '"downstream_remote_address":"10.1.0.5:4000",'
        '"downstream_peer_uri_san":"spiffe://cluster.local/ns/web/sa/frontend"}\n')






def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query_names() -> set[str]:
    """Metric names in every dashboard query and every alert rule expression."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load(RULES.read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    return {n for e in exprs for n in NAME.findall(e)}


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exposition_names(text: str) -> tuple[set[str], set[str]]:
    """(declared families from HELP/TYPE lines, names that have samples)."""
    declared, sampled = set(), set()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            declared.add(family(line.split()[2]))
        elif line and not line.startswith("#"):
            sampled.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return declared, sampled


def start_service(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    log = tmp_path / "access.log"
    now = time.time()
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))  # noqa: E731
    # recent events (the window closes when the idle stream lets event time follow the clock),
    # and one undecodable line (bad records by reason)
    log.write_text("".join(LINE % (stamp(now - 120 + s), s) for s in range(20)) + "{broken\n")
    cfg = tmp_path / "svc.yaml"
    cfg.write_text(yaml.safe_dump({
        "sources": [{"type": "file", "paths": [str(log)], "follow": True,
                     "poll_interval_s": 0.1, "cluster": "prod-eu"}],
        "aggregation": {"window_s": 10, "allowed_lateness_s": 1, "idle_stream_s": 1},
        "service": {"listen_host": "127.0.0.1", "listen_port": 0},
        "sinks": {"console": {"enabled": False}},
        "dead_letters": {"path": str(tmp_path / "dead.jsonl")},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "detector.cli", "run", "-c", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    port = None
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while port is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"serving /healthz /readyz /metrics on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
        assert line or proc.poll() is None, "the service died at startup"
    assert port, "the service never said where it listens"
    return proc, port


def start_prometheus(tmp_path: Path, target_port: int) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("prometheus")
    assert exe, "prometheus not found: apt-get install -y --no-install-recommends prometheus"
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "detector",
                            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen, timeout: float = 30) -> int | None:  # type: ignore[type-arg]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return None
    return proc.returncode


def test_prometheus_scrapes_every_metric_the_dashboard_and_rules_use(tmp_path: Path) -> None:
    names = query_names()
    service, port = start_service(tmp_path)
    prom = None
    try:
        prom, api = start_prometheus(tmp_path, port)
        wait_for(lambda: get(api + "/-/ready")[0] == 200, 60, "prometheus ready")

        def query(q: str) -> list[dict]:  # type: ignore[type-arg]
            status, body = get(api + "/api/v1/query?" + urllib.parse.urlencode({"query": q}))
            if status != 200:
                return []
            return json.loads(body)["data"]["result"]  # type: ignore[no-any-return]

        wait_for(lambda: query('sum(detector_records_total{job="detector"}) > 0'), 60,
                 "prometheus sees detector_records_total > 0")
        # the first window closes on the idle stream; blind/cluster series follow it
        wait_for(lambda: query('detector_blind{job="detector"}')
                 and query('detector_flow_records_total{job="detector"}'), 60,
                 "a closed window reaches prometheus")

        declared, sampled = exposition_names(get(f"http://127.0.0.1:{port}/metrics")[1])
        missing = sorted(n for n in names if family(n) not in declared)
        assert not missing, f"queried but not exported by the service: {missing}"

        def stored() -> set[str]:
            status, body = get(api + "/api/v1/label/__name__/values")
            return set(json.loads(body)["data"]) if status == 200 else set()

        want = {n for n in names if n in sampled} | LIVE
        assert sampled >= LIVE, f"expected live series: {sorted(LIVE - sampled)}"
        wait_for(lambda: want <= stored(), 30, f"prometheus stores all of {sorted(want)}")
        up = query('up{job="detector"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        if prom is not None:
            stop(prom)
        rc = stop(service)
    assert rc == 0
