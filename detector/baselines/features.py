"""Feature views of one window time's edge windows, shared by every baseline.

Contract: ``WindowBatch`` wraps the edge windows of ONE window time (same ``window_start``) and
offers, computed once and cached, what several models need: edge keys, destination service
keys, per-caller groupings (as positions and as windows), the hour-of-day bin, per-window counts
as float arrays (requests, errors, bytes out, which windows are real edges and which carry a
latency) and the multivariate feature matrix (``FEATURES`` order). Models score a window time
with array operations over these instead of a loop per window. ``subset(positions)`` is the
batch of some of its windows, keeping what was already computed. Keys are plain strings so
learned state serialises to JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

import numpy as np

from detector.flows import OVERFLOW, EdgeWindow

KUBE_APISERVER: Final = "kube-apiserver"

FEATURES: Final = (
    "log_requests",
    "error_ratio",
    "denied_ratio",
    "unauthenticated_ratio",
    "log_bytes_out_per_req",
    "log_bytes_in_per_req",
    "log_latency_p50",
    "log_latency_p90",
    "routes",
    "src_ips",
    "hour_sin",
    "hour_cos",
)


def edge_key(w: EdgeWindow) -> str:
    """A stable string key of the edge (JSON-friendly)."""
    return f"{w.src_principal}|{w.src_cluster}|{w.dst_namespace}|{w.dst_service}|{w.dst_cluster}"


def caller_key(w: EdgeWindow) -> str:
    return f"{w.src_principal}|{w.src_cluster}"


def service_key(w: EdgeWindow) -> str:
    return f"{w.dst_service}|{w.dst_namespace}|{w.dst_cluster}"


def hour_of_day(ts: float) -> int:
    return int(ts // 3600) % 24


def day_of_week(ts: float) -> int:
    return (int(ts // 86400) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0


@dataclass
class WindowBatch:
    windows: Sequence[EdgeWindow]
    window_start: float
    window_s: float
    _cache: dict[str, object] = field(default_factory=dict, repr=False)
    # observed/expected mesh-wide traffic when most edges moved together (else 1): set by the
    # scorer before the models run, so every model can discount what more traffic explains
    traffic_scale: float = 1.0

    @classmethod
    def of(cls, windows: Sequence[EdgeWindow]) -> WindowBatch:
        if not windows:
            raise ValueError("empty window batch")
        w0 = windows[0]
        return cls(windows, w0.window_start, w0.window_end - w0.window_start)

    def subset(self, positions: Sequence[int]) -> WindowBatch:
        """The batch of the windows at ``positions`` (same window time), keeping what was
        already computed for them (keys, feature rows, counts) instead of computing it again."""
        sub = WindowBatch([self.windows[i] for i in positions], self.window_start, self.window_s)
        done = self.__dict__
        for name in ("keys", "services"):
            if name in done:
                sub.__dict__[name] = [done[name][i] for i in positions]
        idx = np.asarray(positions, dtype=np.intp)
        for name in ("matrix", "totals", "errors", "bytes_out", "regular", "has_latency"):
            if name in done:
                sub.__dict__[name] = done[name][idx]
        return sub

    @property
    def window_end(self) -> float:
        return self.window_start + self.window_s

    @cached_property
    def hour(self) -> int:
        return hour_of_day(self.window_start)

    @cached_property
    def keys(self) -> list[str]:
        return [edge_key(w) for w in self.windows]

    @cached_property
    def services(self) -> list[str]:
        """``service_key``-like destination of each window: ``svc|namespace|cluster``."""
        return [f"{w.dst_service}|{w.dst_namespace}|{w.dst_cluster}" for w in self.windows]

    @cached_property
    def caller_positions(self) -> dict[str, list[int]]:
        """Caller key -> positions of its windows, callers in order of first appearance."""
        out: dict[str, list[int]] = {}
        for i, w in enumerate(self.windows):
            key = f"{w.src_principal}|{w.src_cluster}"
            group = out.get(key)
            if group is None:
                out[key] = [i]
            else:
                group.append(i)
        return out

    @cached_property
    def by_caller(self) -> dict[str, list[EdgeWindow]]:
        ws = self.windows
        return {c: [ws[i] for i in pos] for c, pos in self.caller_positions.items()}

    @cached_property
    def matrix(self) -> np.ndarray:
        return feature_matrix(self.windows, self.hour)

    @cached_property
    def totals(self) -> np.ndarray:
        """Requests + connections + API calls per window, as float64."""
        return np.array([w.total for w in self.windows], dtype=np.float64)

    @cached_property
    def errors(self) -> np.ndarray:
        return np.array([w.errors for w in self.windows], dtype=np.float64)

    @cached_property
    def bytes_out(self) -> np.ndarray:
        return np.array([w.bytes_out for w in self.windows], dtype=np.float64)

    @cached_property
    def regular(self) -> np.ndarray:
        """Windows of real edges (not the overflow bucket of edges beyond the table size)."""
        return np.array([w.src_principal != OVERFLOW for w in self.windows], dtype=bool)

    @cached_property
    def has_latency(self) -> np.ndarray:
        """Windows with a p90 latency (column 7 of ``matrix`` is 0 for the others)."""
        return np.array([w.latency_p90_ms is not None for w in self.windows], dtype=bool)


def feature_matrix(windows: Sequence[EdgeWindow], hour: int) -> np.ndarray:
    """The ``FEATURES`` of each window, one row per window.

    Divisions and ratios are done by numpy over the whole batch (IEEE division is exact
    either way); ``log1p`` goes through ``math`` per value, because numpy's vectorised
    ``log1p`` may differ in the last bit and these rows are what the forest was fitted on."""
    n = len(windows)
    m = np.zeros((n, len(FEATURES)), dtype=np.float64)
    if not n:
        return m
    f64 = np.float64
    # one flat list per attribute: numpy converts those far faster than rows of tuples
    total = np.array([w.requests + w.connections + w.api_calls for w in windows], dtype=f64)
    per = np.maximum(total, 1.0)
    log1p = math.log1p
    m[:, 0] = [log1p(v) for v in total.tolist()]
    m[:, 1] = np.array([w.errors for w in windows], dtype=f64) / per
    m[:, 2] = np.array([w.denied for w in windows], dtype=f64) / per
    m[:, 3] = np.array([w.unauthenticated for w in windows], dtype=f64) / per
    b_out = np.array([w.bytes_out for w in windows], dtype=f64) / per
    m[:, 4] = [log1p(v) for v in b_out.tolist()]
    b_in = np.array([w.bytes_in for w in windows], dtype=f64) / per
    m[:, 5] = [log1p(v) for v in b_in.tolist()]
    m[:, 6] = [log1p(w.latency_p50_ms or 0.0) for w in windows]
    m[:, 7] = [log1p(w.latency_p90_ms or 0.0) for w in windows]
    m[:, 8] = [len(w.routes) for w in windows]
    m[:, 9] = [len(w.src_ips) for w in windows]
    ang = 2 * math.pi * hour / 24
    m[:, 10] = math.sin(ang)
    m[:, 11] = math.cos(ang)
    return m
