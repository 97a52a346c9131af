"""The alerting rules in deploy/prometheus are valid and behave as their unit tests say.

Runs the real ``promtool`` (Debian package ``prometheus``). A missing promtool is a failure,
not a skip: CI installs it, and untested alert rules must not pass silently.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: apt-get install -y --no-install-recommends prometheus"
    return exe


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120
    )


def test_rules_are_valid() -> None:
    r = run("check", "rules", "rules.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_rule_unit_tests_pass() -> None:
    r = run("test", "rules", "rules_test.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_firing_unit_test() -> None:
    import yaml

    rules = yaml.safe_load((DEPLOY / "rules.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "rules_test.yaml").read_text())
    fired = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    quiet = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if not t.get("exp_alerts")
    }
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown not firing"
