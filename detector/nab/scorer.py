"""NAB scorer: a faithful, vectorised reimplementation of numenta/NAB v1.1 scoring.

Contract
--------
Given, per data file, the timestamps, the detector's ``anomaly_score`` per row and the labelled
anomaly windows (``labels/combined_windows.json``), and a cost profile
(``config/profiles.json``), this module reproduces upstream's numbers bit for bit:

* ``prepare_file`` is upstream ``Sweeper.calcSweepScore``: the first
  ``min(floor(0.15 * n), 0.15 * 5000)`` rows are probationary (not scored); a row inside a window
  ``[a, b]`` (width ``w = b - a + 1``) sits at ``p = -(b - i + 1) / w`` and is worth
  ``scaled_sigmoid(p) * tpWeight / scaled_sigmoid(-1)``; a row outside every window is worth
  ``scaled_sigmoid(|i - b_prev| / (w_prev - 1)) * fpWeight`` after a window, ``-fpWeight``
  before the first one.
* ``sweep`` is upstream ``Sweeper.calcScoreByThreshold``: rows sorted once by score (descending,
  stable), every distinct score value is a candidate threshold (plus the initial 1.1 = "nothing
  detected"); a detection is ``anomaly_score >= threshold``; the score at a threshold is the sum
  of the false-positive weights of the detected rows outside windows, plus per window the weight
  of its earliest detected row, or ``-fnWeight`` if none was detected. Sums are accumulated in
  upstream's order so floating point results are identical.
* ``optimize_threshold`` is upstream ``optimizeThreshold``: the sweep over the whole corpus
  (files concatenated in corpus order), best score, ties to the higher threshold.
* ``score_file``/``score_corpus`` are upstream ``scoreDataSet``/``scoreCorpus`` at one
  threshold; ``normalise`` is upstream ``Runner.normalize``:
  ``100 * (raw - null) / (perfect - null)`` with ``perfect = n_windows * tpWeight`` and ``null``
  the raw score of the null detector (constant 0.5) at its own optimised threshold. Upstream reads
  both raw totals back from CSV files written by Python 2, i.e. rounded to 12 significant digits;
  ``normalise`` does the same by default (``csv_digits=12``), which the published numbers need.

Everything is numpy except the per-row sigmoid, which uses ``math.exp`` like upstream so that
the weights (and hence the published numbers) match to the last bit. The corpus sweep of NAB's
~365k rows takes well under a second per profile.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

PROBATION_PERCENT: Final = 0.15
# Upstream caps the probationary period at ``probationPercent * 5000`` (= 750 rows at 15 %).
PROBATION_CAP_ROWS: Final = 5000
# Upstream's sweep starts above every score so its first row means "nothing detected".
START_THRESHOLD: Final = 1.1
# What the null detector emits for every row (upstream nab/detectors/null).
NULL_SCORE: Final = 0.5
# Window codes in ``PreparedFile.window``.
PROBATIONARY: Final = -2
OUTSIDE: Final = -1

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class CostProfile:
    """One application profile of ``config/profiles.json``."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


@dataclass(frozen=True)
class PreparedFile:
    """One data file after ``calcSweepScore``; profile-independent.

    ``window[i]`` is the index (in this file) of the window row ``i`` lies in, ``OUTSIDE`` or
    ``PROBATIONARY``; ``unweighted[i]`` is the row's scaled sigmoid before profile weights.
    """

    name: str
    scores: FloatArray
    window: IntArray
    unweighted: FloatArray
    n_windows: int

    def with_scores(self, scores: FloatArray) -> PreparedFile:
        """The same file and windows with other anomaly scores (e.g. the null detector's)."""
        if scores.shape != self.scores.shape:
            raise ValueError("scores must have one value per row")
        return PreparedFile(self.name, scores, self.window, self.unweighted, self.n_windows)


@dataclass(frozen=True)
class Sweep:
    """Scores at every candidate threshold (upstream's list of ``ThresholdScore``)."""

    thresholds: FloatArray  # descending
    scores: FloatArray
    tp: IntArray
    tn: IntArray
    fp: IntArray
    fn: IntArray


@dataclass(frozen=True)
class FileScore:
    name: str
    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


@dataclass(frozen=True)
class CorpusScore:
    profile: str
    threshold: float
    raw: float
    files: tuple[FileScore, ...]


# --------------------------------------------------------------------------- weighting


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def scaled_sigmoid(relative_position: float) -> float:
    """Upstream ``scaledSigmoid``: 0.98661 at -1 (window start), 0 at 0, -1 beyond 3."""
    if relative_position > 3.0:
        return -1.0
    return 2 * sigmoid(-5 * relative_position) - 1.0


MAX_TP: Final = scaled_sigmoid(-1.0)


