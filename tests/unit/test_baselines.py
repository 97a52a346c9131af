"""Baselines and the scorer on synthetic edge windows: each pattern found, normal traffic quiet."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from detector.baselines.bursts import BurstModel
from detector.baselines.features import WindowBatch
from detector.baselines.multivariate import MultivariateModel
from detector.baselines.novelty import NoveltyModel
from detector.baselines.seasonal import SeasonalModel, nb_sf
from detector.flows import EdgeWindow
from detector.scoring import AllowRule, Calibrator, Scorer, Thresholds

W = 60.0
T0 = 1_700_000_000 - 1_700_000_000 % 86400  # midnight UTC
CALLERS = [f"spiffe://cluster.local/ns/shop/sa/c{i}" for i in range(6)]
SERVICES = [f"svc{i}" for i in range(8)]


def ew(t: float, caller: str, svc: str, n: int, cluster: str = "eu", dst_cluster: str = "eu",
       **kw: object) -> EdgeWindow:
    base: dict[str, object] = dict(
        window_start=t, window_end=t + W, src_principal=caller, src_cluster=cluster,
        dst_namespace="shop", dst_service=svc, dst_cluster=dst_cluster, requests=n,
        connections=0, api_calls=0, ok=n, errors=0, denied=0, unauthenticated=0,
        bytes_in=200 * n, bytes_out=2000 * n, latency_p50_ms=10.0, latency_p90_ms=20.0,
        latency_p99_ms=40.0, routes={"GET /items/{id}": n},
    )
    base.update(kw)
    return EdgeWindow(**base)  # type: ignore[arg-type]


def normal_traffic(hours: float, seed: int = 1, start: float = T0) -> Iterator[list[EdgeWindow]]:
    """Each caller calls two fixed services with a daily rhythm and Poisson noise."""
    rng = np.random.default_rng(seed)
    for k in range(int(hours * 3600 / W)):
        t = start + k * W
        hour = (t % 86400) / 3600
        level = 20 * (1.2 + math.sin(2 * math.pi * (hour - 6) / 24))
        out = []
        for i, c in enumerate(CALLERS):
            for svc in (SERVICES[i % 8], SERVICES[(i + 1) % 8]):
                n = int(rng.poisson(level))
                if n:
                    out.append(ew(t, c, svc, n, bytes_out=int(2000 * n * rng.lognormal(0, 0.2))))
        yield out


@pytest.fixture(scope="module")
def trained() -> Scorer:
    scorer = Scorer()
    split = T0 + 36 * 3600
    for ws in normal_traffic(48):
        scorer.train(ws, split)
    scorer.finish_training()
    return scorer


def test_normal_traffic_raises_nothing(trained: Scorer) -> None:
    found = [a for ws in normal_traffic(6, seed=99, start=T0 + 48 * 3600)
             for a in trained.process(ws)]
    assert found == [], [(a.finding_type, a.risk) for a in found]


def test_credential_replay_lateral_movement_exfil_burst_scan(trained: Scorer) -> None:
    t = T0 + 60 * 3600
    base = next(normal_traffic(1 / 60, seed=5, start=t))
    attack = [
        # c0's identity used from another cluster
        ew(t, CALLERS[0], SERVICES[0], 10, cluster="us"),
        # c1 reaches three services it never called, one in another cluster
        ew(t, CALLERS[1], SERVICES[5], 3, denied=2, ok=1),
        ew(t, CALLERS[1], SERVICES[6], 3),
        ew(t, CALLERS[1], SERVICES[7], 2, dst_cluster="us"),
        # c2 downloads 50x the usual bytes from its usual service
        ew(t, CALLERS[2], SERVICES[2], 20, bytes_out=20 * 2000 * 50),
        # an unauthenticated storm from one address
        ew(t, "anonymous", SERVICES[4], 300, ok=0, unauthenticated=300,
           failures_by_ip={"203.0.113.9": 300}),
    ]
    # c3 probes every service, mostly denied
    attack += [ew(t, CALLERS[3], s, 2, denied=2, ok=0) for s in SERVICES]
    found = trained.process(base + attack)
    by = {(a.subject.principal or a.subject.src_ip, a.subject.src_cluster): a for a in found}
    assert len(by) == len(found) == 5, [(a.finding_type, a.subject) for a in found]
    assert by[(CALLERS[0], "us")].finding_type == "credential_replay"
    assert by[(CALLERS[1], "eu")].finding_type == "lateral_movement"
    exfil = by[(CALLERS[2], "eu")]
    assert exfil.finding_type == "exfiltration"
    assert exfil.observed > 10 * (exfil.expected or 0)
    burst = by[("203.0.113.9", "eu")]
    assert burst.finding_type == "auth_failure_burst" and burst.observed == 300
    # the prober is a scan, lateral movement and a denial burst: one fused finding
    probe = by[(CALLERS[3], "eu")]
    assert {probe.finding_type} <= {"scan", "lateral_movement", "denied_burst"}
    others = " ".join(c[0] for c in probe.contributions)
    assert "scan" in others or "lateral" in others
    for a in found:
        assert trained.thresholds.passes(a) and a.baseline and a.window_end == t + W


def test_global_surge_is_one_context_event_not_edge_findings(trained: Scorer) -> None:
    t = T0 + 62 * 3600
    base = next(normal_traffic(1 / 60, seed=6, start=t))
    surged = [ew(w.window_start, w.src_principal, w.dst_service, w.requests * 3,
                 bytes_out=w.bytes_out * 3) for w in base]
    found = trained.process(surged)
    assert [a.finding_type for a in found] == ["global_shift"]
    assert found[0].category == "context"


def test_flagged_windows_are_not_learned() -> None:
    scorer = Scorer(models=[NoveltyModel(warmup_windows=0)])
    for ws in normal_traffic(2):
        scorer.train(ws, T0 + 3600)
    scorer.finish_training()
    t = T0 + 3 * 3600
    attack = [ew(t, CALLERS[0], SERVICES[5], 3), ew(t, CALLERS[0], SERVICES[6], 3)]
    assert [a.finding_type for a in scorer.process(attack)] == ["lateral_movement"]
    # the same edges again: still unknown, because the first windows were not learned
    attack2 = [ew(t + W, CALLERS[0], SERVICES[5], 3), ew(t + W, CALLERS[0], SERVICES[6], 3)]
    assert [a.finding_type for a in scorer.process(attack2)] == ["lateral_movement"]


def test_allow_list_drops_known_good() -> None:
    scorer = Scorer(models=[NoveltyModel(warmup_windows=0)],
                    allow=[AllowRule(principal="*/sa/c0", dst_service="svc[56]")])
    for ws in normal_traffic(2):
        scorer.train(ws, T0 + 3600)
    scorer.finish_training()
    t = T0 + 3 * 3600
    assert scorer.process([ew(t, CALLERS[0], SERVICES[5], 3),
                           ew(t, CALLERS[0], SERVICES[6], 3)]) == []


def test_thresholds_per_type() -> None:
    th = Thresholds(min_risk=60, per_type={"new_edge": 95})
    scorer = Scorer(models=[NoveltyModel(warmup_windows=0)], thresholds=th)
    for ws in normal_traffic(2):
        scorer.train(ws, T0 + 3600)
    scorer.finish_training()
    # a single new edge is new_edge, which now needs risk 95
    assert scorer.process([ew(T0 + 4 * 3600, CALLERS[0], SERVICES[5], 3)]) == []


def test_calibrator_never_below_raw_and_tail_ratio() -> None:
    c = Calibrator()
    assert c.calibrate(1e-5) == 1e-5  # nothing learned yet: identity
    c.observe([1e-4] * 10 + [0.5], n_tests=1000)  # the model cries wolf: 10 in 1000 at 1e-4
    assert c.calibrate(1e-4) == pytest.approx(11 / 1001)
    assert c.calibrate(1e-6) > 1e-6  # beyond the tail the inflation carries on
    assert c.calibrate(0.2) == 0.2


def test_models_state_round_trip_scores_identically(trained: Scorer) -> None:
    clone = Scorer.from_state(trained.get_state(), learn_online=False)
    trained_copy = Scorer.from_state(trained.get_state(), learn_online=False)
    t = T0 + 70 * 3600
    windows = next(normal_traffic(1 / 60, seed=7, start=t)) + [
        ew(t, CALLERS[2], SERVICES[2], 20, bytes_out=20 * 2000 * 50)
    ]
    a = [(x.finding_type, round(x.p_value, 12)) for x in clone.process(windows)]
    b = [(x.finding_type, round(x.p_value, 12)) for x in trained_copy.process(windows)]
    assert a == b and a


def test_seasonal_learns_hour_profile() -> None:
    m = SeasonalModel()
    for ws in normal_traffic(48):
        m.learn(WindowBatch.of(ws))
    key = next(iter(m.edges_))
    e = m.edges_[key]
    night, _ = m.expected(e, 0, 0)  # hour 0 UTC: the trough of the rhythm
    day, _ = m.expected(e, 0, 12)
    assert day > 2 * night


def test_nb_tail_probabilities() -> None:
    assert nb_sf(0, 5, 0.1) == 1.0
    assert nb_sf(50, 5, 0.1) < 1e-9 < nb_sf(10, 5, 0.1)


def test_bursts_need_a_real_burst() -> None:
    m = BurstModel()
    for ws in normal_traffic(2):
        m.learn(WindowBatch.of(ws))
    t = T0 + 3 * 3600
    few = WindowBatch.of([ew(t, CALLERS[0], SERVICES[0], 5, denied=3, ok=2)])
    assert m.score(few) == []


def test_multivariate_refits_identically_from_state() -> None:
    m = MultivariateModel()
    for ws in normal_traffic(6):
        m.learn(WindowBatch.of(ws))
    m.fit()
    m2 = MultivariateModel(**m.get_params())
    m2.set_state(m.get_state())
    batch = WindowBatch.of([ew(T0, CALLERS[0], SERVICES[0], 40, errors=30, ok=10,
                               latency_p90_ms=5000.0)])
    s1 = [a.p_value for a in m.score(batch)]
    assert s1 and s1 == [a.p_value for a in m2.score(batch)]


def test_packed_forest_scores_exactly_like_scikit_learn() -> None:
    from sklearn.ensemble import IsolationForest

    from detector.baselines.multivariate import PackedForest

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 6))
    forest = IsolationForest(n_estimators=50, max_samples=256, random_state=0).fit(x)
    probe = np.vstack([x[:300], rng.normal(scale=4, size=(100, 6))])
    ours = PackedForest(forest).anomaly_score(probe)
    assert np.allclose(ours, -forest.score_samples(probe), rtol=0, atol=1e-12)
