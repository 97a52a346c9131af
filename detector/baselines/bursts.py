"""Bursts and fan-out: authentication failures per identity and per source address, and the
number of distinct destinations per identity in a window (scans and policy probing).

* Failures (denied + unauthenticated, mesh and Kubernetes API alike) per caller and per source
  address are compared with the caller's (address's) own rate, shrunk towards the mesh-wide rate
  per caller-window so a never-failing caller is not judged on zero history: negative-binomial
  tail probability, with a minimum of ``min_failures`` and ``min_ratio`` x expected.
  Finding type: ``k8s_api_abuse`` when the failures hit the Kubernetes API, otherwise
  ``auth_failure_burst`` when most are unauthenticated, else ``denied_burst``.
  An address burst is reported only when no caller burst already explains it (anonymous
  callers, or failures spread over several identities).
* Fan-out: distinct destination services of a caller in a window against its own history
  (mean and maximum): a ``scan`` when it exceeds both ``fanout_ratio`` x its maximum and its
  maximum + ``fanout_excess``; denials among those destinations make it more certain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from detector.anomalies import Anomaly, Subject
from detector.baselines.features import KUBE_APISERVER, WindowBatch
from detector.baselines.seasonal import nb_sf
from detector.flows import OVERFLOW, EdgeWindow


def _distinct(windows: Sequence[EdgeWindow], positions: list[int]) -> int:
    """Distinct destination services among the windows at ``positions``."""
    return len(
        {
            (w.dst_service, w.dst_namespace, w.dst_cluster)
            for w in map(windows.__getitem__, positions)
        }
    )


class BurstModel:
    name = "bursts"

    def __init__(
        self,
        prior_windows: float = 20.0,
        dispersion: float = 0.5,
        min_failures: int = 10,
        min_ratio: float = 3.0,
        fanout_ratio: float = 2.0,
        fanout_excess: int = 4,
    ) -> None:
        self.prior_windows = prior_windows
        self.dispersion = dispersion
        self.min_failures = min_failures
        self.min_ratio = min_ratio
        self.fanout_ratio = fanout_ratio
        self.fanout_excess = fanout_excess
        self.windows_ = 0
        self.caller_fail_: dict[str, list[float]] = {}  # key -> [failures, windows active]
        self.ip_fail_: dict[str, float] = {}
        self.fail_total_ = 0.0
        self.caller_windows_ = 0.0
        self.ip_windows_ = 0.0
        self.fanout_: dict[str, list[float]] = {}  # caller -> [sum distinct, windows, max]

    def get_params(self) -> dict[str, Any]:
        return {
            "prior_windows": self.prior_windows,
            "dispersion": self.dispersion,
            "min_failures": self.min_failures,
            "min_ratio": self.min_ratio,
            "fanout_ratio": self.fanout_ratio,
            "fanout_excess": self.fanout_excess,
        }

    # -- learning ----------------------------------------------------------------------------

    def learn(self, batch: WindowBatch) -> None:
        self.windows_ += 1
        windows = batch.windows
        for caller, positions in batch.caller_positions.items():
            if caller.startswith(OVERFLOW):
                continue
            fails = float(sum(windows[i].denied + windows[i].unauthenticated for i in positions))
            c = self.caller_fail_.setdefault(caller, [0.0, 0.0])
            c[0] += fails
            c[1] += 1
            self.fail_total_ += fails
            self.caller_windows_ += 1
            dests = len(positions) if len(positions) == 1 else _distinct(windows, positions)
            f = self.fanout_.setdefault(caller, [0.0, 0.0, 0.0])
            f[0] += dests
            f[1] += 1
            f[2] = max(f[2], dests)
        for ip, n in self._batch_ip_failures(batch).items():
            self.ip_fail_[ip] = self.ip_fail_.get(ip, 0.0) + n
            self.ip_windows_ += 1

    def _batch_ip_failures(self, batch: WindowBatch) -> dict[str, float]:
        """``_ip_failures`` of the batch, worked out once for scoring and learning."""
        cached = batch._cache.get("ip_failures")
        if cached is None:
            cached = batch._cache["ip_failures"] = self._ip_failures(batch.windows)
        return cached  # type: ignore[return-value]

    @staticmethod
    def _ip_failures(windows: list[EdgeWindow] | Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for w in windows:
            for ip, n in w.failures_by_ip.items():
                out[ip] = out.get(ip, 0.0) + n
        return out

    # -- scoring -----------------------------------------------------------------------------

    def _expected_caller(self, caller: str, mesh: float) -> float:
        """Expected failures of ``caller`` per window; ``mesh``: the mesh-wide rate per
        caller-window (``fail_total_ / caller_windows_``)."""
        c = self.caller_fail_.get(caller)
        k = self.prior_windows
        if c is None:
            return mesh
        # a caller's rate per window it was active, shrunk towards the mesh-wide rate
        return (c[0] + k * mesh) / (c[1] + k)

    def score(self, batch: WindowBatch) -> list[Anomaly]:
        out: list[Anomaly] = []
        start, end = batch.window_start, batch.window_end
        explained_ips: set[str] = set()
        windows = batch.windows
        mesh = self.fail_total_ / self.caller_windows_ if self.caller_windows_ else 0.0
        floor = float(self.min_failures)
        for caller, positions in batch.caller_positions.items():
            principal, cluster = caller.rsplit("|", 1)
            if principal == OVERFLOW:
                continue
            unauth = denied = 0
            for i in positions:
                w = windows[i]
                unauth += w.unauthenticated
                denied += w.denied
            x = float(unauth + denied)
            # the cheap test first: below ``min_failures`` no expectation can make it a burst
            if x >= floor and principal != "anonymous":
                mu = max(self._expected_caller(caller, mesh), 0.05)
                if x >= max(self.min_failures, self.min_ratio * mu):
                    ws = [windows[i] for i in positions]
                    is_api = sum(
                        w.total for w in ws if w.dst_service == KUBE_APISERVER
                    ) > 0.5 * sum(w.total for w in ws)
                    for w in ws:
                        explained_ips.update(w.failures_by_ip)
                    out.append(
                        self._failure_anomaly(
                            Subject(principal=principal, src_cluster=cluster),
                            x,
                            mu,
                            unauth,
                            denied,
                            is_api,
                            ws,
                            start,
                            end,
                            per="identity",
                        )
                    )
            self._score_fanout(caller, principal, cluster, windows, positions, start, end, out)
        by_ip = self._batch_ip_failures(batch)
        mesh_ip = sum(self.ip_fail_.values()) / self.ip_windows_ if self.ip_windows_ else 0.0
        for ip, x in by_ip.items():
            if ip in explained_ips:
                continue
            hist = self.ip_fail_.get(ip, 0.0)
            mu = max(
                (hist + self.prior_windows * mesh_ip) / (self.windows_ + self.prior_windows), 0.05
            )
            if x < max(self.min_failures, self.min_ratio * mu):
                continue
            ws = [w for w in batch.windows if ip in w.failures_by_ip]
            unauth = sum(w.unauthenticated for w in ws)
            denied = sum(w.denied for w in ws)
            is_api = all(w.dst_service == KUBE_APISERVER for w in ws)
            clusters = {w.src_cluster for w in ws}
            out.append(
                self._failure_anomaly(
                    Subject(src_ip=ip, src_cluster=clusters.pop() if len(clusters) == 1 else None),
                    x,
                    mu,
                    unauth,
                    denied,
                    is_api,
                    ws,
                    start,
                    end,
                    per="source address",
                )
            )
        return out

    def _failure_anomaly(
        self,
        subject: Subject,
        x: float,
        mu: float,
        unauth: int,
        denied: int,
        is_api: bool,
        ws: list[EdgeWindow],
        start: float,
        end: float,
        per: str,
    ) -> Anomaly:
        if is_api:
            ftype = "k8s_api_abuse"
        elif unauth >= denied:
            ftype = "auth_failure_burst"
        else:
            ftype = "denied_burst"
        p = nb_sf(x, mu, self.dispersion)
        return Anomaly(
            finding_type=ftype,
            pattern="BURST",
            subject=subject,
            window_start=start,
            window_end=end,
            model=self.name,
            feature="auth_failures",
            observed=x,
            expected=round(mu, 3),
            p_value=p,
            baseline={
                "description": f"failures per window of this {per}, shrunk to the mesh-wide rate",
                "windows_learned": self.windows_,
            },
            contributions=(("unauthenticated", unauth / max(x, 1)), ("denied", denied / max(x, 1))),
            evidence={
                "unauthenticated": unauth,
                "denied": denied,
                "targets": sorted({f"{w.dst_service}@{w.dst_cluster}" for w in ws})[:10],
                "src_ips": sorted({ip for w in ws for ip in w.failures_by_ip})[:10],
                "routes": sorted({r for w in ws for r in w.routes})[:10],
            },
            confidence=0.8,
        )

    def _score_fanout(
        self,
        caller: str,
        principal: str,
        cluster: str,
        windows: Sequence[EdgeWindow],
        positions: list[int],
        start: float,
        end: float,
        out: list[Anomaly],
    ) -> None:
        f = self.fanout_.get(caller)
        mean, mx = (f[0] / f[1], f[2]) if f else (1.0, 1.0)
        bound = max(self.fanout_ratio * mx, mx + self.fanout_excess)
        if len(positions) < bound:
            return  # fewer windows than the bound: fewer distinct destinations too
        ws = [windows[i] for i in positions]
        dests = {(w.dst_service, w.dst_namespace, w.dst_cluster) for w in ws}
        d = len(dests)
        if d < bound:
            return
        denied = sum(w.denied + w.unauthenticated for w in ws)
        if f is None and not denied:
            return  # a new workload calling its dependencies is a rollout, not a scan
        p = nb_sf(d, max(mean, 1.0), 0.1)
        if denied:
            p /= 10
        out.append(
            Anomaly(
                finding_type="scan",
                pattern="FANOUT",
                subject=Subject(principal=principal, src_cluster=cluster),
                window_start=start,
                window_end=end,
                model=self.name,
                feature="distinct_destinations",
                observed=float(d),
                expected=round(mean, 2),
                p_value=p,
                baseline={
                    "description": "distinct destinations per window of this identity",
                    "historical_max": mx,
                    "windows_learned": int(f[1]) if f else 0,
                },
                contributions=(("distinct_destinations", 0.7), ("denied", 0.3 if denied else 0.0)),
                evidence={
                    "destinations": sorted(f"{s}.{n}@{c}" for s, n, c in dests)[:20],
                    "denied_or_unauthenticated": denied,
                },
                confidence=0.8,
            )
        )

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "windows": self.windows_,
            "caller_fail": self.caller_fail_,
            "ip_fail": self.ip_fail_,
            "fail_total": self.fail_total_,
            "caller_windows": self.caller_windows_,
            "ip_windows": self.ip_windows_,
            "fanout": self.fanout_,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.windows_ = state["windows"]
        self.caller_fail_ = {k: list(v) for k, v in state["caller_fail"].items()}
        self.ip_fail_ = dict(state["ip_fail"])
        self.fail_total_ = state["fail_total"]
        self.caller_windows_ = state["caller_windows"]
        self.ip_windows_ = state["ip_windows"]
        self.fanout_ = {k: list(v) for k, v in state["fanout"].items()}