def probationary_length(n_rows: int, probation_percent: float = PROBATION_PERCENT) -> float:
    """Rows ``i < probationary_length(n)`` are not scored (upstream ``_getProbationaryLength``)."""
    return min(math.floor(probation_percent * n_rows), probation_percent * PROBATION_CAP_ROWS)


# --------------------------------------------------------------------------- preparation


def parse_timestamps(values: Iterable[str]) -> NDArray[np.datetime64]:
    """NAB timestamps (``2014-04-01 00:00:00[.000000]``) as ``datetime64[us]``."""
    return np.array([v.strip().replace(" ", "T") for v in values], dtype="datetime64[us]")


def prepare_file(
    name: str,
    timestamps: NDArray[np.datetime64],
    scores: Sequence[float] | FloatArray,
    windows: Sequence[tuple[np.datetime64, np.datetime64]],
    probation_percent: float = PROBATION_PERCENT,
) -> PreparedFile:
    """Window membership and unweighted sweep value of every row (upstream ``calcSweepScore``).

    Windows must be sorted, non-overlapping, and start and end on timestamps of the file
    (upstream's labeler guarantees this for NAB; anything else is rejected here rather than
    silently mis-scored).
    """
    score_arr = np.asarray(scores, dtype=np.float64)
    n = len(timestamps)
    if score_arr.shape != (n,):
        raise ValueError(f"{name}: {score_arr.shape[0]} scores for {n} timestamps")
    if np.isnan(score_arr).any():
        raise ValueError(f"{name}: NaN anomaly scores cannot be ranked")

    window = np.full(n, OUTSIDE, dtype=np.int64)
    unweighted = np.empty(n, dtype=np.float64)
    bounds: list[tuple[int, int]] = []
    prev_end = -1
    for k, (start, end) in enumerate(windows):
        starts = np.flatnonzero(timestamps == start)
        ends = np.flatnonzero(timestamps == end)
        if len(starts) == 0 or len(ends) == 0:
            raise ValueError(f"{name}: window {k} limits are not timestamps of the file")
        a, b = int(starts[0]), int(ends[0])  # upstream uses list.index: first occurrence
        if a > b or a <= prev_end:
            raise ValueError(f"{name}: windows must be sorted and disjoint")
        bounds.append((a, b))
        prev_end = b

    cursor = 0
    prev: tuple[int, float] | None = None  # (right index, width) of the previous window
    for k, (a, b) in enumerate([*bounds, (n, n - 1)]):
        # Rows before this window (after the previous one): false-positive weights.
        for i in range(cursor, a):
            if prev is None:
                # No preceding window: as if infinitely far from one.
                unweighted[i] = -1.0
            elif prev[1] <= 1:
                # Upstream divides by zero for a one-row window; treat as far away.
                unweighted[i] = -1.0
            else:
                unweighted[i] = scaled_sigmoid(abs(prev[0] - i) / float(prev[1] - 1))
        if a >= n:
            break
        width = float(b - a + 1)
        for i in range(a, b + 1):
            unweighted[i] = scaled_sigmoid(-(b - i + 1) / width)
        window[a : b + 1] = k
        prev = (b, width)
        cursor = b + 1

    prob = probationary_length(n, probation_percent)
    window[np.arange(n) < prob] = PROBATIONARY
    return PreparedFile(name, score_arr, window, unweighted, len(bounds))


def weighted(file: PreparedFile, profile: CostProfile) -> FloatArray:
    """Per-row sweep score under ``profile`` (upstream ``AnomalyPoint.sweepScore``)."""
    inside = file.window >= 0
    # Same operation order as upstream: (u * tpWeight) / maxTP, u * fpWeight.
    return np.where(
        inside,
        file.unweighted * profile.tp_weight / MAX_TP,
        file.unweighted * profile.fp_weight,
    )


# --------------------------------------------------------------------------- sweeping


