"""Novelty: edges, identities-in-a-cluster and routes never (or rarely) seen. Patterns UNSEEN, RARE.

The model remembers every edge, every cluster each principal has called from, every destination
service and the routes called on each. What is new is judged by who does it:

* a known principal appearing from a cluster it was never seen in -> ``credential_replay``
  (clusters share a trust domain, so the same SPIFFE id elsewhere is a stolen credential);
* a known caller reaching a known service it never called -> ``new_edge``, or
  ``lateral_movement`` when it reaches several at once or crosses into a cluster it never called;
* a never-seen principal, or a never-seen destination service, is a rollout until proven
  otherwise (other models still watch its failures and volumes): no finding;
* a new route on a known edge -> ``new_route`` (``k8s_api_abuse`` on the Kubernetes API);
* an edge seen in fewer than ``rare_windows`` windows and not for ``rare_gap_s`` -> ``rare_edge``.

Raw p-values come from base rates measured while learning (after ``warmup_windows``): how often a
known caller starts a new edge or a new route in a window. Several new destinations in one
window multiply (capped at three), crossing clusters and being denied each divide by ten.
"""

from __future__ import annotations

from typing import Any

from detector.anomalies import Anomaly, Subject
from detector.baselines.features import KUBE_APISERVER, WindowBatch
from detector.flows import ANONYMOUS, OVERFLOW, EdgeWindow
from detector.records import UNKNOWN

_SKIP_CALLERS = frozenset({ANONYMOUS, OVERFLOW})
_NONE: frozenset[str] = frozenset()


