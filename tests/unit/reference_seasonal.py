"""The seasonal model as it was written before vectorisation: one Python loop per edge, state
in one object per edge. Kept only as the oracle of ``test_vectorised_scoring.py``: the array
implementation in ``detector.baselines.seasonal`` must give the same anomalies (every field,
p-values bit for bit) and the same state on the same windows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from detector.anomalies import Anomaly, Subject
from detector.baselines.features import WindowBatch
from detector.baselines.seasonal import nb_cdf, nb_sf, normal_sf
from detector.flows import OVERFLOW, EdgeWindow

REQ, ERR = 0, 1
_SQRT2 = math.sqrt(2.0)


class _Edge:
    """Learned state of one edge."""

    __slots__ = (
        "alpha",
        "alpha_at",
        "b_in",
        "b_out",
        "born",
        "born_sum",
        "lat",
        "learns",
        "s",
        "ss",
        "tot",
    )

    def __init__(self, born: np.ndarray | None = None) -> None:
        # learned windows per hour before the edge first appeared: they say nothing about it
        self.born = np.zeros(24) if born is None else born.copy()
        self.born_sum = float(self.born.sum())
        # dispersion per feature, refreshed as the edge's history grows by a quarter
        self.alpha: list[float | None] = [None, None]
        self.alpha_at = 0
        self.learns = 0
        self.tot = [0.0, 0.0]  # running totals of requests and errors (mean without a sum)
        self.s = np.zeros((2, 24))  # requests, errors per hour
        self.ss = np.zeros((2, 24))
        self.b_out = [0.0, 0.0, 0.0]  # n, sum, sumsq of log1p(bytes_out / request)
        self.b_in = [0.0, 0.0, 0.0]
        self.lat = [0.0, 0.0, 0.0]  # of log1p(p90 ms)


def _moments(m: list[float], floor: float) -> tuple[float, float]:
    n, s, ss = m
    mean = s / n
    var = max(ss / n - mean * mean, 0.0)
    return mean, max(math.sqrt(var), floor)


def _add(m: list[float], x: float) -> None:
    m[0] += 1
    m[1] += x
    m[2] += x * x


class ReferenceSeasonalModel:
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
        self.recent_z_: dict[str, list[tuple[float, float]]] = {}  # edge -> recent bytes z
        self._horizon = 300.0
        self.edges_: dict[str, _Edge] = {}
        self.n_h_ = np.zeros(24)  # learned windows per hour of day
        self._n_total = 0.0  # n_h_.sum(), kept as a float for the hot path
        self._profiles: dict[int, float] = {}
        self.g_h_ = np.zeros(24)  # mesh-wide requests per hour of day

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

    # -- learning ----------------------------------------------------------------------------

    def learn(self, batch: WindowBatch) -> None:
        h = batch.hour
        self.n_h_[h] += 1
        self._n_total += 1.0
        self._profiles.clear()
        for w, key in zip(batch.windows, batch.keys, strict=True):
            if w.src_principal == OVERFLOW:
                continue
            e = self.edges_.get(key)
            if e is None:
                e = self.edges_[key] = _Edge(self.n_h_ - 1.0 * (np.arange(24) == h))
            x = float(w.total)
            e.learns += 1
            if e.learns >= 1.25 * e.alpha_at + 5:
                e.alpha = [None, None]
            e.tot[REQ] += x
            e.tot[ERR] += w.errors
            e.s[REQ, h] += x
            e.ss[REQ, h] += x * x
            e.s[ERR, h] += w.errors
            e.ss[ERR, h] += w.errors * w.errors
            if w.total:
                _add(e.b_out, math.log1p(w.bytes_out / w.total))
                _add(e.b_in, math.log1p(w.bytes_in / w.total))
            if w.latency_p90_ms is not None:
                _add(e.lat, math.log1p(w.latency_p90_ms))
            self.g_h_[h] += x

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

    def expected(self, e: _Edge, f: int, h: int) -> tuple[float, float]:
        """(mean, dispersion alpha) of feature ``f`` for edge ``e`` at hour ``h``."""
        total_n = self._n_total - e.born_sum  # only windows since the edge appeared
        if total_n <= 0:
            return 0.0, 1.0
        mean_e = e.tot[f] / total_n
        k = self.prior_windows
        n_hh = float(self.n_h_[h] - e.born[h])
        mu = (float(e.s[f, h]) + k * mean_e * self._profile(h)) / (n_hh + k)
        alpha = e.alpha[f]
        if alpha is None:
            e.alpha_at = e.learns
            n_h = self.n_h_ - e.born
            with np.errstate(divide="ignore", invalid="ignore"):
                m = e.s[f] / n_h
                var = e.ss[f] / n_h - m * m
                alpha_cells = (var - m) / (m * m)
            good = np.isfinite(alpha_cells) & (n_h >= 3) & (m > 0)
            raw = float(np.median(alpha_cells[good])) if good.any() else 1.0
            alpha = e.alpha[f] = min(max(raw, self.min_dispersion), 10.0)
        return mu, alpha

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
        return self._global_factor(batch)

    def _global_factor(self, batch: WindowBatch) -> tuple[float, int, int]:
        h = batch.hour
        obs = exp = 0.0
        ratios = []
        for w, key in zip(batch.windows, batch.keys, strict=True):
            e = self.edges_.get(key)
            if e is None or w.src_principal == OVERFLOW:
                continue
            mu, _ = self.expected(e, REQ, h)
            if mu < 1.0:
                continue
            obs += w.total
            exp += mu
            ratios.append(w.total / mu)
        if exp <= 0 or len(ratios) < self.global_min_edges:
            return 1.0, 0, len(ratios)
        g = obs / exp
        moving = sum(1 for r in ratios if (r > 1.2 if g > 1 else r < 1 / 1.2))
        return g, moving, len(ratios)

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
        seen: set[str] = set()
        for w, key in zip(batch.windows, batch.keys, strict=True):
            seen.add(key)
            e = self.edges_.get(key)
            if e is None or w.src_principal == OVERFLOW:
                continue
            if e.b_out[0] < self.min_history_windows:
                continue
            self._score_edge(w, key, e, h, scale, start, end, out)
        if self.drop_min_expected > 0:
            self._score_silent(seen, h, scale, start, end, out)
        return out

    def _subject(self, w: EdgeWindow) -> Subject:
        return Subject(
            principal=w.src_principal,
            src_cluster=w.src_cluster,
            dst_service=w.dst_service,
            dst_namespace=w.dst_namespace,
            dst_cluster=w.dst_cluster,
        )

    def _score_edge(
        self,
        w: EdgeWindow,
        key: str,
        e: _Edge,
        h: int,
        scale: float,
        start: float,
        end: float,
        out: list[Anomaly],
    ) -> None:
        x = float(w.total)
        mu, alpha = self.expected(e, REQ, h)
        mu *= scale
        base = {
            "hour_utc": h,
            "windows_learned": int(self.n_h_.sum()),
            "windows_at_hour": int(self.n_h_[h]),
            "global_scale": round(scale, 3),
        }
        failing = w.errors > 0.3 * max(x, 1)
        if x >= max(self.min_ratio * mu, mu + self.min_excess):
            p = nb_sf(x, mu, alpha)
            out.append(
                self._anomaly(
                    "availability" if failing else "rate_surge",
                    "SURGE",
                    w,
                    "requests",
                    x,
                    mu,
                    p,
                    {
                        **base,
                        "description": f"seasonal requests per window at {h:02d}:00 UTC",
                        "dispersion": round(alpha, 3),
                    },
                    start,
                    end,
                )
            )
        elif mu >= self.drop_min_expected and x <= mu / 4:
            p = nb_cdf(x, mu, alpha)
            out.append(
                self._anomaly(
                    "traffic_drop",
                    "DROP",
                    w,
                    "requests",
                    x,
                    mu,
                    p,
                    {**base, "description": f"seasonal requests per window at {h:02d}:00 UTC"},
                    start,
                    end,
                )
            )
        # errors
        err = float(w.errors)
        mu_e, alpha_e = self.expected(e, ERR, h)
        mu_e = mu_e * scale
        if err >= max(self.min_ratio * mu_e, mu_e + self.min_excess):
            out.append(
                self._anomaly(
                    "availability",
                    "SURGE",
                    w,
                    "errors",
                    err,
                    mu_e,
                    nb_sf(err, mu_e, alpha_e),
                    {**base, "description": f"seasonal errors per window at {h:02d}:00 UTC"},
                    start,
                    end,
                )
            )
        # bytes out (exfiltration) and in, around the expected requests x bytes per request
        # bytes out (exfiltration): log-normal around expected requests x bytes per request,
        # scored per window and, since exfiltration lasts, over the edge's recent windows
        # (Stouffer's z over the last ``accumulate_windows``): a sustained x20 is certain even
        # where one heavy-tailed window is not.
        observed = float(w.bytes_out)
        mean, sd = _moments(e.b_out, 0.25)
        per_req = math.expm1(mean)
        expected = max(mu, 1.0) * per_req
        # a few requests add Poisson noise in log space
        sd_tot = math.sqrt(sd * sd + 1.0 / max(mu, 1.0))
        z = (math.log1p(observed) - math.log1p(expected)) / sd_tot
        recent = [(t, zz) for t, zz in self.recent_z_.get(key, ()) if start - t < self._horizon]
        recent.append((start, z))
        self.recent_z_[key] = recent[-self.accumulate_windows :]
        z_sum = sum(zz for _, zz in recent[-self.accumulate_windows :])
        z_comb = z_sum / math.sqrt(len(recent[-self.accumulate_windows :]))
        if observed - expected >= self.min_bytes_excess and observed >= self.min_ratio * expected:
            n_recent = len(recent[-self.accumulate_windows :])
            out.append(
                self._anomaly(
                    "exfiltration",
                    "SURGE",
                    w,
                    "bytes_out",
                    observed,
                    expected,
                    normal_sf(max(z, z_comb)),
                    {
                        **base,
                        "description": "requests expected at this hour x bytes per request "
                        f"({per_req:.0f} B, log-sd {sd:.2f}); evidence over the last "
                        f"{n_recent} window(s) of this edge",
                        "z_window": round(z, 2),
                        "z_recent": round(z_comb, 2),
                    },
                    start,
                    end,
                )
            )
        # latency p90
        if w.latency_p90_ms is not None and e.lat[0] >= self.min_history_windows:
            mean, sd = _moments(e.lat, 0.2)
            z = (math.log1p(w.latency_p90_ms) - mean) / sd
            if z > 3 and w.latency_p90_ms > 2 * math.expm1(mean):
                out.append(
                    self._anomaly(
                        "latency",
                        "SURGE",
                        w,
                        "latency_p90_ms",
                        w.latency_p90_ms,
                        math.expm1(mean),
                        normal_sf(z),
                        {**base, "description": "p90 latency of this edge"},
                        start,
                        end,
                    )
                )

    def _score_silent(
        self, seen: set[str], h: int, scale: float, start: float, end: float, out: list[Anomaly]
    ) -> None:
        """Busy edges that went silent: only edges expecting many requests can tell."""
        if self.n_h_[h] < 3:
            return
        for key, e in self.edges_.items():
            n_h = self.n_h_[h] - e.born[h]
            if key in seen or n_h < 3 or e.s[REQ, h] / n_h < self.drop_min_expected:
                continue
            mu, alpha = self.expected(e, REQ, h)
            mu *= scale
            if mu < self.drop_min_expected:
                continue
            caller, cl, ns, svc, dcl = key.split("|")
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

    def get_state(self) -> dict[str, Any]:
        return {
            "n_h": self.n_h_.tolist(),
            "recent_z": self.recent_z_,
            "g_h": self.g_h_.tolist(),
            "edges": {
                k: [e.s.tolist(), e.ss.tolist(), e.b_out, e.b_in, e.lat, e.born.tolist()]
                for k, e in self.edges_.items()
            },
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.n_h_ = np.asarray(state["n_h"], dtype=np.float64)
        self.recent_z_ = {k: [(t, z) for t, z in v] for k, v in state.get("recent_z", {}).items()}
        self.g_h_ = np.asarray(state["g_h"], dtype=np.float64)
        self._n_total = float(self.n_h_.sum())
        self._profiles = {}
        self.edges_ = {}
        for k, (s, ss, b_out, b_in, lat, born) in state["edges"].items():
            e = _Edge(np.asarray(born, dtype=np.float64))
            e.s = np.asarray(s, dtype=np.float64)
            e.ss = np.asarray(ss, dtype=np.float64)
            e.b_out, e.b_in, e.lat = list(b_out), list(b_in), list(lat)
            e.tot = [float(e.s[REQ].sum()), float(e.s[ERR].sum())]
            self.edges_[k] = e