def sweep(files: Sequence[PreparedFile], profile: CostProfile) -> Sweep:
    """Score at every distinct threshold over ``files`` (upstream ``calcScoreByThreshold``)."""
    scores_parts: list[FloatArray] = []
    window_parts: list[IntArray] = []
    value_parts: list[FloatArray] = []
    offset = 0
    for f in files:
        keep = f.window != PROBATIONARY
        scores_parts.append(f.scores[keep])
        w = f.window[keep]
        # Global window ids so windows of different files stay distinct.
        window_parts.append(np.where(w >= 0, w + offset, OUTSIDE))
        value_parts.append(weighted(f, profile)[keep])
        offset += f.n_windows
    scores = np.concatenate(scores_parts) if scores_parts else np.empty(0)
    win = np.concatenate(window_parts) if window_parts else np.empty(0, dtype=np.int64)
    values = np.concatenate(value_parts) if value_parts else np.empty(0)

    # One stable sort, highest score first (Python's sorted(reverse=True) keeps ties in order).
    order = np.argsort(-scores, kind="stable")
    s, w, v = scores[order], win[order], values[order]
    n = len(s)

    # Row g of the result is the state after every point with score >= thresholds[g].
    if n == 0:
        ends = np.empty(0, dtype=np.int64)
    else:
        ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    thresholds = s[ends]
    if n == 0 or s[0] != START_THRESHOLD:
        thresholds = np.concatenate(([START_THRESHOLD], thresholds))
        ends = np.concatenate(([-1], ends))

    is_fp = w == OUTSIDE
    # np.cumsum accumulates sequentially, like upstream's scoreParts["fp"] += ...
    fp_cum = np.concatenate(([0.0], np.cumsum(np.where(is_fp, v, 0.0))))
    fp_count = np.concatenate(([0], np.cumsum(is_fp)))
    tp_count = np.concatenate(([0], np.cumsum(~is_fp)))
    fp_at = fp_cum[ends + 1]
    n_fp_total = int(is_fp.sum())
    n_tp_total = n - n_fp_total

    # Window parts in upstream's dict order: order of first appearance in the sorted list.
    in_window = np.flatnonzero(~is_fp)
    ids_sorted = w[in_window]
    uniq, first = np.unique(ids_sorted, return_index=True)
    total = fp_at.copy()
    for k in uniq[np.argsort(first, kind="stable")]:
        pos = in_window[ids_sorted == k]  # positions in the sorted list, increasing
        best = np.maximum.accumulate(v[pos])
        # Number of this window's points already detected at each threshold row.
        seen = np.searchsorted(pos, ends, side="right")
        part = np.where(seen > 0, best[np.maximum(seen - 1, 0)], -profile.fn_weight)
        part = np.maximum(part, -profile.fn_weight)
        total = total + part  # sequential, in dict order, like sum(scoreParts.values())

    tp = tp_count[ends + 1]
    fp = fp_count[ends + 1]
    return Sweep(
        thresholds=thresholds.astype(np.float64),
        scores=total,
        tp=tp.astype(np.int64),
        tn=(n_fp_total - fp).astype(np.int64),
        fp=fp.astype(np.int64),
        fn=(n_tp_total - tp).astype(np.int64),
    )


def optimize_threshold(files: Sequence[PreparedFile], profile: CostProfile) -> tuple[float, float]:
    """(threshold, raw score) maximising the corpus score; ties go to the higher threshold."""
    sw = sweep(files, profile)
    best = int(np.argmax(sw.scores))  # first maximum = highest threshold, as upstream's sort
    return float(sw.thresholds[best]), float(sw.scores[best])


def score_file(file: PreparedFile, profile: CostProfile, threshold: float) -> FileScore:
    """Score one file at ``threshold`` (upstream ``Sweeper.scoreDataSet``'s matching row)."""
    sw = sweep([file], profile)
    exact = np.flatnonzero(sw.thresholds == threshold)
    if len(exact):
        g = int(exact[0])
    else:
        below = np.flatnonzero(sw.thresholds < threshold)
        # The row just above the threshold: same detections as ``score >= threshold``. If every
        # score of the file is above the threshold, all rows are detected (upstream crashes).
        g = max(int(below[0]) - 1, 0) if len(below) else len(sw.thresholds) - 1
    return FileScore(
        name=file.name,
        threshold=threshold,
        score=float(sw.scores[g]),
        tp=int(sw.tp[g]),
        tn=int(sw.tn[g]),
        fp=int(sw.fp[g]),
        fn=int(sw.fn[g]),
        total=len(file.scores),
    )


def score_corpus(
    files: Sequence[PreparedFile], profile: CostProfile, threshold: float
) -> CorpusScore:
    """Per-file scores at one threshold and their total (summed in corpus order)."""
    per_file = tuple(score_file(f, profile, threshold) for f in files)
    raw = 0.0
    for fs in per_file:
        raw += fs.score
    return CorpusScore(profile.name, threshold, raw, per_file)


def null_raw_score(files: Sequence[PreparedFile], profile: CostProfile) -> float:
    """Raw corpus score of upstream's null detector at its own optimised threshold."""
    null = [f.with_scores(np.full(len(f.scores), NULL_SCORE)) for f in files]
    threshold, _ = optimize_threshold(null, profile)
    return score_corpus(null, profile, threshold).raw


def perfect_raw_score(n_windows: int, profile: CostProfile) -> float:
    """Upstream's perfect detector: every window detected at its very start."""
    return n_windows * profile.tp_weight


