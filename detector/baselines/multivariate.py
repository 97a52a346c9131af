"""Multivariate: an IsolationForest over edge-window feature vectors, fitted offline.

The model keeps a bounded, uniformly sampled reservoir of training rows (``FEATURES`` of
``baselines.features``) and fits scikit-learn's IsolationForest on it with a fixed random state.
Its state is the reservoir and the parameters, not a pickle: loading refits the forest, which
is deterministic for the same rows, parameters and library version (the artifact manifest
records the version and refuses a mismatch). Raw p-values are the share of training rows that
scored at least as anomalous, so the model is calibrated on its own training distribution.

It only scores edges with at least ``min_requests`` in the window, and its smallest possible p is
1/(n+1): on its own it rarely crosses the finding threshold; it corroborates the other models
in fusion, naming the features that drove its score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

from detector import fastpath
from detector.anomalies import Anomaly, Subject
from detector.baselines.features import FEATURES, WindowBatch


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n
    items, the normaliser of isolation depths (Liu et al. 2008), as scikit-learn defines it."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    two = n == 2
    big = n > 2
    out[two] = 1.0
    nb = n[big]
    out[big] = 2.0 * (np.log(nb - 1.0) + np.euler_gamma) - 2.0 * (nb - 1.0) / nb
    return out


class PackedForest:
    """A fitted IsolationForest packed into flat arrays, scored for all trees at once.

    scikit-learn scores tree by tree through joblib, which costs milliseconds per call for a
    few hundred rows; here one pass of numpy indexing per tree level does every tree together.
    ``anomaly_score(x)`` equals ``-forest.score_samples(x)`` (tested), so calibration against
    the training scores is unchanged.

    Layout, chosen so one tree level costs a handful of flat ``take`` calls (2-D fancy
    indexing costs several times more): node ``j`` of tree ``t`` is global node
    ``t * width + j``; ``child[2 g]`` / ``child[2 g + 1]`` are the left / right children of
    global node ``g``. A leaf (and a padding slot) is its own child on both sides, so every row
    can walk ``max_depth`` levels without asking which ones already stopped.
    """

    def __init__(self, forest: IsolationForest) -> None:
        trees = forest.estimators_
        n_trees = len(trees)
        width = max(t.tree_.node_count for t in trees)
        feature = np.zeros((n_trees, width), dtype=np.intp)
        threshold = np.zeros((n_trees, width), dtype=np.float64)
        child = np.zeros((n_trees, width, 2), dtype=np.intp)
        leaf_depth = np.zeros((n_trees, width), dtype=np.float64)
        max_depth = 0
        for i, (est, feats) in enumerate(zip(trees, forest.estimators_features_, strict=True)):
            t = est.tree_
            n = t.node_count
            internal = t.children_left[:n] >= 0
            # tree features index the bagged column subset: map back to our columns
            feature[i, :n] = np.where(internal, np.asarray(feats)[t.feature[:n]], 0)
            threshold[i, :n] = t.threshold[:n]
            own = i * width + np.arange(width)
            child[i, :, 0] = own
            child[i, :, 1] = own
            child[i, :n, 0] = np.where(internal, i * width + t.children_left[:n], own[:n])
            child[i, :n, 1] = np.where(internal, i * width + t.children_right[:n], own[:n])
            depth = np.zeros(n)
            for node in range(n):  # children always come after their parent
                if internal[node]:
                    depth[t.children_left[node]] = depth[node] + 1
                    depth[t.children_right[node]] = depth[node] + 1
            max_depth = max(max_depth, int(depth.max()))
            leaf_depth[i, :n] = depth + _average_path_length(t.n_node_samples[:n])
        self.n_trees = n_trees
        self.width = width
        self.n_features = int(forest.n_features_in_)
        self.feature = feature.ravel()
        self.threshold = threshold.ravel()
        self.child = child.ravel()
        self.leaf_depth = leaf_depth.ravel()
        self.max_depth = max_depth
        self.denominator = n_trees * float(_average_path_length(np.array([forest.max_samples_]))[0])

    def anomaly_score(self, x: np.ndarray) -> np.ndarray:
        # trees compare float32 features with float64 thresholds: do the same
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        n = len(x)
        if self.denominator == 0:
            return np.ones(n)
        if fastpath.forest_leaf_depths is not None:
            leaf = np.empty((self.n_trees, n))
            fastpath.forest_leaf_depths(
                self.feature, self.threshold, self.child, self.leaf_depth,
                self.n_trees, self.width, np.ascontiguousarray(x), leaf,
            )  # fmt: skip
            # summed over trees as below (numpy adds the rows of axis 0 in order): same result
            return np.asarray(2.0 ** (-leaf.sum(axis=0) / self.denominator))
        flat_x = x.ravel()
        # (trees, rows): every tree starts at its root; row r's features start at r * n_features
        roots = np.arange(self.n_trees, dtype=np.intp) * self.width
        node: np.ndarray = np.repeat(roots, n).reshape(self.n_trees, n)
        row_base = np.arange(n, dtype=np.intp) * x.shape[1]
        for _ in range(self.max_depth):
            value = flat_x.take(self.feature.take(node) + row_base)
            # NaN goes right, as in scikit-learn's ``x <= threshold`` test
            right = ~(value <= self.threshold.take(node))
            node = self.child.take(2 * node + right)
        depths = self.leaf_depth.take(node).sum(axis=0)
        return np.asarray(2.0 ** (-depths / self.denominator))


class MultivariateModel:
    name = "multivariate"

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: int = 256,
        reservoir_size: int = 20_000,
        min_requests: int = 5,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.reservoir_size = reservoir_size
        self.min_requests = min_requests
        self.random_state = random_state
        self.rows_: list[list[float]] = []
        self.seen_ = 0
        self.forest_: IsolationForest | None = None
        self.packed_: PackedForest | None = None
        self.train_scores_: np.ndarray = np.zeros(0)
        self._median_score = 0.0  # of train_scores_, the "expected" of every anomaly
        self.mean_: np.ndarray = np.zeros(len(FEATURES))
        self.std_: np.ndarray = np.ones(len(FEATURES))
        self._rng = np.random.default_rng(random_state)

    def get_params(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "max_samples": self.max_samples,
            "reservoir_size": self.reservoir_size,
            "min_requests": self.min_requests,
            "random_state": self.random_state,
        }

    def _eligible(self, batch: WindowBatch) -> np.ndarray:
        """Positions of the windows this model learns and scores: enough requests, no overflow."""
        return np.nonzero((batch.totals >= self.min_requests) & batch.regular)[0]

    def learn(self, batch: WindowBatch) -> None:
        idx = self._eligible(batch)
        if not len(idx):
            return
        rows = batch.matrix[idx].tolist()
        free = max(0, self.reservoir_size - len(self.rows_))
        self.rows_.extend(rows[:free])
        self.seen_ += min(free, len(rows))
        rest = rows[free:]
        if rest:
            # reservoir sampling: every row seen has the same chance to be kept. One draw per
            # row, for all rows at once: numpy draws an array of bounds in the same order (and
            # from the same stream) as one call per row (tested).
            highs = np.arange(self.seen_ + 1, self.seen_ + len(rest) + 1)
            self.seen_ += len(rest)
            js = self._rng.integers(0, highs)
            for k in np.nonzero(js < self.reservoir_size)[0].tolist():
                self.rows_[int(js[k])] = rest[k]

    def fit(self) -> None:
        """(Re)fit the forest on the reservoir; called at the end of training and on load."""
        if len(self.rows_) < 50:
            self.forest_ = None
            self.packed_ = None
            return
        x = np.asarray(self.rows_, dtype=np.float64)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(x)),
            random_state=self.random_state,
        ).fit(x)
        self.packed_ = PackedForest(self.forest_)
        self.train_scores_ = np.sort(self.packed_.anomaly_score(x))
        self._median_score = round(float(np.median(self.train_scores_)), 4)
        self.mean_ = x.mean(axis=0)
        self.std_ = np.maximum(x.std(axis=0), 1e-3)

    def score(self, batch: WindowBatch) -> list[Anomaly]:
        if self.packed_ is None:
            return []
        idx = self._eligible(batch)
        if not len(idx):
            return []
        x = batch.matrix[idx]
        s = self.packed_.anomaly_score(x)
        n = len(self.train_scores_)
        # share of training rows at least as anomalous (calibrated on the training set)
        exceed = n - np.searchsorted(self.train_scores_, s, side="left")
        p = (exceed + 1) / (n + 1)
        out: list[Anomaly] = []
        for k in np.nonzero(p <= 0.01)[0]:
            w = batch.windows[int(idx[k])]
            z = (x[k] - self.mean_) / self.std_
            order = np.argsort(-np.abs(z))[:3]
            total = float(np.abs(z[order]).sum()) or 1.0
            out.append(
                Anomaly(
                    finding_type="multivariate_outlier",
                    pattern="OUTLIER",
                    subject=Subject(
                        principal=w.src_principal,
                        src_cluster=w.src_cluster,
                        dst_service=w.dst_service,
                        dst_namespace=w.dst_namespace,
                        dst_cluster=w.dst_cluster,
                    ),
                    window_start=batch.window_start,
                    window_end=batch.window_end,
                    model=self.name,
                    feature="isolation_score",
                    observed=round(float(s[k]), 4),
                    expected=self._median_score,
                    p_value=float(p[k]),
                    baseline={
                        "description": f"IsolationForest over {n} training edge-windows",
                        "features": list(FEATURES),
                    },
                    contributions=tuple(
                        (FEATURES[j], round(abs(float(z[j])) / total, 3)) for j in order
                    ),
                    evidence={FEATURES[j]: round(float(x[k, j]), 3) for j in order},
                    confidence=0.4,
                )
            )
        return out

    def get_state(self) -> dict[str, Any]:
        return {"rows": self.rows_, "seen": self.seen_}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rows_ = [list(r) for r in state["rows"]]
        self.seen_ = int(state["seen"])
        self.fit()