class NoveltyModel:
    name = "novelty"

    def __init__(
        self,
        warmup_windows: int = 60,
        rare_windows: int = 3,
        rare_gap_s: float = 86_400.0,
        memory_s: float = 900.0,
    ) -> None:
        self.warmup_windows = warmup_windows
        self.rare_windows = rare_windows
        self.rare_gap_s = rare_gap_s
        self.memory_s = memory_s
        # caller -> {new destination -> last window start}: slow lateral movement adds up
        # over ``memory_s`` instead of showing one new destination per window
        self.recent_new_: dict[str, dict[str, float]] = {}
        self.edges_: dict[str, list[float]] = {}  # key -> [windows seen, first ts, last ts]
        self.principal_clusters_: dict[str, set[str]] = {}
        self.caller_dests_: dict[str, set[str]] = {}  # "p|cluster" -> {"svc|ns|cluster"}
        self.services_: set[str] = set()
        self.routes_: dict[str, set[str]] = {}  # "svc|ns|cluster" -> {"GET /x/{id}"}
        self.service_windows_: dict[str, int] = {}
        self.windows_seen_ = 0
        self.caller_windows_ = 0
        self.new_edge_events_ = 0
        self.new_cluster_events_ = 0
        self.edge_windows_ = 0
        self.new_route_events_ = 0

    def get_params(self) -> dict[str, Any]:
        return {
            "warmup_windows": self.warmup_windows,
            "rare_windows": self.rare_windows,
            "rare_gap_s": self.rare_gap_s,
            "memory_s": self.memory_s,
        }

    # -- base rates --------------------------------------------------------------------------

    @property
    def p_new_edge(self) -> float:
        return (self.new_edge_events_ + 1) / (self.caller_windows_ + 2)

    @property
    def p_new_cluster(self) -> float:
        return (self.new_cluster_events_ + 1) / (self.caller_windows_ + 2)

    @property
    def p_new_route(self) -> float:
        return (self.new_route_events_ + 1) / (self.edge_windows_ + 2)

    # -- learning ----------------------------------------------------------------------------

    def learn(self, batch: WindowBatch) -> None:
        counting = self.windows_seen_ >= self.warmup_windows
        self.windows_seen_ += 1
        ts = batch.window_start
        windows, keys, services = batch.windows, batch.keys, batch.services
        known_services = self.services_
        edges = self.edges_
        routes_of = self.routes_
        service_windows = self.service_windows_
        counting_routes = 0  # edge windows of warmed-up services, and those with a new route
        new_routes = 0
        for caller, positions in batch.caller_positions.items():
            principal, cluster = caller.rsplit("|", 1)
            if principal in _SKIP_CALLERS:
                continue
            known_caller = caller in self.caller_dests_
            clusters = self.principal_clusters_.setdefault(principal, set())
            if counting:
                self.caller_windows_ += 1
                if clusters and cluster not in clusters:
                    self.new_cluster_events_ += 1
            clusters.add(cluster)
            dests = self.caller_dests_.setdefault(caller, set())
            new_edge = False
            for i in positions:
                svc = services[i]
                if svc not in dests:
                    if known_caller and svc in known_services:
                        new_edge = True
                    dests.add(svc)
                # the edge: windows seen, first and last window start
                key = keys[i]
                e = edges.get(key)
                if e is None:
                    edges[key] = [1, ts, ts]
                else:
                    e[0] += 1
                    e[2] = ts
                # routes of the service; new-route base rate once the service is warmed up
                routes = windows[i].routes
                known = routes_of.get(svc)
                if known is None:
                    known = routes_of[svc] = set()
                history = service_windows.get(svc, 0)
                service_windows[svc] = history + 1
                if counting and history >= self.warmup_windows:
                    counting_routes += 1
                    if routes.keys() <= known:
                        continue  # nothing new to remember either
                    new_routes += 1
                known.update(routes)
            if counting and new_edge:
                self.new_edge_events_ += 1
        self.edge_windows_ += counting_routes
        self.new_route_events_ += new_routes
        known_services.update(services)

    # -- scoring -----------------------------------------------------------------------------

    def score(self, batch: WindowBatch) -> list[Anomaly]:
        out: list[Anomaly] = []
        ws0, we0 = batch.window_start, batch.window_end
        windows, keys, services = batch.windows, batch.keys, batch.services
        edges, routes_of, rare_windows = self.edges_, self.routes_, self.rare_windows
        for caller, positions in batch.caller_positions.items():
            principal, cluster = caller.rsplit("|", 1)
            if principal in _SKIP_CALLERS:
                continue
            dests = self.caller_dests_.get(caller)
            if dests is None:
                known_clusters = self.principal_clusters_.get(principal)
                if known_clusters and cluster != UNKNOWN and cluster not in known_clusters:
                    ws = [windows[i] for i in positions]
                    out.append(self._replay(principal, cluster, known_clusters, ws, ws0, we0))
                continue  # a brand-new identity: a rollout until other models say otherwise
            new: list[EdgeWindow] = []
            for i in positions:
                svc = services[i]
                if svc in dests:
                    # the common case, inline: a frequent edge using routes known on its
                    # service says nothing (``_score_known_edge`` makes the same tests first)
                    e = edges.get(keys[i])
                    if (
                        e is not None
                        and e[0] >= rare_windows
                        and windows[i].routes.keys() <= routes_of.get(svc, _NONE)
                    ):
                        continue
                    self._score_known_edge(windows[i], keys[i], svc, ws0, we0, out)
                elif svc in self.services_:
                    new.append(windows[i])
            if new:
                called_clusters = {d.rsplit("|", 1)[1] for d in dests}
                recent = self.recent_new_.setdefault(caller, {})
                for key in [k for k, t in recent.items() if ws0 - t > self.memory_s]:
                    del recent[key]
                for w in new:
                    recent[f"{w.dst_service}.{w.dst_namespace}@{w.dst_cluster}"] = ws0
                out.append(
                    self._new_edges(
                        principal,
                        cluster,
                        new,
                        called_clusters,
                        ws0,
                        we0,
                        recent,
                        batch.traffic_scale,
                    )
                )
        return out

    def _replay(
        self,
        principal: str,
        cluster: str,
        known: set[str],
        ws: list[EdgeWindow],
        start: float,
        end: float,
    ) -> Anomaly:
        p = self.p_new_cluster
        if any(w.denied or w.unauthenticated for w in ws):
            p /= 10
        requests = sum(w.total for w in ws)
        return Anomaly(
            finding_type="credential_replay",
            pattern="UNSEEN",
            subject=Subject(principal=principal, src_cluster=cluster),
            window_start=start,
            window_end=end,
            model=self.name,
            feature="identity_in_cluster",
            observed=1.0,
            expected=0.0,
            p_value=p,
            baseline={
                "description": f"{principal} was only ever seen in {', '.join(sorted(known))}",
                "known_clusters": sorted(known),
                "windows_learned": self.windows_seen_,
                "rate_new_cluster_per_caller_window": p,
            },
            evidence={
                "requests": requests,
                "destinations": sorted({f"{w.dst_service}@{w.dst_cluster}" for w in ws}),
                "src_ips": sorted({ip for w in ws for ip in w.src_ips})[:10],
            },
            confidence=0.9,
        )

    def _new_edges(
        self,
        principal: str,
        cluster: str,
        new: list[EdgeWindow],
        called_clusters: set[str],
        start: float,
        end: float,
        recent: dict[str, float],
        batch_scale: float = 1.0,
    ) -> Anomaly:
        k = max(len(new), len(recent))  # new destinations in this window and the last minutes
        # a rarely used edge is likelier to show up when the whole mesh carries more traffic
        p = min(1.0, self.p_new_edge * max(1.0, batch_scale)) ** min(k, 3)
        cross = [
            w for w in new if w.dst_cluster != cluster and w.dst_cluster not in called_clusters
        ]
        if cross:
            p /= 10
        denied = sum(w.denied + w.unauthenticated for w in new)
        if denied:
            p /= 10
        lateral = k >= 2 or bool(cross)
        n_known = len(self.caller_dests_.get(f"{principal}|{cluster}", ()))
        top = max(new, key=lambda w: w.total)
        subject = Subject(principal=principal, src_cluster=cluster)
        if not lateral:
            subject = Subject(
                principal=principal,
                src_cluster=cluster,
                dst_service=top.dst_service,
                dst_namespace=top.dst_namespace,
                dst_cluster=top.dst_cluster,
            )
        # new API namespaces/verbs are abuse when refused or reaching secrets, else just new
        is_api = all(w.dst_service == KUBE_APISERVER for w in new) and (
            bool(denied) or any("secrets" in r for w in new for r in w.routes)
        )
        return Anomaly(
            finding_type="k8s_api_abuse"
            if is_api
            else ("lateral_movement" if lateral else "new_edge"),
            pattern="UNSEEN",
            subject=subject,
            window_start=start,
            window_end=end,
            model=self.name,
            feature="new_destinations",
            observed=float(k),
            expected=0.0,
            p_value=p,
            baseline={
                "description": (
                    f"{principal}@{cluster} had called {n_known} services in "
                    f"{', '.join(sorted(called_clusters))}"
                ),
                "rate_new_edge_per_caller_window": self.p_new_edge,
                "windows_learned": self.windows_seen_,
            },
            contributions=(
                ("new_destinations", 0.6),
                ("cross_cluster", 0.25 if cross else 0.0),
                ("denied", 0.15 if denied else 0.0),
            ),
            evidence={
                "new_destinations_recent": sorted(recent)[:20],
                "new_destinations": [
                    f"{w.dst_service}.{w.dst_namespace}@{w.dst_cluster}" for w in new
                ],
                "cross_cluster": bool(cross),
                "requests": sum(w.total for w in new),
                "denied_or_unauthenticated": denied,
                "routes": sorted({r for w in new for r in w.routes})[:10],
            },
            confidence=0.8 if lateral else 0.5,
        )

    def _score_known_edge(
        self, w: EdgeWindow, key: str, svc: str, start: float, end: float, out: list[Anomaly]
    ) -> None:
        e = self.edges_.get(key)
        rare = e is not None and e[0] < self.rare_windows and start - e[2] >= self.rare_gap_s
        known = self.routes_.get(svc, set())
        # the common case, every route known and the edge not a rare one: nothing to say
        if not rare and w.routes.keys() <= known:
            return
        subject = Subject(
            principal=w.src_principal,
            src_cluster=w.src_cluster,
            dst_service=w.dst_service,
            dst_namespace=w.dst_namespace,
            dst_cluster=w.dst_cluster,
        )
        if self.service_windows_.get(svc, 0) >= self.warmup_windows:
            new_routes = [r for r in w.routes if r not in known and not r.endswith("{other}")]
            if new_routes:
                p = self.p_new_route ** min(len(new_routes), 3)
                if w.denied or w.unauthenticated:
                    p /= 10
                # On the API server a new verb/resource is abuse when it was refused or reaches
                # secrets; a controller creating a new kind of object is change, not abuse.
                abuse = w.dst_service == KUBE_APISERVER and (
                    bool(w.denied or w.unauthenticated) or any("secrets" in r for r in new_routes)
                )
                out.append(
                    Anomaly(
                        finding_type="k8s_api_abuse" if abuse else "new_route",
                        pattern="UNSEEN",
                        subject=subject,
                        window_start=start,
                        window_end=end,
                        model=self.name,
                        feature="new_routes",
                        observed=float(len(new_routes)),
                        expected=0.0,
                        p_value=p,
                        baseline={
                            "description": f"{len(known)} routes known on {w.dst_service}",
                            "rate_new_route_per_edge_window": self.p_new_route,
                        },
                        evidence={
                            "new_routes": new_routes[:10],
                            "denied": w.denied,
                            "unauthenticated": w.unauthenticated,
                        },
                        confidence=0.5,
                    )
                )
        if rare and e is not None:
            p = (e[0] + 1) / (self.windows_seen_ + 2)
            out.append(
                Anomaly(
                    finding_type="rare_edge",
                    pattern="RARE",
                    subject=subject,
                    window_start=start,
                    window_end=end,
                    model=self.name,
                    feature="windows_seen",
                    observed=float(e[0]),
                    expected=float(self.windows_seen_),
                    p_value=p,
                    baseline={
                        "description": f"seen in {int(e[0])} of {self.windows_seen_} windows",
                        "last_seen": e[2],
                    },
                    confidence=0.3,
                )
            )

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "edges": self.edges_,
            "principal_clusters": {k: sorted(v) for k, v in self.principal_clusters_.items()},
            "caller_dests": {k: sorted(v) for k, v in self.caller_dests_.items()},
            "services": sorted(self.services_),
            "routes": {k: sorted(v) for k, v in self.routes_.items()},
            "service_windows": self.service_windows_,
            "recent_new": self.recent_new_,
            "counters": [
                self.windows_seen_,
                self.caller_windows_,
                self.new_edge_events_,
                self.new_cluster_events_,
                self.edge_windows_,
                self.new_route_events_,
            ],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.edges_ = {k: list(v) for k, v in state["edges"].items()}
        self.principal_clusters_ = {k: set(v) for k, v in state["principal_clusters"].items()}
        self.caller_dests_ = {k: set(v) for k, v in state["caller_dests"].items()}
        self.services_ = set(state["services"])
        self.routes_ = {k: set(v) for k, v in state["routes"].items()}
        self.service_windows_ = dict(state["service_windows"])
        self.recent_new_ = {k: dict(v) for k, v in state.get("recent_new", {}).items()}
        (
            self.windows_seen_,
            self.caller_windows_,
            self.new_edge_events_,
            self.new_cluster_events_,
            self.edge_windows_,
            self.new_route_events_,
        ) = state["counters"]
