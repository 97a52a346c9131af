"""Streaming univariate model: flags a spike and a level shift, stays quiet on a clean seasonal
series, scores in [0, 1], and its state round-trips through JSON with identical later scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.baselines.univariate import ALERT_THRESHOLD, UnivariateAnomalyModel

N = 2000


def _seasonal(seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    # Daily-like cycle of 288 steps (5-minute samples) plus noise.
    return 100 + 20 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 2, N)


def test_clean_seasonal_series_stays_quiet() -> None:
    scores = UnivariateAnomalyModel().score_series(_seasonal())
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores.max() < ALERT_THRESHOLD


def test_flags_a_spike_at_once() -> None:
    x = _seasonal()
    x[1500] += 40
    scores = UnivariateAnomalyModel().score_series(x)
    assert scores[1500] >= ALERT_THRESHOLD
    assert scores[:1500].max() < ALERT_THRESHOLD


@pytest.mark.parametrize("shift", [-50.0, 50.0])
def test_flags_a_level_shift_quickly(shift: float) -> None:
    x = _seasonal()
    # Larger than the cycle's peak-to-peak range (40): the model has no seasonal term yet, so a
    # shift that stays inside the seasonal range is not seen at once (-30 at t=1500, where the
    # cycle peaks, is flagged only ~116 steps later by the slow level statistic).
    x[1500:] += shift
    scores = UnivariateAnomalyModel().score_series(x)
    assert scores[1500:1510].max() >= ALERT_THRESHOLD
    assert scores[:1500].max() < ALERT_THRESHOLD


def test_one_alert_per_incident() -> None:
    x = _seasonal()
    x[1500:1520] += 60  # one sustained incident
    scores = UnivariateAnomalyModel().score_series(x)
    assert int((scores[1500:1600] >= ALERT_THRESHOLD).sum()) == 1


def test_warmup_and_non_finite_values() -> None:
    model = UnivariateAnomalyModel(warmup=50)
    assert (model.score_series(_seasonal()[:50]) == 0).all()
    assert model.update(float("nan")) == 0.0
    assert model.n_seen_ == 50


def test_state_round_trips_through_json() -> None:
    x = _seasonal()
    x[1700] += 50
    model = UnivariateAnomalyModel()
    model.score_series(x[:1200], None)
    state = json.loads(json.dumps(model.get_state()))
    restored = UnivariateAnomalyModel()
    restored.set_state(state)
    assert restored.get_state() == model.get_state()
    a = model.score_series(x[1200:])
    b = restored.score_series(x[1200:])
    assert np.array_equal(a, b)
    assert a.max() >= ALERT_THRESHOLD  # the spike at 1700


def test_state_from_other_hyper_parameters_is_rejected() -> None:
    state = UnivariateAnomalyModel(history=100).get_state()
    with pytest.raises(ValueError):
        UnivariateAnomalyModel().set_state(state)
    assert UnivariateAnomalyModel(history=100).get_params()["history"] == 100