def normalise(raw: float, null: float, perfect: float, csv_digits: int | None = 12) -> float:
    """NAB score: null detector 0, perfect 100.

    ``csv_digits`` reproduces upstream's round trip of raw totals through Python 2 CSV files
    (``str(float)`` keeps 12 significant digits); ``None`` skips it.
    """
    if csv_digits is not None:
        raw = float(f"{raw:.{csv_digits}g}")
        null = float(f"{null:.{csv_digits}g}")
    if perfect == null:
        return math.nan
    return 100 * (raw - null) / (perfect - null)


# --------------------------------------------------------------------------- NAB tree I/O


def load_profiles(path: Path) -> dict[str, CostProfile]:
    with path.open() as f:
        raw = json.load(f)
    return {
        name: CostProfile(
            name=name,
            tp_weight=float(p["CostMatrix"]["tpWeight"]),
            fp_weight=float(p["CostMatrix"]["fpWeight"]),
            fn_weight=float(p["CostMatrix"]["fnWeight"]),
        )
        for name, p in raw.items()
    }


def load_windows(path: Path) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    with path.open() as f:
        raw: dict[str, list[list[str]]] = json.load(f)
    out: dict[str, list[tuple[np.datetime64, np.datetime64]]] = {}
    for rel, limits in raw.items():
        out[rel] = [(parse_timestamps([a])[0], parse_timestamps([b])[0]) for a, b in limits]
    return out


def read_csv_columns(path: Path, columns: Sequence[str]) -> dict[str, list[str]]:
    """The named columns of a CSV file with a header row, as strings."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        idx = [header.index(c) for c in columns]
        cols: dict[str, list[str]] = {c: [] for c in columns}
        for row in reader:
            if not row:
                continue
            for c, i in zip(columns, idx, strict=True):
                cols[c].append(row[i])
    return cols


def results_path(results_dir: Path, detector: str, relative_path: str) -> Path:
    """``<results>/<detector>/<subset>/<detector>_<file>.csv`` for a data file ``subset/file``."""
    subset, file_name = relative_path.split("/")
    return results_dir / detector / subset / f"{detector}_{file_name}"


def prepare_results(
    nab_dir: Path,
    results_dir: Path,
    detector: str,
    corpus_order: Sequence[str] | None = None,
) -> list[PreparedFile]:
    """Prepared files for a detector's NAB-layout results, in ``corpus_order`` (default sorted).

    Timestamps come from the data files (upstream takes them from the labels, built from the
    data); anomaly scores from the results files.
    """
    windows = load_windows(nab_dir / "labels" / "combined_windows.json")
    names = list(corpus_order) if corpus_order is not None else sorted(windows)
    prepared = []
    for rel in names:
        ts = read_csv_columns(nab_dir / "data" / rel, ["timestamp"])["timestamp"]
        sc = read_csv_columns(results_path(results_dir, detector, rel), ["anomaly_score"])
        prepared.append(
            prepare_file(
                rel,
                parse_timestamps(ts),
                np.array([float(x) for x in sc["anomaly_score"]]),
                windows[rel],
            )
        )
    return prepared


@dataclass(frozen=True)
class ProfileResult:
    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    corpus: CorpusScore


def evaluate(
    files: Sequence[PreparedFile],
    profiles: Mapping[str, CostProfile],
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, ProfileResult]:
    """Normalised NAB score per profile, at the optimised threshold unless one is given."""
    n_windows = sum(f.n_windows for f in files)
    out: dict[str, ProfileResult] = {}
    for name, profile in profiles.items():
        if thresholds is not None and name in thresholds:
            threshold = thresholds[name]
        else:
            threshold, _ = optimize_threshold(files, profile)
        corpus = score_corpus(files, profile, threshold)
        null = null_raw_score(files, profile)
        perfect = perfect_raw_score(n_windows, profile)
        out[name] = ProfileResult(
            profile=name,
            threshold=threshold,
            raw=corpus.raw,
            null=null,
            perfect=perfect,
            score=normalise(corpus.raw, null, perfect),
            corpus=corpus,
        )
    return out


def subset_scores(
    files: Sequence[PreparedFile], profile: CostProfile, threshold: float
) -> dict[str, float]:
    """Per-subset normalised scores at the (corpus) ``threshold``; NaN for subsets without windows.

    Not an upstream number: each subset (``realTweets``...) is normalised with its own null and
    perfect raw scores, computed as for the corpus. No CSV rounding: these are ours only.
    """
    by_subset: dict[str, list[PreparedFile]] = {}
    for f in files:
        by_subset.setdefault(f.name.split("/")[0], []).append(f)
    out: dict[str, float] = {}
    for subset, fs in sorted(by_subset.items()):
        raw = score_corpus(fs, profile, threshold).raw
        null = null_raw_score(fs, profile)
        perfect = perfect_raw_score(sum(f.n_windows for f in fs), profile)
        out[subset] = normalise(raw, null, perfect, csv_digits=None)
    return out
