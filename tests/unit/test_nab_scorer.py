"""NAB scorer: reproduces the published windowedGaussian numbers exactly; sigmoid weighting and
window edge cases on tiny synthetic series."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from detector.nab import scorer as S

STANDARD = S.CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text else 0


@pytest.fixture(scope="module")
def nab_dir(shared_dir: Path) -> Path:
    return shared_dir / "benchmarks" / "nab"


@pytest.fixture(scope="module")
def windowed_gaussian(nab_dir: Path) -> list[S.PreparedFile]:
    return S.prepare_results(nab_dir, nab_dir / "results", "windowedGaussian")


def test_reproduces_published_windowed_gaussian(
    nab_dir: Path, windowed_gaussian: list[S.PreparedFile]
) -> None:
    published = json.loads((nab_dir / "results" / "final_results.json").read_text())
    profiles = S.load_profiles(nab_dir / "config" / "profiles.json")
    results = S.evaluate(windowed_gaussian, profiles)
    assert set(results) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    for name, res in results.items():
        expected = published["windowedGaussian"][name]
        digits = _decimals(expected)
        assert round(res.score, digits) == round(expected, digits), name
        assert res.threshold == 1.0
    # The headline numbers of the README.
    assert round(results["standard"].score, 1) == 39.6
    assert round(results["reward_low_FP_rate"].score, 1) == 20.9
    assert round(results["reward_low_FN_rate"].score, 1) == 47.4


def test_per_file_rows_match_published_scores_csv(
    nab_dir: Path, windowed_gaussian: list[S.PreparedFile]
) -> None:
    path = nab_dir / "results" / "windowedGaussian" / "windowedGaussian_standard_scores.csv"
    with path.open() as f:
        rows = {r["File"]: r for r in csv.DictReader(f) if r["File"]}
    corpus = S.score_corpus(windowed_gaussian, STANDARD, 1.0)
    assert len(corpus.files) == len(rows) == 58
    for fs in corpus.files:
        row = rows[fs.name]
        # Upstream wrote these with Python 2's str(): 12 significant digits.
        assert f"{fs.score:.12g}" == f"{float(row['Score']):.12g}", fs.name
        assert (fs.tp, fs.tn, fs.fp, fs.fn) == tuple(int(row[k]) for k in ("TP", "TN", "FP", "FN"))


# --------------------------------------------------------------------------- synthetic


def test_scaled_sigmoid_landmarks() -> None:
    assert S.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert S.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert S.scaled_sigmoid(0.0) == 0.0
    assert S.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert S.scaled_sigmoid(3.0) == pytest.approx(2 / (1 + math.exp(15)) - 1)
    assert S.scaled_sigmoid(3.0001) == -1.0


def test_probationary_length_formula() -> None:
    assert S.probationary_length(100) == 15
    assert S.probationary_length(4032) == 604
    assert S.probationary_length(22695) == 750.0  # capped at 0.15 * 5000


def _ts(n: int) -> np.ndarray:
    return np.arange(n).astype("datetime64[m]").astype("datetime64[us]")


def _file(scores: list[float], windows: list[tuple[int, int]]) -> S.PreparedFile:
    ts = _ts(len(scores))
    return S.prepare_file("s/f.csv", ts, scores, [(ts[a], ts[b]) for a, b in windows])


def _score(scores: list[float], windows: list[tuple[int, int]], threshold: float = 0.5) -> float:
    return S.score_file(_file(scores, windows), STANDARD, threshold).score


N = 100  # rows 0..14 are probationary


def test_detection_at_window_start_is_worth_tp_weight() -> None:
    s = [0.0] * N
    s[40] = 1.0
    assert _score(s, [(40, 49)]) == pytest.approx(1.0)


def test_only_earliest_detection_in_window_counts_and_later_is_worth_less() -> None:
    early, late = [0.0] * N, [0.0] * N
    early[42] = early[45] = early[49] = 1.0
    late[49] = 1.0
    width = 10.0
    expected_early = S.scaled_sigmoid(-(49 - 42 + 1) / width) / S.MAX_TP
    expected_late = S.scaled_sigmoid(-1 / width) / S.MAX_TP
    assert _score(early, [(40, 49)]) == pytest.approx(expected_early)
    assert _score(late, [(40, 49)]) == pytest.approx(expected_late)
    assert 0 < expected_late < expected_early < 1


def test_missed_window_costs_fn_weight() -> None:
    assert _score([0.0] * N, [(40, 49), (70, 79)]) == -2.0


def test_false_positive_before_any_window_costs_full_fp_weight() -> None:
    s = [0.0] * N
    s[20] = 1.0
    assert _score(s, [(40, 49)]) == pytest.approx(-0.11 - 1.0)


def test_false_positive_after_window_decays_with_distance() -> None:
    near, far = [0.0] * N, [0.0] * N
    near[50] = near[40] = 1.0
    far[95] = far[40] = 1.0
    near_fp = _score(near, [(40, 49)]) - 1.0
    far_fp = _score(far, [(40, 49)]) - 1.0
    # One row after a 10-row window: relative position 1/9.
    assert near_fp == pytest.approx(0.11 * S.scaled_sigmoid(1 / 9))
    assert far_fp == pytest.approx(-0.11)  # beyond 3 window widths: full penalty
    assert far_fp < near_fp < 0


def test_probationary_rows_are_ignored() -> None:
    s = [0.0] * N
    s[5] = 1.0  # a false positive in the probationary period costs nothing
    assert _score(s, []) == 0.0
    f = _file(s, [])
    assert (f.window[:15] == S.PROBATIONARY).all() and (f.window[15:] == S.OUTSIDE).all()


def test_detection_means_score_at_least_threshold() -> None:
    s = [0.0] * N
    s[40] = 0.7
    assert _score(s, [(40, 49)], threshold=0.7) == pytest.approx(1.0)
    assert _score(s, [(40, 49)], threshold=0.70001) == -1.0
    assert _score(s, [(40, 49)], threshold=0.65) == pytest.approx(1.0)  # between values


def test_threshold_sweep_picks_best_and_ties_go_high() -> None:
    s = [0.0] * N
    s[40] = 0.9  # a true positive
    s[60] = s[80] = 0.5  # two far false positives
    f = _file(s, [(40, 44)])
    sw = S.sweep([f], STANDARD)
    assert list(sw.thresholds) == [1.1, 0.9, 0.5, 0.0]
    assert list(sw.tp) == [0, 1, 1, 5] and list(sw.fp) == [0, 0, 2, 80]
    threshold, best = S.optimize_threshold([f], STANDARD)
    assert threshold == 0.9 and best == pytest.approx(1.0)
    # Equal scores at two thresholds (the second step only adds in-window rows): higher wins.
    s2 = [0.0] * N
    s2[40], s2[41] = 0.9, 0.8
    threshold2, _ = S.optimize_threshold([_file(s2, [(40, 44)])], STANDARD)
    assert threshold2 == 0.9


def test_normalisation_null_is_zero_and_perfect_is_hundred() -> None:
    windows = [(40, 49), (70, 79)]
    perfect = [0.0] * N
    perfect[40] = perfect[70] = 1.0
    files = [_file(perfect, windows)]
    res = S.evaluate(files, {"standard": STANDARD})["standard"]
    assert res.null == -2.0 and res.perfect == 2.0
    assert res.score == pytest.approx(100.0)
    null_files = [f.with_scores(np.full(N, 0.5)) for f in files]
    assert S.evaluate(null_files, {"standard": STANDARD})["standard"].score == 0.0


def test_rejects_windows_not_on_timestamps_and_nan_scores() -> None:
    ts = _ts(N)
    with pytest.raises(ValueError):
        S.prepare_file("x", ts, [0.0] * N, [(ts[0] + np.timedelta64(1, "s"), ts[5])])
    with pytest.raises(ValueError):
        S.prepare_file("x", ts, [math.nan] * N, [])
