"""`detector parse --format auto` over every shared fixture: sensible records, nothing lost.

This is the user's way of checking what the detector makes of their logs, so it is tested as a
user runs it: the real command line, in a subprocess, on the real files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import FIXTURES

FILES = sorted(
    p for p in FIXTURES.rglob("*")
    if p.is_file() and not p.name.startswith("LICENSE") and p.suffix != ".md"
    and not p.name.endswith(".protobuf-text")  # protobuf text format: documentation, not input
)


def parse(path: Path, *extra: str) -> tuple[list[dict], str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "detector.cli", "parse", "--format", "auto", *extra, str(path)],
        capture_output=True, timeout=120,
    )
    records = [orjson.loads(line) for line in proc.stdout.splitlines()]
    return records, proc.stderr.decode(), proc.returncode


def test_every_fixture_is_covered() -> None:
    assert len(FILES) >= 25, FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_parse_auto_gives_sensible_records(path: Path) -> None:
    records, err, rc = parse(path)
    assert rc == 0, err
    assert "Traceback" not in err
    assert "decoder_crash" not in err
    # one bad line is expected: the Envoy application-log line in the datadog sample
    allowed_bad = 1 if "datadog" in path.name else 0
    bad = int(err.rsplit("bad ", 1)[1].split()[0])
    assert bad == allowed_bad, err
    for r in records:
        assert r["ts"] > 1e9 and r["kind"] in {"request", "auth_failure", "connection", "api_audit", "span"}
        assert r["outcome"] in {"ok", "error", "denied", "unauthenticated"}
        assert r["src_cluster"] and r["dst_cluster"]  # resolved, "unknown" at worst
        assert r["source"] == str(path) and r["offset"] >= 1
        for k in ("trace_id", "span_id", "parent_span_id"):
            assert r[k] is None or (r[k] == r[k].lower() and all(c in "0123456789abcdef" for c in r[k]))
    # Hubble files skip replies and handshakes on purpose; the OTLP logs example is an
    # application log ("Example log record"), not an access log: read, nothing to report
    if path.name == "otlp-proto-examples_logs.json":
        assert records == [] and "parsed 1 units into 1 good units" in err
    elif "hubble" not in path.parent.name:
        assert records, err


def test_parse_names_the_cluster_and_reports_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "mixed.log"
    good = (FIXTURES / "envoy-istio" / "istio-io_blog-2022-egress-authz_rbac-deny_TEXT.log").read_bytes()
    f.write_bytes(b"{truncated json\n" + good + b"\x00\xff garbage\n")
    records, err, rc = parse(f, "--cluster", "prod-eu")
    assert rc == 0 and len(records) == 1
    assert records[0]["dst_cluster"] == "prod-eu" and records[0]["outcome"] == "denied"
    assert f"{f}:1: bad record" in err and f"{f}:3: bad record" in err
    _, _, strict_rc = parse(f, "--strict")
    assert strict_rc == 1
