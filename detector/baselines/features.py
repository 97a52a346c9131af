"""Feature views of one window time's edge windows, shared by every baseline.

Contract: ``WindowBatch`` wraps the edge windows of ONE window time (same ``window_start``) and
offers, computed once and cached, what several models need: edge keys, per-caller groupings,
the hour-of-day bin, and the multivariate feature matrix (``FEATURES`` order). Keys are plain
tuples/strings so learned state serialises to JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

import numpy as np

from detector.flows import EdgeWindow

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
    def by_caller(self) -> dict[str, list[EdgeWindow]]:
        out: dict[str, list[EdgeWindow]] = {}
        for w in self.windows:
            out.setdefault(caller_key(w), []).append(w)
        return out

    @cached_property
    def matrix(self) -> np.ndarray:
        return feature_matrix(self.windows, self.hour)


def feature_matrix(windows: Sequence[EdgeWindow], hour: int) -> np.ndarray:
    n = len(windows)
    m = np.zeros((n, len(FEATURES)), dtype=np.float64)
    ang = 2 * math.pi * hour / 24
    for i, w in enumerate(windows):
        total = max(1, w.total)
        m[i, 0] = math.log1p(w.total)
        m[i, 1] = w.errors / total
        m[i, 2] = w.denied / total
        m[i, 3] = w.unauthenticated / total
        m[i, 4] = math.log1p(w.bytes_out / total)
        m[i, 5] = math.log1p(w.bytes_in / total)
        m[i, 6] = math.log1p(w.latency_p50_ms or 0.0)
        m[i, 7] = math.log1p(w.latency_p90_ms or 0.0)
        m[i, 8] = len(w.routes)
        m[i, 9] = len(w.src_ips)
        m[i, 10] = math.sin(ang)
        m[i, 11] = math.cos(ang)
    return m
