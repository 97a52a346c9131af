"""Contract: findings are valid OCSF 1.8.0 Detection Findings with a deterministic lifecycle.

Validates every finding type in every activity (create/update/close) against the shared OCSF JSON
Schema, and checks what the schema cannot: ``type_uid == class_uid * 100 + activity_id``, one uid
per incident, uids that replay identically, event-time closing, update rate limiting, eviction,
checkpoint round trips, and a message an analyst can act on.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from detector import __version__
from detector.anomalies import FINDING_TYPES, Anomaly, Subject, severity_id
from detector.findings import (
    IncidentTracker,
    attach_remediation,
    finding_summary,
    incident_uid,
)

T0 = 1_000_000_020.0  # 2001-09-09: far from any wall clock, so a wall-clock leak shows
W = 60.0
P = "spiffe://prod.example/ns/shop/sa/frontend"
BASELINE_DESC = "seasonal baseline Tue 14:00, 36 windows"


@pytest.fixture(scope="module")
def validator(shared_dir: Path) -> Draft202012Validator:
    path = shared_dir / "schemas/ocsf/jsonschema/1.8.0/detection_finding.schema.json"
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(v: Draft202012Validator, finding: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(finding)]


def subject_for(finding_type: str) -> Subject:
    """A subject shaped like the one the producing model would give."""
    if finding_type == "global_shift":
        return Subject()
    if finding_type in ("auth_failure_burst", "denied_burst", "scan"):
        return Subject(principal="anonymous", src_cluster="prod-eu", src_ip="10.1.2.3")
    if finding_type in ("availability", "latency"):
        return Subject(dst_service="payments", dst_namespace="shop", dst_cluster="prod-us")
    if finding_type in ("lateral_movement", "credential_replay"):
        return Subject(principal=P, src_cluster="prod-eu")
    return Subject(
        principal=P,
        src_cluster="prod-eu",
        dst_service="payments",
        dst_namespace="shop",
        dst_cluster="prod-us",
    )


def anomaly(
    i: int = 0,
    *,
    finding_type: str = "exfiltration",
    subject: Subject | None = None,
    p: float = 3e-9,
    observed: float = 48.2e6,
    expected: float | None = 1.1e6,
    model: str = "seasonal",
    feature: str = "bytes_out",
    pattern: str = "SURGE",
) -> Anomaly:
    """The anomaly of window ``i`` (window i spans [T0 + i*W, T0 + (i+1)*W))."""
    return Anomaly(
        finding_type=finding_type,
        pattern=pattern,
        subject=subject if subject is not None else subject_for(finding_type),
        window_start=T0 + i * W,
        window_end=T0 + (i + 1) * W,
        model=model,
        feature=feature,
        observed=observed,
        expected=expected,
        p_value=p,
        baseline={"description": BASELINE_DESC, "windows_learned": 36},
        contributions=(("bytes_out", 0.7), ("requests", 0.3)),
        evidence={
            "src_ips": ["10.1.2.3", "not-an-ip"],
            "routes": {"GET /api/export": 120},
            "detail": "+300% requests on 80% of edges",
        },
        confidence=0.8,
    )


def end_ms(i: int) -> int:
    return round((T0 + (i + 1) * W) * 1000)


# -- schema validity, every kind ---------------------------------------------------------------


def test_validator_rejects_broken_findings(validator: Draft202012Validator) -> None:
    # Guard against a vacuous validator: the checks below mean something only if it bites.
    f = IncidentTracker().observe([anomaly()], T0 + W)[0]
    assert errors(validator, f) == []
    bad = json.loads(json.dumps(f))
    bad["anomaly_analyses"][0]["anomalies"][0]["observations"][0]["value"] = 340
    assert errors(validator, bad)
    bad = json.loads(json.dumps(f))
    bad["time"] = float(bad["time"]) + 0.5
    assert errors(validator, bad)
    bad = json.loads(json.dumps(f))
    bad["extra"] = 1
    assert errors(validator, bad)


@pytest.mark.parametrize("finding_type", sorted(FINDING_TYPES))
def test_every_finding_type_and_activity_is_valid_ocsf(
    validator: Draft202012Validator, finding_type: str
) -> None:
    tr = IncidentTracker(close_after_quiet_s=600, update_min_interval_s=0)
    out = tr.observe([anomaly(0, finding_type=finding_type)], T0 + W)
    out += tr.observe([anomaly(1, finding_type=finding_type, p=1e-10)], T0 + 2 * W)
    out += tr.tick(T0 + 2 * W + 601)
    assert [f["activity_id"] for f in out] == [1, 2, 3]
    uids = {f["finding_info"]["uid"] for f in out}
    assert len(uids) == 1
    for f in out:
        assert errors(validator, f) == [], (finding_type, f["activity_name"])
        assert f["class_uid"] == 2004 and f["category_uid"] == 2
        assert f["type_uid"] == f["class_uid"] * 100 + f["activity_id"]
        assert f["activity_name"] == {1: "Create", 2: "Update", 3: "Close"}[f["activity_id"]]
        assert f["metadata"]["version"] == "1.8.0"
        assert f["metadata"]["product"]["version"] == __version__
        assert f["metadata"]["correlation_uid"] == f["finding_info"]["uid"]
        assert f["finding_info"]["types"] == [finding_type, FINDING_TYPES[finding_type][0]]
        assert f["severity_id"] == severity_id(f["risk_score"])
        assert f["unmapped"]["finding_type"] == finding_type
    # status: New while open, Other("Closed") on close; risk rose on the update.
    assert [f["status_id"] for f in out] == [1, 1, 99]
    assert out[1]["risk_score"] == 100 > out[0]["risk_score"] == 85
    # every event of the lifecycle has its own metadata.uid
    assert len({f["metadata"]["uid"] for f in out}) == 3


def test_entities_carry_source_and_destination(validator: Draft202012Validator) -> None:
    f = IncidentTracker().observe([anomaly()], T0 + W)[0]
    ev = f["evidences"][0]
    assert ev["actor"]["user"]["uid"] == P
    assert ev["src_endpoint"]["ip"] == "10.1.2.3"  # the invalid "not-an-ip" is not put there
    assert ev["dst_endpoint"]["svc_name"] == "payments"
    roles = {r["role"]: r for r in f["resources"]}
    assert roles["Actor"]["name"] == P
    assert roles["Actor"]["tags"] == [{"name": "k8s.cluster.name", "value": "prod-eu"}]
    assert roles["Target"]["name"] == "payments" and roles["Target"]["namespace"] == "shop"
    assert roles["Target"]["tags"] == [{"name": "k8s.cluster.name", "value": "prod-us"}]
    values = {(o["type_id"], o["value"]) for o in f["observables"]}
    assert {(31, P), (38, "payments"), (99, "prod-eu"), (99, "prod-us"), (2, "10.1.2.3")} <= values
    assert f["unmapped"]["edge"]["src_cluster"] == "prod-eu"
    assert f["unmapped"]["edge"]["dst_cluster"] == "prod-us"
    assert f["unmapped"]["routes"] == ["GET /api/export"]
    assert f["unmapped"]["window_s"] == W


def test_two_models_on_one_window_make_one_finding(validator: Draft202012Validator) -> None:
    a = anomaly(0)
    b = anomaly(0, model="multivariate", feature="requests", observed=900, expected=40, p=1e-4)
    out = IncidentTracker().observe([b, a], T0 + W)
    assert len(out) == 1
    f = out[0]
    assert errors(validator, f) == []
    assert [x["anomalies"][0]["observation_parameter"] for x in f["anomaly_analyses"]] == [
        "bytes_out",
        "requests",
    ]  # highest risk first
    assert f["finding_info"]["analytic"]["name"] == "seasonal"
    assert f["finding_info"]["related_analytics"][0]["name"] == "multivariate"
    assert f["finding_info"]["related_analytics"][0]["type_id"] == 4  # Learning (ML/DL)


# -- lifecycle ---------------------------------------------------------------------------------


def test_one_uid_across_create_update_close() -> None:
    tr = IncidentTracker(close_after_quiet_s=300, update_min_interval_s=0)
    out = [*tr.observe([anomaly(0)], T0 + W), *tr.observe([anomaly(1)], T0 + 2 * W)]
    out += tr.tick(T0 + 100 * W)
    assert [f["activity_id"] for f in out] == [1, 2, 3]
    expected = incident_uid("exfiltration", subject_for("exfiltration"), T0)
    assert {f["finding_info"]["uid"] for f in out} == {expected}
    assert [f["metadata"]["sequence"] for f in out] == [1, 2, 3]
    assert [f["count"] for f in out] == [1, 2, 2]
    assert out[2]["finding_info"]["last_seen_time"] == end_ms(1)
    assert out[2]["finding_info"]["first_seen_time"] == round(T0 * 1000)


def feed(tr: IncidentTracker, batches: list[list[Anomaly]], step: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, batch in enumerate(batches):
        out += tr.observe(batch, T0 + (k + 1) * step)
    return out


def test_uids_are_deterministic_across_trackers_and_batch_order() -> None:
    other = Subject(principal=P, src_cluster="prod-eu", dst_service="orders", dst_cluster="prod-us")
    batches = [
        [anomaly(i), anomaly(i, finding_type="rate_surge", subject=other, p=10 ** -(3 + i))]
        for i in (0, 1, 2, 30, 31)
    ]

    def run(shuffle: bool) -> list[tuple[Any, ...]]:
        tr = IncidentTracker(close_after_quiet_s=600, update_min_interval_s=120)
        out: list[dict[str, Any]] = []
        rng = random.Random(7)
        for batch in batches:
            b = list(batch)
            if shuffle:
                rng.shuffle(b)
            out += tr.observe(b, max(a.window_end for a in b))
        out += tr.tick(T0 + 1000 * W)
        return [
            (
                f["finding_info"]["uid"],
                f["metadata"]["uid"],
                f["activity_id"],
                f["time"],
                f["count"],
                f["risk_score"],
            )
            for f in out
        ]

    first, second = run(False), run(True)
    assert first == second
    # Two incidents per key: the gap from window 2 to window 30 (> 600 s) splits them.
    assert len({u for u, *_ in first}) == 4
    assert run(False) == first


def test_uid_depends_on_type_subject_and_first_window() -> None:
    s = subject_for("exfiltration")
    base = incident_uid("exfiltration", s, T0)
    assert incident_uid("exfiltration", s, T0) == base
    assert incident_uid("rate_surge", s, T0) != base
    assert incident_uid("exfiltration", Subject(principal=P), T0) != base
    assert incident_uid("exfiltration", s, T0 + W) != base


def test_close_after_quiet_period_in_event_time() -> None:
    tr = IncidentTracker(close_after_quiet_s=600, update_min_interval_s=0)
    tr.observe([anomaly(0)], T0 + W)
    last_seen = T0 + W
    assert tr.tick(last_seen + 600) == []  # exactly 600 s quiet: not yet "more than"
    assert len(tr.open_incidents) == 1
    closed = tr.tick(last_seen + 600.5)
    assert [f["activity_id"] for f in closed] == [3]
    # Close time is when the incident became quiet, not when tick happened to run.
    assert closed[0]["time"] == round((last_seen + 600) * 1000)
    assert closed[0]["status_detail"] == "closed: no anomaly for 10 min"
    assert closed[0]["is_alert"] is False
    assert tr.open_incidents == [] and tr.tick(last_seen + 10_000) == []
    assert tr.stats["closed"] == 1


def test_anomaly_after_quiet_gap_closes_and_reopens_without_tick() -> None:
    tr = IncidentTracker(close_after_quiet_s=600, update_min_interval_s=0)
    first = tr.observe([anomaly(0)], T0 + W)[0]
    out = tr.observe([anomaly(20)], T0 + 21 * W)  # 19 windows (1140 s) of silence
    assert [f["activity_id"] for f in out] == [3, 1]
    assert out[0]["finding_info"]["uid"] == first["finding_info"]["uid"]
    assert out[1]["finding_info"]["uid"] != first["finding_info"]["uid"]
    # A gap within the quiet period continues the incident instead.
    out = tr.observe([anomaly(29)], T0 + 30 * W)  # 480 s after window 20 ended
    assert [f["activity_id"] for f in out] == [2]


@pytest.mark.parametrize("gap_windows", [9, 10, 11])
def test_tick_before_or_after_observe_gives_the_same_lifecycle(gap_windows: int) -> None:
    # quiet = 10 windows: the boundary cases must agree whichever call comes first.
    def run(tick_first: bool) -> list[tuple[int, str, int]]:
        tr = IncidentTracker(close_after_quiet_s=10 * W, update_min_interval_s=0)
        out = tr.observe([anomaly(0)], T0 + W)
        now = T0 + (gap_windows + 1) * W
        nxt = [anomaly(gap_windows)]
        if tick_first:
            out += tr.tick(now) + tr.observe(nxt, now)
        else:
            out += tr.observe(nxt, now) + tr.tick(now)
        return [(f["activity_id"], f["finding_info"]["uid"], f["time"]) for f in out]

    first = run(True)
    assert first == run(False)
    assert [x[0] for x in first] == ([1, 2] if gap_windows <= 10 else [1, 3, 1])


def test_observe_closes_other_quiet_incidents() -> None:
    tr = IncidentTracker(close_after_quiet_s=300, update_min_interval_s=0)
    tr.observe([anomaly(0)], T0 + W)
    other = Subject(principal=P, src_cluster="prod-eu", dst_service="orders", dst_cluster="x")
    out = tr.observe([anomaly(10, finding_type="rate_surge", subject=other)], T0 + 11 * W)
    assert [(f["activity_id"], f["unmapped"]["finding_type"]) for f in out] == [
        (1, "rate_surge"),
        (3, "exfiltration"),
    ]


def test_updates_are_rate_limited_unless_risk_rises() -> None:
    tr = IncidentTracker(close_after_quiet_s=3600, update_min_interval_s=300)
    assert [f["activity_id"] for f in tr.observe([anomaly(0)], T0 + W)] == [1]
    # Windows 1..4 end 60..240 s after the Create: same risk, inside the interval -> silent.
    for i in range(1, 5):
        assert tr.observe([anomaly(i)], T0 + (i + 1) * W) == []
    assert tr.stats["updates_suppressed"] == 4
    # Window 5 ends 300 s after the last emitted event: an update, counting all windows.
    out = tr.observe([anomaly(5)], T0 + 6 * W)
    assert [f["activity_id"] for f in out] == [2]
    assert out[0]["count"] == 6
    assert out[0]["unmapped"]["incident"]["updates_suppressed"] == 4
    assert out[0]["finding_info"]["last_seen_time"] == end_ms(5)
    # A rise in risk is reported at once, inside the interval.
    out = tr.observe([anomaly(6, p=1e-12)], T0 + 7 * W)
    assert [f["activity_id"] for f in out] == [2]
    assert out[0]["risk_score"] == 100 and out[0]["severity_id"] == 5
    # A lower risk in the next window is not news: the incident keeps its peak.
    assert tr.observe([anomaly(7, p=1e-3)], T0 + 8 * W) == []
    assert tr.stats["updated"] == 2


def test_max_open_evicts_the_least_recently_seen() -> None:
    tr = IncidentTracker(close_after_quiet_s=3600, update_min_interval_s=0, max_open=2)
    subjects = [Subject(principal=f"{P}-{k}", src_cluster="c", dst_service="s") for k in range(3)]
    tr.observe([anomaly(0, subject=subjects[0])], T0 + W)
    tr.observe([anomaly(1, subject=subjects[1])], T0 + 2 * W)
    tr.observe([anomaly(2, subject=subjects[0])], T0 + 3 * W)  # 0 is now the most recent
    out = tr.observe([anomaly(3, subject=subjects[2])], T0 + 4 * W)
    assert [f["activity_id"] for f in out] == [3, 1]
    assert out[0]["unmapped"]["edge"]["src_principal"] == f"{P}-1"
    assert "evicted" in out[0]["status_detail"]
    assert out[0]["time"] == out[1]["time"] == end_ms(3)  # evicted when the new one came
    assert out[0]["status_id"] == 99
    assert tr.stats["evicted"] == 1
    assert len(tr.open_incidents) == 2
    assert {i.subject.principal for i in tr.open_incidents} == {f"{P}-0", f"{P}-2"}


def test_close_all_closes_everything_at_the_given_event_time() -> None:
    tr = IncidentTracker(close_after_quiet_s=3600)
    other = Subject(principal=P, src_cluster="prod-eu")
    tr.observe([anomaly(0), anomaly(1, finding_type="lateral_movement", subject=other)], T0)
    out = tr.close_all(T0 + 5 * W)
    assert [(f["activity_id"], f["time"]) for f in out] == [(3, end_ms(4)), (3, end_ms(4))]
    assert all(f["status_detail"] == "closed: end of input" for f in out)
    assert tr.open_incidents == []


def test_state_round_trips_through_json() -> None:
    def make() -> IncidentTracker:
        return IncidentTracker(close_after_quiet_s=600, update_min_interval_s=300)

    a = make()
    a.observe([anomaly(0), anomaly(0, model="novelty", feature="requests", p=1e-4)], T0 + W)
    # A suppressed update with two models on one window: state must remember both.
    assert a.observe([anomaly(1), anomaly(1, model="novelty", p=1e-4)], T0 + 2 * W) == []
    state = json.loads(json.dumps(a.get_state()))
    restored = make()
    restored.set_state(state)
    closed = restored.close_all(T0 + 3 * W)
    assert closed == copy.deepcopy(a).close_all(T0 + 3 * W)
    assert len(closed[0]["anomaly_analyses"]) == 2
    b = make()
    b.set_state(state)
    assert b.get_state() == a.get_state()
    nxt = [anomaly(6), anomaly(6, finding_type="new_edge", pattern="UNSEEN", expected=0.0)]
    assert b.observe(nxt, T0 + 7 * W) == a.observe(nxt, T0 + 7 * W)
    assert b.tick(T0 + 100 * W) == a.tick(T0 + 100 * W)
    assert b.stats == a.stats
    with pytest.raises(ValueError):
        make().set_state({"version": 999, "incidents": []})


# -- content -----------------------------------------------------------------------------------


def test_message_says_what_where_how_unusual_compared_with_what() -> None:
    f = IncidentTracker().observe([anomaly()], T0 + W)[0]
    msg = f["message"]
    assert P in msg and "prod-eu" in msg and "payments.shop@prod-us" in msg
    assert "48.2 MB" in msg  # observed, in its unit
    assert "1.1 MB" in msg  # expected
    assert BASELINE_DESC in msg
    assert "p = 3e-09" in msg and "60 s" in msg and "SURGE" in msg
    assert BASELINE_DESC in f["finding_info"]["desc"]
    assert f["finding_info"]["title"] == anomaly().title
    ana = f["anomaly_analyses"][0]
    assert ana["anomalies"][0]["observations"][0]["value"] == "48200000"
    assert ana["anomalies"][0]["observed_pattern"] == "SURGE"
    assert ana["baselines"][0]["observations"][0] == {"value": "1100000", "count": 36}
    assert f["unmapped"]["model_baseline"]["description"] == BASELINE_DESC
    assert f["risk_score"] == 85 and f["confidence_score"] == 80


def test_message_without_expectation_and_close_message() -> None:
    tr = IncidentTracker(close_after_quiet_s=60)
    a = anomaly(
        finding_type="new_edge",
        pattern="UNSEEN",
        model="novelty",
        feature="new_destinations",
        observed=3,
        expected=None,
    )
    f = tr.observe([a], T0 + W)[0]
    assert "new destinations 3 in 60 s" in f["message"] and "expected none" in f["message"]
    assert f["anomaly_analyses"][0]["baselines"][0]["observations"][0]["value"] == "none"
    assert f["finding_info"]["analytic"]["type_id"] == 2  # Behavioral
    closed = tr.tick(T0 + 10 * W)[0]
    assert closed["message"].startswith("Closed (no anomaly for 60 s)")
    assert BASELINE_DESC in closed["message"]


def test_time_is_event_time_in_ms() -> None:
    tr = IncidentTracker(close_after_quiet_s=600, update_min_interval_s=0)
    c = tr.observe([anomaly(3)], T0 + 4 * W + 7)[0]  # now_ts (watermark) is not the time
    u = tr.observe([anomaly(4)], T0 + 99 * W)[0]
    for f, i in ((c, 3), (u, 4)):
        assert isinstance(f["time"], int)
        assert f["time"] == end_ms(i)
        assert f["end_time"] == f["finding_info"]["last_seen_time"] == end_ms(i)
    assert c["start_time"] == c["finding_info"]["first_seen_time"] == round((T0 + 3 * W) * 1000)
    assert c["finding_info"]["created_time"] == u["finding_info"]["created_time"] == end_ms(3)


def test_attach_remediation(validator: Draft202012Validator) -> None:
    f = IncidentTracker().observe([anomaly()], T0 + W)[0]
    ref = "istio/authorizationpolicy/shop/deny-frontend-prod-eu"
    g = attach_remediation(f, "Time-boxed DENY frontend@prod-eu -> payments (1 h)", [ref])
    assert g is f
    assert f["remediation"] == {
        "desc": "Time-boxed DENY frontend@prod-eu -> payments (1 h)",
        "references": [ref],
    }
    assert errors(validator, f) == []
    attach_remediation(f, "Revoke SVID", kb_articles=["RB-12"])
    assert f["remediation"] == {"desc": "Revoke SVID", "kb_articles": ["RB-12"]}
    assert errors(validator, f) == []
    with pytest.raises(ValueError):
        attach_remediation(f, "  ")


def test_finding_summary_is_one_line() -> None:
    tr = IncidentTracker(close_after_quiet_s=60)
    f = tr.observe([anomaly()], T0 + W)[0]
    line = finding_summary(f)
    assert "\n" not in line
    assert line.startswith("[2001-09-09 01:48Z] CREATE")
    assert "High" in line and "risk  85" in line and anomaly().title in line
    assert "48.2 MB vs ≈1.1 MB" in line and f["finding_info"]["uid"][:8] in line
    assert "CLOSE" in finding_summary(tr.tick(T0 + 100 * W)[0])


def test_numpy_values_from_models_serialise(validator: Draft202012Validator) -> None:
    a = Anomaly(
        finding_type="availability",
        pattern="SURGE",
        subject=subject_for("availability"),
        window_start=np.float64(T0),
        window_end=np.float64(T0 + W),
        model="seasonal",
        feature="error_ratio",
        observed=np.float32(0.42),  # type: ignore[arg-type]
        expected=np.float64(0.01),
        p_value=np.float64(1e-5),
        baseline={"windows_learned": np.int64(36), "profile": np.arange(3)},
        contributions=(("error_ratio", np.float32(1.0)),),  # type: ignore[arg-type]
        evidence={"src_ips": ("10.0.0.1",), "codes": {503, 502}},
        confidence=np.float64(0.66),
    )
    tr = IncidentTracker()
    f = tr.observe([a], T0 + W)[0]
    assert errors(validator, f) == []
    assert orjson.loads(orjson.dumps(f))["time"] == end_ms(0)
    assert "error ratio 42% in 60 s" in f["message"] and "≈ 1%" in f["message"]
    assert f["unmapped"]["model_baseline"] == {"windows_learned": 36, "profile": [0, 1, 2]}
    assert f["anomaly_analyses"][0]["baselines"][0]["observations"][0]["count"] == 36
    json.dumps(tr.get_state(), allow_nan=False)
