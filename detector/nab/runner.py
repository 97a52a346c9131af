"""Run our streaming univariate model as a NAB detector, then score it with our NAB scorer.

Contract
--------
``detect(nab_dir, results_dir, detector, params, workers)`` replays every data file of the NAB
tree (``data/<subset>/<file>.csv``, the 58 files listed in ``labels/combined_windows.json``)
through a fresh ``UnivariateAnomalyModel(**params)`` -- the same defaults for every file, values
only, no labels -- and writes upstream's results layout
``<results_dir>/<detector>/<subset>/<detector>_<file>.csv`` with the columns upstream's detect
step writes: ``timestamp,value,anomaly_score,label`` (``label`` = 1 inside a labelled window, as
upstream; written for inspection only, never read by the model). The published results files
also carry ``S(t)_<profile>`` columns that upstream's score step appends; we do not.

``report(...)`` scores those results with ``detector.nab.scorer`` (optimised threshold per
profile, plus the standard profile at the model's fixed ``ALERT_THRESHOLD``), and formats a
table next to the published detectors of ``results/final_results.json``.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.baselines.univariate import ALERT_THRESHOLD, UnivariateAnomalyModel
from detector.nab import scorer as S

DETECTOR_NAME = "meshUnivariate"

# Published detectors shown next to ours: final_results.json key -> display name.
PUBLISHED = {
    "ARTime": "ARTime",
    "numenta": "Numenta HTM",
    "contextOSE": "CAD OSE",
    "earthgeckoSkyline": "earthgecko Skyline",
    "knncad": "KNN CAD",
    "relativeEntropy": "Relative Entropy",
    "randomCutForest": "Random Cut Forest",
    "twitterADVec": "Twitter ADVec",
    "windowedGaussian": "Windowed Gaussian",
    "null": "Null",
}
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def data_files(nab_dir: Path) -> list[str]:
    """Relative paths (``subset/file.csv``) of the labelled data files, sorted."""
    with (nab_dir / "labels" / "combined_windows.json").open() as f:
        return sorted(json.load(f))


def _detect_one(args: tuple[Path, Path, str, str, dict[str, Any]]) -> tuple[str, float]:
    nab_dir, results_dir, detector, rel, params = args
    started = time.perf_counter()
    cols = S.read_csv_columns(nab_dir / "data" / rel, ["timestamp", "value"])
    values = np.array([float(v) for v in cols["value"]])
    model = UnivariateAnomalyModel(**params)
    scores = model.score_series(values, cols["timestamp"])

    windows = S.load_windows(nab_dir / "labels" / "combined_windows.json")[rel]
    ts = S.parse_timestamps(cols["timestamp"])
    label = np.zeros(len(ts), dtype=np.int64)
    for a, b in windows:
        label[(ts >= a) & (ts <= b)] = 1

    out = S.results_path(results_dir, detector, rel)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for t, v, s, lab in zip(cols["timestamp"], cols["value"], scores, label, strict=True):
            w.writerow([t, v, repr(float(s)), int(lab)])
    return rel, time.perf_counter() - started


def detect(
    nab_dir: Path,
    results_dir: Path,
    detector: str = DETECTOR_NAME,
    params: Mapping[str, Any] | None = None,
    workers: int = 2,
    files: Sequence[str] | None = None,
) -> None:
    """Write NAB-layout results for every data file, or only ``files`` (``workers`` processes)."""
    files = sorted(files) if files is not None else data_files(nab_dir)
    # Longest files first so the two workers finish together.
    sizes = {rel: (nab_dir / "data" / rel).stat().st_size for rel in files}
    files.sort(key=lambda r: -sizes[r])
    jobs = [(nab_dir, results_dir, detector, rel, dict(params or {})) for rel in files]
    if workers <= 1:
        for job in jobs:
            _detect_one(job)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_detect_one, jobs):
            pass


@dataclass(frozen=True)
class Report:
    optimised: dict[str, S.ProfileResult]
    fixed_standard: S.ProfileResult
    subsets_optimised: dict[str, float]
    subsets_fixed: dict[str, float]
    published: dict[str, dict[str, float]]


def report(
    nab_dir: Path,
    results_dir: Path,
    detector: str = DETECTOR_NAME,
    files: Sequence[str] | None = None,
) -> Report:
    """Score a detector's results: optimised thresholds, and the fixed one on ``standard``.

    ``files`` restricts scoring to those data files (tests); the default is the whole corpus,
    the only setting comparable with the published numbers.
    """
    prepared = S.prepare_results(nab_dir, results_dir, detector, corpus_order=files)
    profiles = S.load_profiles(nab_dir / "config" / "profiles.json")
    optimised = S.evaluate(prepared, profiles)
    standard = profiles["standard"]
    fixed = S.evaluate(prepared, {"standard": standard}, {"standard": ALERT_THRESHOLD})["standard"]
    with (nab_dir / "results" / "final_results.json").open() as f:
        published = json.load(f)
    return Report(
        optimised=optimised,
        fixed_standard=fixed,
        subsets_optimised=S.subset_scores(prepared, standard, optimised["standard"].threshold),
        subsets_fixed=S.subset_scores(prepared, standard, ALERT_THRESHOLD),
        published=published,
    )


def _fmt(x: float) -> str:
    return "   n/a" if math.isnan(x) else f"{x:6.1f}"


def format_report(rep: Report, detector: str = DETECTOR_NAME) -> str:
    lines = [
        f"{'detector':<34}{'standard':>10}{'low FP':>10}{'low FN':>10}",
        "-" * 64,
    ]
    ours = [rep.optimised[p].score for p in PROFILES]
    lines.append(f"{detector + ' (optimised thr.)':<34}" + "".join(f"{x:10.1f}" for x in ours))
    lines.append(
        f"{detector + f' (fixed thr. {ALERT_THRESHOLD:g})':<34}"
        f"{rep.fixed_standard.score:10.1f}{'':>10}{'':>10}"
    )
    for key, name in PUBLISHED.items():
        if key in rep.published:
            vals = [rep.published[key].get(p, math.nan) for p in PROFILES]
            lines.append(f"{name + ' (published)':<34}" + "".join(f"{x:10.1f}" for x in vals))
    lines.append("")
    lines.append(
        "optimised thresholds: "
        + ", ".join(f"{p} {rep.optimised[p].threshold:.6g}" for p in PROFILES)
    )
    lines.append("")
    lines.append(f"{'standard profile by subset':<34}{'optimised':>10}{'fixed':>10}")
    for subset in rep.subsets_optimised:
        lines.append(
            f"{subset:<34}{_fmt(rep.subsets_optimised[subset]):>10}"
            f"{_fmt(rep.subsets_fixed[subset]):>10}"
        )
    lines.append("(subsets normalised with their own null/perfect scores; n/a: no windows)")
    return "\n".join(lines)


def run(
    nab_dir: Path,
    out_dir: Path,
    detector: str = DETECTOR_NAME,
    workers: int = 2,
    params: Mapping[str, Any] | None = None,
    skip_detect: bool = False,
) -> tuple[Report, float]:
    """Detect (unless ``skip_detect``) and score; returns the report and the elapsed seconds."""
    started = time.perf_counter()
    results_dir = out_dir / "results"
    if not skip_detect:
        detect(nab_dir, results_dir, detector, params, workers)
    rep = report(nab_dir, results_dir, detector)
    return rep, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    default_nab = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "nab"
    ap = argparse.ArgumentParser(
        prog="python -m detector.nab",
        description="Run the streaming univariate model over NAB and score it.",
    )
    ap.add_argument("--nab-dir", type=Path, default=default_nab, help="NAB tree (data, labels…)")
    ap.add_argument("--out-dir", type=Path, default=Path("build/nab"), help="results go here")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--detector", default=DETECTOR_NAME, help="name used for the results files")
    ap.add_argument("--score-only", action="store_true", help="score existing results")
    args = ap.parse_args(argv)
    if not (args.nab_dir / "labels" / "combined_windows.json").is_file():
        ap.error(f"not a NAB tree: {args.nab_dir}")
    rep, elapsed = run(
        args.nab_dir, args.out_dir, args.detector, args.workers, skip_detect=args.score_only
    )
    print(format_report(rep, args.detector))
    print(f"\n{elapsed:.1f} s ({args.workers} workers)")
    return 0
