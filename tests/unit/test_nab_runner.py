"""NAB runner on three small NAB files: upstream's results layout and columns, one score in
[0, 1] per data row, labels from the windows, byte-identical results on a second run, and a
report that scores them."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from detector.nab import runner
from detector.nab import scorer as S

# Three of the shortest labelled files (~1.1k-1.5k rows each), from three subsets.
FILES = [
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
    "realAdExchange/exchange-3_cpc_results.csv",
    "realTraffic/speed_7578.csv",
]


@pytest.fixture(scope="module")
def nab_dir(shared_dir: Path) -> Path:
    return shared_dir / "benchmarks" / "nab"


@pytest.fixture(scope="module")
def results_dir(nab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nab") / "results"
    runner.detect(nab_dir, out, workers=1, files=FILES)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_results_layout_and_columns(nab_dir: Path, results_dir: Path) -> None:
    name = runner.DETECTOR_NAME
    written = sorted(p.relative_to(results_dir).as_posix() for p in results_dir.rglob("*.csv"))
    expected = sorted(f"{name}/{rel.split('/')[0]}/{name}_{rel.split('/')[1]}" for rel in FILES)
    assert written == expected
    windows = S.load_windows(nab_dir / "labels" / "combined_windows.json")
    for rel in FILES:
        data = _rows(nab_dir / "data" / rel)
        rows = _rows(S.results_path(results_dir, name, rel))
        assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
        assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in data]
        assert [r["value"] for r in rows] == [r["value"] for r in data]
        scores = [float(r["anomaly_score"]) for r in rows]
        assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)
        assert max(scores) > 0.0  # the model says something on real data
        # label = 1 exactly on the rows inside a labelled window.
        ts = S.parse_timestamps(r["timestamp"] for r in rows)
        inside = [any(a <= t <= b for a, b in windows[rel]) for t in ts]
        assert any(inside)
        assert [int(r["label"]) for r in rows] == [int(x) for x in inside]


def test_runs_are_deterministic(nab_dir: Path, results_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "results"
    runner.detect(nab_dir, again, workers=1, files=FILES)
    for rel in FILES:
        first = S.results_path(results_dir, runner.DETECTOR_NAME, rel).read_bytes()
        second = S.results_path(again, runner.DETECTOR_NAME, rel).read_bytes()
        assert first == second


def test_report_scores_the_results(nab_dir: Path, results_dir: Path) -> None:
    rep = runner.report(nab_dir, results_dir, files=FILES)
    assert set(rep.optimised) == set(runner.PROFILES)
    for res in [*rep.optimised.values(), rep.fixed_standard]:
        assert math.isfinite(res.score) and res.score <= 100.0
    # The optimised threshold is at least as good as the fixed one on the same profile.
    assert rep.optimised["standard"].score >= rep.fixed_standard.score
    text = runner.format_report(rep)
    assert runner.DETECTOR_NAME in text and "Numenta HTM" in text
