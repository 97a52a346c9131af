"""The array (per window time) implementations of the scoring hot path against their
straightforward per-window forms, on the same windows: same anomalies, same learned state.

* ``SeasonalModel`` against ``reference_seasonal.ReferenceSeasonalModel`` (the per-edge loop it
  replaced), over traffic that exercises every branch: surges, drops, error bursts, sustained
  exfiltration (the recent-z accumulation), latency, a mesh-wide shift, busy edges going
  silent, new edges, overflow windows, empty windows, the same edge twice in one window time
  and a state round trip half way.
* ``feature_matrix`` against a per-window loop.
* ``PackedForest`` against scikit-learn (also in ``test_baselines``), here with the features and
  sizes the detector uses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pytest

from detector.baselines.features import FEATURES, WindowBatch, feature_matrix
from detector.baselines.seasonal import SeasonalModel
from detector.flows import OVERFLOW, EdgeWindow
from tests.unit.reference_seasonal import ReferenceSeasonalModel

W = 60.0
T0 = 1_700_000_000 - 1_700_000_000 % 86400  # midnight UTC
CALLERS = [f"spiffe://cluster.local/ns/shop/sa/c{i}" for i in range(5)]
SERVICES = [f"svc{i}" for i in range(6)]


def ew(t: float, caller: str, svc: str, n: int, **kw: object) -> EdgeWindow:
    base: dict[str, object] = dict(
        window_start=t, window_end=t + W, src_principal=caller, src_cluster="eu",
        dst_namespace="shop", dst_service=svc, dst_cluster="eu", requests=n,
        connections=0, api_calls=0, ok=n, errors=0, denied=0, unauthenticated=0,
        bytes_in=200 * n, bytes_out=2000 * n, latency_p50_ms=10.0, latency_p90_ms=20.0,
        latency_p99_ms=40.0, routes={"GET /items/{id}": n},
    )
    base.update(kw)
    return EdgeWindow(**base)  # type: ignore[arg-type]


def traffic(hours: float, seed: int) -> Iterator[list[EdgeWindow]]:
    """A daily rhythm with noise on a dozen edges, and every kind of trouble now and then."""
    rng = np.random.default_rng(seed)
    n_windows = int(hours * 3600 / W)
    for k in range(n_windows):
        t = T0 + k * W
        hour = (t % 86400) / 3600
        level = 30 * (1.2 + math.sin(2 * math.pi * (hour - 6) / 24))
        late = k > n_windows // 2  # the second half carries the trouble
        shift = 3.0 if late and k % 97 == 0 else 1.0  # mesh-wide surges
        out = []
        for i, c in enumerate(CALLERS):
            for j, svc in enumerate((SERVICES[i % 6], SERVICES[(i + 1) % 6])):
                if late and i == 1 and j == 0 and k % 41 < 2:
                    continue  # a busy edge goes silent for two windows
                n = int(rng.poisson(level * shift))
                kw: dict[str, object] = {
                    "bytes_out": int(2000 * n * rng.lognormal(0, 0.3)),
                    "latency_p90_ms": float(rng.lognormal(3, 0.2)),
                }
                if rng.random() < 0.05:
                    kw["latency_p90_ms"] = None
                if late and i == 2 and j == 0 and k % 53 < 4:
                    n *= 6  # surge
                if late and i == 3 and j == 1 and k % 67 == 0:
                    n = 1  # drop
                if late and i == 0 and j == 1 and k % 59 < 3:
                    kw["errors"] = n  # error burst
                if late and i == 4 and j == 0 and k % 71 < 6:
                    kw["bytes_out"] = 2000 * max(n, 1) * 15  # sustained exfiltration
                if late and i == 0 and j == 0 and k % 83 == 0:
                    kw["latency_p90_ms"] = 900.0
                out.append(ew(t, c, svc, n, **kw))
        if k % 5 == 0:
            out.append(ew(t, OVERFLOW, SERVICES[0], 7))
        if k % 13 == 0:
            out.append(ew(t, CALLERS[0], SERVICES[0], 0, ok=0, latency_p90_ms=None))
        if k > n_windows // 3:
            out.append(ew(t, CALLERS[4], SERVICES[5], int(rng.poisson(20))))  # a new edge
        if k % 211 == 0:
            out.append(ew(t, CALLERS[2], SERVICES[3], 5))  # sometimes twice in one window
            out.append(ew(t, CALLERS[2], SERVICES[3], 9))
        yield out


def _run(model: object, batch: WindowBatch) -> list[object]:
    batch.traffic_scale = model.traffic_scale(batch)  # type: ignore[attr-defined]
    anomalies: list[object] = model.score(batch)  # type: ignore[attr-defined]
    model.learn(batch)  # type: ignore[attr-defined]
    return anomalies


def _state(model: object) -> str:
    return json.dumps(model.get_state(), sort_keys=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "params",
    [{}, {"min_history_windows": 10, "accumulate_windows": 3, "global_min_edges": 4}],
)
def test_seasonal_arrays_equal_the_per_edge_loop(params: dict[str, object]) -> None:
    new, ref = SeasonalModel(**params), ReferenceSeasonalModel(**params)  # type: ignore[arg-type]
    kinds: set[str] = set()
    windows = list(traffic(40, seed=5))
    for k, ws in enumerate(windows):
        if k == len(windows) * 3 // 4:  # a round trip through JSON, as artifacts do
            state = json.loads(_state(ref))
            assert json.loads(_state(new)) == state
            new, ref = SeasonalModel(**params), ReferenceSeasonalModel(**params)  # type: ignore[arg-type]
            new.set_state(state)
            ref.set_state(state)
        # each model gets its own batch: nothing computed by one may leak into the other
        got = _run(new, WindowBatch.of(ws))
        want = _run(ref, WindowBatch.of(ws))
        assert got == want, f"window {k}"
        kinds.update(f"{a.finding_type}/{a.feature}" for a in got)  # type: ignore[attr-defined]
    assert _state(new) == _state(ref)
    # the traffic did reach every branch
    assert {
        "global_shift/requests_ratio",
        "rate_surge/requests",
        "traffic_drop/requests",
        "availability/errors",
        "exfiltration/bytes_out",
        "latency/latency_p90_ms",
    } <= kinds, kinds


def test_seasonal_scoring_again_after_learning_sees_the_new_state() -> None:
    """Per-batch results are remembered for one batch, and forgotten once the model learns."""
    new, ref = SeasonalModel(), ReferenceSeasonalModel()
    windows = list(traffic(6, seed=2))
    for ws in windows[:-1]:
        _run(new, WindowBatch.of(ws))
        _run(ref, WindowBatch.of(ws))
    batch = WindowBatch.of(windows[-1])
    first = new.global_factor(batch)
    new.learn(batch)
    ref.learn(WindowBatch.of(windows[-1]))
    assert new.global_factor(batch) == ref.global_factor(WindowBatch.of(windows[-1])) != first


def _feature_rows(windows: list[EdgeWindow], hour: int) -> np.ndarray:
    rows = []
    ang = 2 * math.pi * hour / 24
    for w in windows:
        total = max(1, w.total)
        rows.append([
            math.log1p(w.total), w.errors / total, w.denied / total, w.unauthenticated / total,
            math.log1p(w.bytes_out / total), math.log1p(w.bytes_in / total),
            math.log1p(w.latency_p50_ms or 0.0), math.log1p(w.latency_p90_ms or 0.0),
            len(w.routes), len(w.src_ips), math.sin(ang), math.cos(ang),
        ])
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES))


def test_feature_matrix_equals_the_per_window_formulas() -> None:
    for k, ws in enumerate(traffic(3, seed=9)):
        ws = ws + [ew(T0, CALLERS[0], SERVICES[1], 3, errors=2, denied=1, unauthenticated=1,
                      latency_p50_ms=None, src_ips=("10.0.0.1", "10.0.0.2"))]
        hour = k % 24
        assert np.array_equal(feature_matrix(ws, hour), _feature_rows(ws, hour))
    assert feature_matrix([], 3).shape == (0, len(FEATURES))


def test_subset_batch_keeps_rows_of_what_was_computed() -> None:
    ws = next(traffic(1, seed=4))
    batch = WindowBatch.of(ws)
    _ = batch.matrix, batch.keys, batch.totals
    sub = batch.subset([3, 0, 5])
    fresh = WindowBatch.of([ws[3], ws[0], ws[5]])
    assert np.array_equal(sub.matrix, fresh.matrix)
    assert sub.keys == fresh.keys
    assert np.array_equal(sub.totals, fresh.totals)
    assert np.array_equal(sub.bytes_out, fresh.bytes_out)  # not computed before: computed now


def test_packed_forest_equals_scikit_learn_on_detector_features() -> None:
    from sklearn.ensemble import IsolationForest

    from detector.baselines.multivariate import PackedForest

    windows = [w for ws in traffic(8, seed=3) for w in ws]
    x = feature_matrix(windows, 10)
    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(x[::2])
    packed = PackedForest(forest)
    probe = np.vstack([x[1::2], x[:50] * 3.0])
    assert np.allclose(
        packed.anomaly_score(probe), -forest.score_samples(probe), rtol=0, atol=1e-12
    )
    assert packed.anomaly_score(probe[:0]).shape == (0,)


def test_compiled_forest_walk_equals_the_numpy_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.ensemble import IsolationForest

    from detector import fastpath
    from detector.baselines.multivariate import PackedForest

    if fastpath.forest_leaf_depths is None:
        pytest.skip("detector._fastpath is not built")
    windows = [w for ws in traffic(8, seed=5) for w in ws]
    x = feature_matrix(windows, 10)
    packed = PackedForest(IsolationForest(n_estimators=50, random_state=1).fit(x[::3]))
    probe = np.vstack([x, x[:40] * 7.0, np.full((3, x.shape[1]), np.nan)])
    probe[5, 2] = np.nan
    compiled = packed.anomaly_score(probe)
    monkeypatch.setattr(fastpath, "forest_leaf_depths", None)
    assert np.array_equal(compiled, packed.anomaly_score(probe))  # bit for bit


def test_multivariate_reservoir_equals_one_draw_per_row() -> None:
    """Reservoir sampling with all of a batch's draws at once keeps the rows one draw per row
    (the plain algorithm, below) keeps."""
    from detector.baselines.multivariate import MultivariateModel

    m = MultivariateModel(reservoir_size=300, min_requests=5)
    rng = np.random.default_rng(m.random_state)
    rows: list[list[float]] = []
    seen = 0
    for ws in traffic(2, seed=6):
        batch = WindowBatch.of(ws)
        m.learn(batch)
        for i, w in enumerate(ws):
            if w.total < 5 or w.src_principal == OVERFLOW:
                continue
            seen += 1
            if len(rows) < 300:
                rows.append(batch.matrix[i].tolist())
            else:
                j = int(rng.integers(0, seen))
                if j < 300:
                    rows[j] = batch.matrix[i].tolist()
    assert seen > 3 * 300  # the reservoir filled and was sampled into
    assert m.seen_ == seen and m.rows_ == rows


def _warm_novelty() -> tuple[object, float]:
    from detector.baselines.novelty import NoveltyModel

    m = NoveltyModel(warmup_windows=5)
    t = T0
    for k in range(20):
        t = T0 + k * W
        m.learn(WindowBatch.of([ew(t, c, SERVICES[i % 3], 10) for i, c in enumerate(CALLERS)]))
    return m, t + W


def test_novelty_known_routes_say_nothing_new_routes_do() -> None:
    m, t = _warm_novelty()
    quiet = WindowBatch.of([ew(t, c, SERVICES[i % 3], 10) for i, c in enumerate(CALLERS)])
    assert m.score(quiet) == []  # type: ignore[attr-defined]
    routes = {"GET /items/{id}": 5, "DELETE /items/{id}": 3, "GET /{other}": 2}
    probe = WindowBatch.of([ew(t, CALLERS[0], SERVICES[0], 10, routes=routes)])
    (a,) = m.score(probe)  # type: ignore[attr-defined]
    assert a.finding_type == "new_route" and a.evidence["new_routes"] == ["DELETE /items/{id}"]
    assert a.subject.dst_service == SERVICES[0]
    # learning counts the window with a new route towards the base rate, once
    before = m.new_route_events_  # type: ignore[attr-defined]
    m.learn(probe)  # type: ignore[attr-defined]
    assert m.new_route_events_ == before + 1  # type: ignore[attr-defined]
    m.learn(WindowBatch.of([ew(t + W, CALLERS[0], SERVICES[0], 10, routes=routes)]))  # type: ignore[attr-defined]
    assert m.new_route_events_ == before + 1  # type: ignore[attr-defined]


def test_novelty_rare_edge_after_a_long_gap() -> None:
    from detector.baselines.novelty import NoveltyModel

    m = NoveltyModel(warmup_windows=5, rare_windows=3, rare_gap_s=3600.0)
    for k in range(10):
        ws = [ew(T0 + k * W, c, SERVICES[i % 3], 10) for i, c in enumerate(CALLERS)]
        if k == 2:
            ws.append(ew(T0 + k * W, CALLERS[0], SERVICES[5], 4))  # seen once, early
        m.learn(WindowBatch.of(ws))
    later = T0 + 2 * 3600
    rare = m.score(WindowBatch.of([ew(later, CALLERS[0], SERVICES[5], 4)]))
    assert [a.finding_type for a in rare] == ["rare_edge"]
    assert m.score(WindowBatch.of([ew(later, CALLERS[0], SERVICES[0], 10)])) == []


def test_bursts_scan_needs_many_distinct_destinations() -> None:
    from detector.baselines.bursts import BurstModel

    m = BurstModel()
    for k in range(30):
        t = T0 + k * W
        m.learn(WindowBatch.of([ew(t, c, SERVICES[i % 3], 10) for i, c in enumerate(CALLERS)]))
    t = T0 + 31 * W
    wide = [ew(t, CALLERS[1], f"probe{j}", 2, denied=2, ok=0) for j in range(8)]
    narrow = [ew(t, CALLERS[2], SERVICES[2], 10)]
    found = m.score(WindowBatch.of(wide + narrow))
    scans = [a for a in found if a.finding_type == "scan"]
    assert [a.subject.principal for a in scans] == [CALLERS[1]]
    assert scans[0].observed == 8.0
    # four new destinations are below max(2 x 1, 1 + 4): not a scan
    few = [ew(t, CALLERS[1], f"probe{j}", 2, denied=2, ok=0) for j in range(4)]
    assert not [a for a in m.score(WindowBatch.of(few)) if a.finding_type == "scan"]


def test_multivariate_anomaly_expects_the_median_training_score() -> None:
    from detector.baselines.multivariate import MultivariateModel

    m = MultivariateModel()
    for ws in traffic(4, seed=8):
        m.learn(WindowBatch.of(ws))
    m.fit()
    t = T0 + 5 * 3600
    odd = ew(t, CALLERS[0], SERVICES[0], 400, errors=300, ok=100, latency_p90_ms=9000.0)
    found = m.score(WindowBatch.of([odd]))
    assert found and found[0].expected == round(float(np.median(m.train_scores_)), 4)
