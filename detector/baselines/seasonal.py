"""Seasonal per-edge profiles: requests, errors, bytes and latency against hour-of-day baselines.

Per edge and hour of day the model keeps sums and sums of squares of the window counts
(windows where the edge was silent count as zeros: the number of learned windows per hour is
global), and running log-moments of bytes per request and of the p90 latency.

Scoring, for one window time:
* expected count ``mu = (sum_h + k * mean_e * profile_h) / (n_h + k)``: the edge's own hour
  cell shrunk towards its overall mean shaped by the mesh-wide hourly profile (sparse edges
  borrow strength); dispersion from the edge's own cells (negative binomial, never below
  ``min_dispersion``); tail probabilities of counts, not z-scores of sparse data:
  ``SURGE`` = P(X >= x), ``DROP`` = P(X <= x);
* bytes out/in: log-normal tail of the window total around ``mu_requests * bytes_per_request``;
* latency p90: log-normal tail against the edge's own history.
* Global context first: when most known edges move the same way (ratio of observed to
  expected requests over all edges beyond ``global_ratio``), one ``global_shift`` anomaly is
  raised and every expectation is rescaled by that ratio, so a mesh-wide surge is one event,
  not a finding per edge, while an edge that moved far more than the rest still stands out.

Finding types: requests SURGE -> ``rate_surge`` (security) unless the edge is failing (retry
storms during an outage are ``availability``); bytes out SURGE -> ``exfiltration``; errors SURGE
-> ``availability``; latency SURGE -> ``latency``; requests DROP -> ``traffic_drop``.
Minimum effect sizes (``min_ratio``, ``min_excess``) keep tiny absolute changes quiet.

Implementation: the per-edge state lives in rows of numpy arrays and a window time is learned
and scored with array operations over all its edges; the results are those of a loop per edge,
bit for bit (tested against that loop), and ``get_state()`` keeps its per-edge JSON layout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from detector.anomalies import Anomaly, Subject
from detector.baselines.features import WindowBatch, edge_key
from detector.flows import OVERFLOW, EdgeWindow

REQ, ERR = 0, 1
_SQRT2 = math.sqrt(2.0)


def _moments(m: list[float], floor: float) -> tuple[float, float]:
    n, s, ss = m
    mean = s / n
    var = max(ss / n - mean * mean, 0.0)
    return mean, max(math.sqrt(var), floor)


def _add(m: list[float], x: float) -> None:
    m[0] += 1
    m[1] += x
    m[2] += x * x


def nb_sf(x: float, mu: float, alpha: float) -> float:
    """P(X >= x) for a negative binomial with mean ``mu`` and var ``mu + alpha mu^2``."""
    if x <= 0:
        return 1.0
    r = 1.0 / alpha
    p = r / (r + mu)
    return float(stats.nbinom.sf(x - 1, r, p))


def nb_cdf(x: float, mu: float, alpha: float) -> float:
    r = 1.0 / alpha
    return float(stats.nbinom.cdf(x, r, r / (r + mu)))


def normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / _SQRT2)


def _moments_v(m: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """``_moments`` for rows of (n, sum, sumsq): the same operations, elementwise."""
    n, s, ss = m[:, 0], m[:, 1], m[:, 2]
    mean = s / n
    var = np.maximum(ss / n - mean * mean, 0.0)
    return mean, np.maximum(np.sqrt(var), floor)


def _seq_sum(v: np.ndarray) -> float:
    """Left-to-right float sum (what a Python ``+=`` loop gives, unlike numpy's pairwise sum)."""
    return float(np.cumsum(v)[-1]) if len(v) else 0.0


_GROW = 64  # initial capacity of the per-edge arrays; doubled as edges appear


class SeasonalModel:
    """See the module docstring.

    Learned state is held per edge in rows of numpy arrays (``edges_`` maps an edge key to its
    row), so one window time is learned and scored with a few array operations over all its
    edges instead of a Python loop per edge. Every value is computed with the same IEEE
    operations in the same order as a per-edge loop would (sums that must be sequential are
    sequential; ``log1p``/``expm1`` come from ``math``, not numpy's vectorised approximations),
    so results do not depend on how many edges share a window time.
    """

    name = "seasonal"

    def __init__(
        self,
        prior_windows: float = 3.0,
        min_dispersion: float = 0.1,
        min_ratio: float = 2.0,
        min_excess: float = 10.0,
        min_bytes_excess: float = 100_000.0,
        min_history_windows: int = 30,
        global_ratio: float = 1.6,
        global_min_edges: int = 8,
        global_share: float = 0.6,
        drop_min_expected: float = 20.0,
        accumulate_windows: int = 5,
    ) -> None:
        self.prior_windows = prior_windows
        self.min_dispersion = min_dispersion
        self.min_ratio = min_ratio
        self.min_excess = min_excess
        self.min_bytes_excess = min_bytes_excess
        self.min_history_windows = min_history_windows
        self.global_ratio = global_ratio
        self.global_min_edges = global_min_edges
        self.global_share = global_share
        self.drop_min_expected = drop_min_expected
        self.accumulate_windows = accumulate_windows
        self._horizon = 300.0
        self.n_h_ = np.zeros(24)  # learned windows per hour of day
        self._n_total = 0.0  # n_h_.sum(), kept as a float for the hot path
        self._profiles: dict[int, float] = {}
        self.g_h_ = np.zeros(24)  # mesh-wide requests per hour of day
        self._version = 0  # learn() calls so far: what ``_memo`` holds is valid until the next
        self._memo_batch: WindowBatch | None = None
        self._memo_version = -1
        self._memo_data: dict[str, Any] = {}
        self._alloc(_GROW)

    def _alloc(self, cap: int) -> None:
        self.edges_: dict[str, int] = {}  # edge key -> row of the arrays below
        self._keys: list[str] = []
        a = max(1, self.accumulate_windows)
        # learned windows per hour before the edge first appeared: they say nothing about it
        self.born_ = np.zeros((cap, 24))
        self.born_sum_ = np.zeros(cap)
        self.s_ = np.zeros((cap, 2, 24))  # requests, errors per hour
        self.ss_ = np.zeros((cap, 2, 24))
        self.tot_ = np.zeros((cap, 2))  # running totals of requests and errors
        self.b_out_ = np.zeros((cap, 3))  # n, sum, sumsq of log1p(bytes_out / request)
        self.b_in_ = np.zeros((cap, 3))
        self.lat_ = np.zeros((cap, 3))  # of log1p(p90 ms)
        # dispersion per feature (NaN: to be computed), refreshed as the edge's history grows
        # by a quarter; ``learns`` counts learned windows, ``alpha_at`` the count at the refresh
        self.alpha_ = np.full((cap, 2), np.nan)
        self.alpha_at_ = np.zeros(cap)
        self.learns_ = np.zeros(cap)
        # the edge's recent bytes-out z-scores (oldest first) and their window starts
        self.rz_ = np.zeros((cap, a))
        self.rt_ = np.zeros((cap, a))
        self.rn_ = np.zeros(cap, dtype=np.intp)

    def _grow(self) -> None:
        cap = len(self.born_)
        for name in (
            "born_",
            "born_sum_",
            "s_",
            "ss_",
            "tot_",
            "b_out_",
            "b_in_",
            "lat_",
            "alpha_at_",
            "learns_",
            "rz_",
            "rt_",
            "rn_",
        ):
            old = getattr(self, name)
            new = np.zeros((cap * 2, *old.shape[1:]), dtype=old.dtype)
            new[:cap] = old
            setattr(self, name, new)
        alpha = np.full((cap * 2, 2), np.nan)
        alpha[:cap] = self.alpha_
        self.alpha_ = alpha

    def _add_edge(self, key: str, born: np.ndarray) -> int:
        i = len(self._keys)
        if i == len(self.born_):
            self._grow()
        self.edges_[key] = i
        self._keys.append(key)
        self.born_[i] = born
        self.born_sum_[i] = float(born.sum())
        return i

    def get_params(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "prior_windows",
                "min_dispersion",
                "min_ratio",
                "min_excess",
                "min_bytes_excess",
                "min_history_windows",
                "global_ratio",
                "global_min_edges",
                "global_share",
                "drop_min_expected",
                "accumulate_windows",
            )
        }

    # -- per-batch views ---------------------------------------------------------------------

    def _memo(self, batch: WindowBatch) -> dict[str, Any]:
        """What this model worked out about ``batch``, valid until it learns again."""
        if self._memo_batch is not batch or self._memo_version != self._version:
            self._memo_batch, self._memo_version, self._memo_data = batch, self._version, {}
        return self._memo_data

    def _rows(self, batch: WindowBatch) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the batch of known, non-overflow edges, their rows in the arrays)."""
        memo = self._memo(batch)
        cached = memo.get("rows")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        get = self.edges_.get
        pos: list[int] = []
        rows: list[int] = []
        seen: list[int] = []  # every known edge of the batch, overflow included
        for j, (w, key) in enumerate(zip(batch.windows, batch.keys, strict=True)):
            i = get(key)
            if i is not None:
                seen.append(i)
                if w.src_principal != OVERFLOW:
                    pos.append(j)
                    rows.append(i)
        out = (np.asarray(pos, dtype=np.intp), np.asarray(rows, dtype=np.intp))
        memo["rows"] = out
        memo["seen"] = seen
        return out

    # -- learning ----------------------------------------------------------------------------

    def learn(self, batch: WindowBatch) -> None:
        h = batch.hour
        self._version += 1
        self.n_h_[h] += 1
        self._n_total += 1.0
        self._profiles.clear()
        pos: list[int] = []
        rows: list[int] = []
        born: np.ndarray | None = None
        get = self.edges_.get
        for j, (w, key) in enumerate(zip(batch.windows, batch.keys, strict=True)):
            if w.src_principal == OVERFLOW:
                continue
            i = get(key)
            if i is None:
                if born is None:
                    born = self.n_h_ - 1.0 * (np.arange(24) == h)
                i = self._add_edge(key, born)
            pos.append(j)
            rows.append(i)
        if not rows:
            return
        if len(set(rows)) != len(rows):
            # the same edge twice in one window time (not produced by the aggregator): learn
            # the windows one at a time, as the array updates below assume distinct rows
            for j, i in zip(pos, rows, strict=True):
                self._learn_rows(batch, np.array([j]), np.array([i]), h)
            return
        self._learn_rows(batch, np.asarray(pos, dtype=np.intp), np.asarray(rows), h)

    def _learn_rows(self, batch: WindowBatch, pos: np.ndarray, rows: np.ndarray, h: int) -> None:
        x = batch.totals[pos]
        err = batch.errors[pos]
        learns = self.learns_[rows] + 1
        self.learns_[rows] = learns
        stale = rows[learns >= 1.25 * self.alpha_at_[rows] + 5]
        self.alpha_[stale] = np.nan
        self.tot_[rows, REQ] += x
        self.tot_[rows, ERR] += err
        self.s_[rows, REQ, h] += x
        self.ss_[rows, REQ, h] += x * x
        self.s_[rows, ERR, h] += err
        self.ss_[rows, ERR, h] += err * err
        m = batch.matrix
        busy = x > 0
        if busy.any():
            b, p = rows[busy], pos[busy]
            for acc, col in ((self.b_out_, 4), (self.b_in_, 5)):
                v = m[p, col]  # log1p(bytes / request), as the feature matrix computed it
                acc[b, 0] += 1
                acc[b, 1] += v
                acc[b, 2] += v * v
        has_lat = batch.has_latency[pos]
        if has_lat.any():
            b, v = rows[has_lat], m[pos[has_lat], 7]  # log1p(p90 ms)
            self.lat_[b, 0] += 1
            self.lat_[b, 1] += v
            self.lat_[b, 2] += v * v
        # integer counts: the order of the additions cannot change the sum
        self.g_h_[h] += float(x.sum())

    # -- expectations ------------------------------------------------------------------------

    def _profile(self, h: int) -> float:
        """Mesh-wide requests at hour ``h`` relative to the mean hour (cached until learning)."""
        cached = self._profiles.get(h)
        if cached is not None:
            return cached
        n = self._n_total
        value = 1.0
        if n > 0 and self.n_h_[h] > 0:
            overall = float(self.g_h_.sum()) / n
            if overall > 0:
                value = float(self.g_h_[h] / self.n_h_[h]) / overall
        self._profiles[h] = value
        return value

    def expected(self, i: int, f: int, h: int) -> tuple[float, float]:
        """(mean, dispersion alpha) of feature ``f`` for the edge in row ``i`` at hour ``h``."""
        mu, alpha = self.expected_rows(np.array([i], dtype=np.intp), f, h)
        return float(mu[0]), float(alpha[0])

    def expected_rows(self, rows: np.ndarray, f: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """``expected`` for many edges at once: arrays of (mean, dispersion alpha)."""
        total_n = self._n_total - self.born_sum_[rows]  # only windows since the edge appeared
        live = total_n > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_e = self.tot_[rows, f] / total_n
        k = self.prior_windows
        n_hh = self.n_h_[h] - self.born_[rows, h]
        mu = (self.s_[rows, f, h] + k * mean_e * self._profile(h)) / (n_hh + k)
        alpha = self.alpha_[rows, f]
        todo = live & np.isnan(alpha)
        if todo.any():
            alpha[todo] = self._dispersion(rows[todo], f)
        if not live.all():
            mu = np.where(live, mu, 0.0)
            alpha = np.where(live, alpha, 1.0)
        return mu, alpha

    def _dispersion(self, rows: np.ndarray, f: int) -> np.ndarray:
        """Refresh the edges' dispersion of feature ``f`` from their own hour cells: the median
        over hours with >= 3 windows of ``(var - mean) / mean^2``, within [min_dispersion, 10]
        (1 without such hours)."""
        self.alpha_at_[rows] = self.learns_[rows]
        n_h = self.n_h_[None, :] - self.born_[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            m = self.s_[rows, f] / n_h
            var = self.ss_[rows, f] / n_h - m * m
            cells = (var - m) / (m * m)
        good = np.isfinite(cells) & (n_h >= 3) & (m > 0)
        count = good.sum(axis=1)
        # the median of each row's good cells: sort them first (the rest as +inf after them),
        # then the mean of the two middle ones, as np.median does
        srt = np.sort(np.where(good, cells, np.inf), axis=1)
        r = np.arange(len(rows))
        lo = srt[r, np.maximum(count - 1, 0) // 2]
        hi = srt[r, np.minimum(count // 2, srt.shape[1] - 1)]
        with np.errstate(invalid="ignore"):
            raw = np.where(count > 0, (lo + hi) / 2, 1.0)
        alpha = np.minimum(np.maximum(raw, self.min_dispersion), 10.0)
        self.alpha_[rows, f] = alpha
        return alpha

    def _shifted(self, g: float, moving: int, known: int) -> bool:
        return (g >= self.global_ratio or g <= 1 / self.global_ratio) and (
            moving >= self.global_share * known
        )

    def traffic_scale(self, batch: WindowBatch) -> float:
        """The mesh-wide traffic ratio when most edges moved together, else 1."""
        g, moving, known = self.global_factor(batch)
        return g if self._shifted(g, moving, known) else 1.0

    def global_factor(self, batch: WindowBatch) -> tuple[float, int, int]:
        """(observed/expected requests over known edges, edges moving with it, known edges).

        Computed once per batch: the scorer asks for it before the models run (to set
        ``traffic_scale``) and ``score`` asks again."""
        memo = self._memo(batch)
        cached = memo.get("global_factor")
        if cached is None:
            cached = memo["global_factor"] = self._global_factor(batch)
        return cached

    def _requests_expected(self, batch: WindowBatch) -> tuple[np.ndarray, np.ndarray]:
        """Unscaled (mean, alpha) of requests for the batch's known edges (``_rows`` order)."""
        memo = self._memo(batch)
        cached = memo.get("req")
        if cached is None:
            _, rows = self._rows(batch)
            cached = memo["req"] = self.expected_rows(rows, REQ, batch.hour)
        return cached

    def _global_factor(self, batch: WindowBatch) -> tuple[float, int, int]:
        pos, _ = self._rows(batch)
        mu, _ = self._requests_expected(batch)
        use = mu >= 1.0
        x = batch.totals[pos][use]
        mu = mu[use]
        known = len(mu)
        exp = _seq_sum(mu)
        if exp <= 0 or known < self.global_min_edges:
            return 1.0, 0, known
        g = float(x.sum()) / exp  # observed: integer counts, exact in any order
        ratios = x / mu
        moving = int(np.count_nonzero(ratios > 1.2 if g > 1 else ratios < 1 / 1.2))
        return g, moving, known

    # -- scoring -----------------------------------------------------------------------------

    def score(self, batch: WindowBatch) -> list[Anomaly]:
        out: list[Anomaly] = []
        h = batch.hour
        start, end = batch.window_start, batch.window_end
        self._horizon = batch.window_s * self.accumulate_windows
        g, moving, known = self.global_factor(batch)
        shifted = self._shifted(g, moving, known)
        scale = g if shifted else 1.0
        if shifted:
            out.append(
                Anomaly(
                    finding_type="global_shift",
                    pattern="GLOBAL_SHIFT",
                    subject=Subject(),
                    window_start=start,
                    window_end=end,
                    model=self.name,
                    feature="requests_ratio",
                    observed=round(g, 3),
                    expected=1.0,
                    p_value=1e-6,
                    baseline={
                        "description": "sum of expected requests over known edges",
                        "edges_moving": moving,
                        "edges_known": known,
                    },
                    evidence={"detail": f"x{g:.1f} on {moving} of {known} edges"},
                    confidence=min(1.0, moving / max(known, 1)),
                )
            )
        pos, rows = self._rows(batch)
        mu_all, alpha_all = self._requests_expected(batch)
        ready = self.b_out_[rows, 0] >= self.min_history_windows
        if ready.any():
            pos, rows, mu, alpha = pos[ready], rows[ready], mu_all[ready], alpha_all[ready]
            if len(np.unique(rows)) == len(rows):
                self._score_edges(batch, pos, rows, mu, alpha, scale, out)
            else:
                # the same edge twice in one window time (not produced by the aggregator): its
                # recent bytes z must see the first window before the second, so one at a time
                for k in range(len(rows)):
                    one = slice(k, k + 1)
                    self._score_edges(batch, pos[one], rows[one], mu[one], alpha[one], scale, out)
        if self.drop_min_expected > 0:
            self._score_silent(batch, rows, h, scale, start, end, out)
        return out

    def _subject(self, w: EdgeWindow) -> Subject:
        return Subject(
            principal=w.src_principal,
            src_cluster=w.src_cluster,
            dst_service=w.dst_service,
            dst_namespace=w.dst_namespace,
            dst_cluster=w.dst_cluster,
        )

    def _recent_z(
        self, rows: np.ndarray, z: np.ndarray, start: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Append this window's bytes z to each edge's recent ones (dropping those older than
        the horizon, keeping the last ``accumulate_windows``); return (sum of the kept z in
        order, as a left-to-right sum, and how many were kept) per edge."""
        a = self.rz_.shape[1]
        n = len(rows)
        cols = np.arange(a + 1)
        t = np.empty((n, a + 1))
        zz = np.empty((n, a + 1))
        t[:, :a], t[:, a] = self.rt_[rows], start
        zz[:, :a], zz[:, a] = self.rz_[rows], z
        have = self.rn_[rows]
        valid = (cols[None, :a] < have[:, None]) & (start - t[:, :a] < self._horizon)
        valid = np.concatenate([valid, np.ones((n, 1), dtype=bool)], axis=1)
        rank = np.cumsum(valid, axis=1)  # 1-based rank among the valid entries
        count = rank[:, -1]
        drop = np.maximum(count - a, 0)
        keep = valid & (rank > drop[:, None])
        dest = rank - 1 - drop[:, None]
        r_idx = np.broadcast_to(np.arange(n)[:, None], keep.shape)[keep]
        new_t = np.zeros((n, a))
        new_z = np.zeros((n, a))
        new_t[r_idx, dest[keep]] = t[keep]
        new_z[r_idx, dest[keep]] = zz[keep]
        self.rt_[rows] = new_t
        self.rz_[rows] = new_z
        kept = np.minimum(count, a)
        self.rn_[rows] = kept
        z_sum = new_z[:, 0].copy()
        for c in range(1, a):  # column by column: the left-to-right sum of each edge's list
            z_sum += new_z[:, c]
        return z_sum, kept

    def _score_edges(
        self,
        batch: WindowBatch,
        pos: np.ndarray,
        rows: np.ndarray,
        mu: np.ndarray,
        alpha: np.ndarray,
        scale: float,
        out: list[Anomaly],
    ) -> None:
        h = batch.hour
        start, end = batch.window_start, batch.window_end
        x = batch.totals[pos]
        err = batch.errors[pos]
        mu = mu * scale
        surge = x >= np.maximum(self.min_ratio * mu, mu + self.min_excess)
        drop = ~surge & (mu >= self.drop_min_expected) & (x <= mu / 4)
        mu_e, alpha_e = self.expected_rows(rows, ERR, h)
        mu_e = mu_e * scale
        err_surge = err >= np.maximum(self.min_ratio * mu_e, mu_e + self.min_excess)
        # bytes out (exfiltration): log-normal around expected requests x bytes per request,
        # scored per window and, since exfiltration lasts, over the edge's recent windows
        # (Stouffer's z over the last ``accumulate_windows``): a sustained x20 is certain even
        # where one heavy-tailed window is not.
        observed = batch.bytes_out[pos]
        mean, sd = _moments_v(self.b_out_[rows], 0.25)
        per_req = np.array([math.expm1(v) for v in mean.tolist()])
        mu1 = np.maximum(mu, 1.0)
        expected = mu1 * per_req
        # a few requests add Poisson noise in log space
        sd_tot = np.sqrt(sd * sd + 1.0 / mu1)
        log_obs = np.array([math.log1p(v) for v in observed.tolist()])
        log_exp = np.array([math.log1p(v) for v in expected.tolist()])
        z = (log_obs - log_exp) / sd_tot
        z_sum, kept = self._recent_z(rows, z, start)
        z_comb = z_sum / np.sqrt(kept)
        exfil = (observed - expected >= self.min_bytes_excess) & (
            observed >= self.min_ratio * expected
        )
        # latency p90 against the edge's own history
        lat_ok = batch.has_latency[pos] & (self.lat_[rows, 0] >= self.min_history_windows)
        lat_z = np.zeros(len(rows))
        lat_mean = np.zeros(len(rows))
        if lat_ok.any():
            lm, lsd = _moments_v(self.lat_[rows[lat_ok]], 0.2)
            lat_z[lat_ok] = (batch.matrix[pos[lat_ok], 7] - lm) / lsd
            lat_mean[lat_ok] = lm
        lat_hi = lat_ok & (lat_z > 3)
        hits = np.nonzero(surge | drop | err_surge | exfil | lat_hi)[0]
        if not len(hits):
            return
        base = {
            "hour_utc": h,
            "windows_learned": int(self.n_h_.sum()),
            "windows_at_hour": int(self.n_h_[h]),
            "global_scale": round(scale, 3),
        }
        windows = batch.windows
        for k in hits.tolist():
            w = windows[int(pos[k])]
            xk, muk, ak = float(x[k]), float(mu[k]), float(alpha[k])
            if surge[k]:
                failing = w.errors > 0.3 * max(xk, 1)
                out.append(
                    self._anomaly(
                        "availability" if failing else "rate_surge",
                        "SURGE",
                        w,
                        "requests",
                        xk,
                        muk,
                        nb_sf(xk, muk, ak),
                        {
                            **base,
                            "description": f"seasonal requests per window at {h:02d}:00 UTC",
                            "dispersion": round(ak, 3),
                        },
                        start,
                        end,
                    )
                )
            elif drop[k]:
                out.append(
                    self._anomaly(
                        "traffic_drop",
                        "DROP",
                        w,
                        "requests",
                        xk,
                        muk,
                        nb_cdf(xk, muk, ak),
                        {**base, "description": f"seasonal requests per window at {h:02d}:00 UTC"},
                        start,
                        end,
                    )
                )
            if err_surge[k]:
                ek, mek = float(err[k]), float(mu_e[k])
                out.append(
                    self._anomaly(
                        "availability",
                        "SURGE",
                        w,
                        "errors",
                        ek,
                        mek,
                        nb_sf(ek, mek, float(alpha_e[k])),
                        {**base, "description": f"seasonal errors per window at {h:02d}:00 UTC"},
                        start,
                        end,
                    )
                )
            if exfil[k]:
                zk, zc = float(z[k]), float(z_comb[k])
                out.append(
                    self._anomaly(
                        "exfiltration",
                        "SURGE",
                        w,
                        "bytes_out",
                        float(observed[k]),
                        float(expected[k]),
                        normal_sf(max(zk, zc)),
                        {
                            **base,
                            "description": "requests expected at this hour x bytes per request "
                            f"({float(per_req[k]):.0f} B, log-sd {float(sd[k]):.2f}); evidence "
                            f"over the last {int(kept[k])} window(s) of this edge",
                            "z_window": round(zk, 2),
                            "z_recent": round(zc, 2),
                        },
                        start,
                        end,
                    )
                )
            if lat_hi[k]:
                p90 = w.latency_p90_ms
                typical = math.expm1(float(lat_mean[k]))
                if p90 is not None and p90 > 2 * typical:
                    out.append(
                        self._anomaly(
                            "latency",
                            "SURGE",
                            w,
                            "latency_p90_ms",
                            p90,
                            typical,
                            normal_sf(float(lat_z[k])),
                            {**base, "description": "p90 latency of this edge"},
                            start,
                            end,
                        )
                    )

    def _score_silent(
        self,
        batch: WindowBatch,
        rows: np.ndarray,
        h: int,
        scale: float,
        start: float,
        end: float,
        out: list[Anomaly],
    ) -> None:
        """Busy edges that went silent: only edges expecting many requests can tell."""
        if self.n_h_[h] < 3:
            return
        n = len(self._keys)
        seen = np.zeros(n, dtype=bool)
        self._rows(batch)
        seen[self._memo(batch)["seen"]] = True
        n_h = self.n_h_[h] - self.born_[:n, h]
        busy = n_h >= 3
        with np.errstate(divide="ignore", invalid="ignore"):
            busy &= self.s_[:n, REQ, h] / n_h >= self.drop_min_expected
        cand = np.nonzero(busy & ~seen)[0]
        if not len(cand):
            return
        mu_c, alpha_c = self.expected_rows(cand, REQ, h)
        mu_c = mu_c * scale
        for i, mu, alpha in zip(cand.tolist(), mu_c.tolist(), alpha_c.tolist(), strict=True):
            if mu < self.drop_min_expected:
                continue
            caller, cl, ns, svc, dcl = self._keys[i].split("|")
            out.append(
                Anomaly(
                    finding_type="traffic_drop",
                    pattern="DROP",
                    subject=Subject(caller, cl, None, svc, ns, dcl),
                    window_start=start,
                    window_end=end,
                    model=self.name,
                    feature="requests",
                    observed=0.0,
                    expected=round(mu, 2),
                    p_value=nb_cdf(0, mu, alpha),
                    baseline={"description": f"seasonal requests per window at {h:02d}:00 UTC"},
                    confidence=0.5,
                )
            )

    def _anomaly(
        self,
        ftype: str,
        pattern: str,
        w: EdgeWindow,
        feature: str,
        observed: float,
        expected: float,
        p: float,
        baseline: dict[str, Any],
        start: float,
        end: float,
    ) -> Anomaly:
        ratio = observed / expected if expected > 0 else float("inf")
        return Anomaly(
            finding_type=ftype,
            pattern=pattern,
            subject=self._subject(w),
            window_start=start,
            window_end=end,
            model=self.name,
            feature=feature,
            observed=round(observed, 3),
            expected=round(expected, 3),
            p_value=p,
            baseline=baseline,
            contributions=((feature, 1.0),),
            evidence={
                "ratio": round(ratio, 2) if math.isfinite(ratio) else None,
                "requests": w.total,
                "errors": w.errors,
                "bytes_out": w.bytes_out,
                "routes": dict(sorted(w.routes.items(), key=lambda kv: -kv[1])[:5]),
            },
            confidence=0.7,
        )

    # -- state -------------------------------------------------------------------------------

    @property
    def recent_z_(self) -> dict[str, list[tuple[float, float]]]:
        """Edge key -> its recent (window start, bytes z), oldest first."""
        out: dict[str, list[tuple[float, float]]] = {}
        for key, i in self.edges_.items():
            n = int(self.rn_[i])
            if n:
                out[key] = list(
                    zip(self.rt_[i, :n].tolist(), self.rz_[i, :n].tolist(), strict=True)
                )
        return out

    def get_state(self) -> dict[str, Any]:
        return {
            "n_h": self.n_h_.tolist(),
            "recent_z": self.recent_z_,
            "g_h": self.g_h_.tolist(),
            "edges": {
                k: [
                    self.s_[i].tolist(),
                    self.ss_[i].tolist(),
                    self.b_out_[i].tolist(),
                    self.b_in_[i].tolist(),
                    self.lat_[i].tolist(),
                    self.born_[i].tolist(),
                ]
                for k, i in self.edges_.items()
            },
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.n_h_ = np.asarray(state["n_h"], dtype=np.float64)
        self.g_h_ = np.asarray(state["g_h"], dtype=np.float64)
        self._n_total = float(self.n_h_.sum())
        self._profiles = {}
        self._version += 1
        edges = state["edges"]
        self._alloc(max(_GROW, len(edges)))
        for k, (s, ss, b_out, b_in, lat, born) in edges.items():
            i = self._add_edge(k, np.asarray(born, dtype=np.float64))
            self.s_[i] = np.asarray(s, dtype=np.float64)
            self.ss_[i] = np.asarray(ss, dtype=np.float64)
            self.b_out_[i], self.b_in_[i], self.lat_[i] = b_out, b_in, lat
            self.tot_[i] = [float(self.s_[i, REQ].sum()), float(self.s_[i, ERR].sum())]
        a = self.rz_.shape[1]
        for k, v in state.get("recent_z", {}).items():
            row = self.edges_.get(k)
            if row is None:
                continue
            i = row
            pairs = [(float(t), float(z)) for t, z in v][-a:]
            self.rn_[i] = len(pairs)
            for j, (t, z) in enumerate(pairs):
                self.rt_[i, j], self.rz_[i, j] = t, z


__all__ = ["SeasonalModel", "edge_key", "nb_cdf", "nb_sf", "normal_sf"]
