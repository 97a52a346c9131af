"""Scenarios: attacks and benign traps injected into simulated traffic, with ground truth.

Contract:
* A ``Scenario`` has a name, a kind (``attack`` or ``trap``: a trap must NOT raise a security
  finding), an event-time window ``[start, start + duration_s)`` and an ``intensity`` (1.0 =
  the documented default strength). ``apply(mesh)`` adds the scenario's workloads, edges and API
  clients to the mesh (edges and clients exist only inside the window, except a rollout, which
  stays) and returns ``Modifier``s that change existing traffic inside the window.
* ``label()`` is the ground truth: the principals as ``principal@cluster`` (Kubernetes users for
  API abuse) and services as ``service.namespace@cluster`` that an evaluation should attribute
  the scenario to. ``labels_jsonl`` writes one label per line.
* Scenarios are plain data: applying the same scenarios to the same mesh gives the same traffic.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import orjson

from detector.simulation.topology import (
    INF,
    ApiAction,
    ApiClient,
    Edge,
    Mesh,
    Route,
    ServiceDef,
    Workload,
    spiffe,
)

ATTACK: Final = "attack"
TRAP: Final = "trap"


@dataclass(slots=True)
class Modifier:
    """A change to existing edges inside an event-time window."""

    start: float
    end: float
    edges: frozenset[int] | None  # ids (``id(edge)``) of the edges it touches; None = all
    rate_factor: float = 1.0
    ramp_to: float | None = None  # the rate factor grows linearly from 1 to this over the window
    bytes_out_factor: float = 1.0
    latency_factor: float = 1.0
    p_uf: float | None = None  # share of requests failing 503 UF (the app is down)
    seasonal_only: bool = False  # touch only seasonal (organic) edges


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _svc(w: Workload) -> str:
    return f"{w.name}.{w.namespace}@{w.cluster}"


def _who(w: Workload) -> str:
    return f"{w.principal}@{w.cluster}"


@dataclass
class Scenario:
    start: float
    duration_s: float = 1800.0
    intensity: float = 1.0
    principals: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    name: ClassVar[str] = "scenario"
    kind: ClassVar[str] = ATTACK
    description: ClassVar[str] = ""

    @property
    def end(self) -> float:
        return self.start + self.duration_s

    def apply(self, mesh: Mesh) -> list[Modifier]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {"duration_s": self.duration_s, "intensity": self.intensity}

    def label(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "kind": self.kind,
            "start": iso(self.start),
            "end": iso(self.end),
            "start_ts": self.start,
            "end_ts": self.end,
            "principals": sorted(set(self.principals)),
            "services": sorted(set(self.services)),
            "params": self.params(),
            "description": self.description,
        }

    def _edge(self, mesh: Mesh, src: Workload, dst: Workload, rate: float, **kw: Any) -> Edge:
        e = Edge(src, dst, rate, seasonal=False, p_error=0.002, window=(self.start, self.end),
                 fmt="envoy_json", **kw)  # fmt: skip
        self.services.append(_svc(dst))
        return mesh.add_edge(e)


def _edge_between(mesh: Mesh, src: Workload, dst: Workload) -> Edge:
    for e in mesh.edges:
        if e.src is src and e.dst is dst:
            return e
    raise KeyError(f"no edge {src.key} -> {dst.key}")


@dataclass
class LateralMovement(Scenario):
    """A compromised workload calls services it never called, in other clusters."""

    name: ClassVar[str] = "lateral_movement"
    description: ClassVar[str] = (
        "recommendations@prod-eu calls never-seen services in prod-us and prod-eu (2xx)"
    )
    source: tuple[str, str] = ("recommendations", "prod-eu")
    targets: tuple[tuple[str, str], ...] = (
        ("payments-api", "prod-us"), ("ledger", "prod-us"), ("user-profile", "prod-us"),
        ("session-store", "prod-eu"), ("config-server", "prod-us"),
    )  # fmt: skip
    rate: float = 0.05  # req/s per target at intensity 1

    def apply(self, mesh: Mesh) -> list[Modifier]:
        src = mesh.workload(*self.source)
        self.principals.append(_who(src))
        for t in self.targets:
            self._edge(mesh, src, mesh.workload(*t), self.rate * self.intensity)
        return []


@dataclass
class CredentialReplay(Scenario):
    """A workload's SPIFFE credential used from a cluster where that identity never runs."""

    name: ClassVar[str] = "credential_replay"
    description: ClassVar[str] = (
        "reporting's SVID (deployed only in prod-eu) replayed from a pod in staging against "
        "reporting's usual destinations"
    )
    identity: tuple[str, str] = ("reporting", "prod-eu")
    from_cluster: str = "staging"
    rate: float = 0.08

    def apply(self, mesh: Mesh) -> list[Modifier]:
        real = mesh.workload(*self.identity)
        ip = mesh.ip_in(self.from_cluster, "replay-attacker")
        fake = Workload(real.svc, self.from_cluster, [ip], ["debug-7d9f8c6b5d-x2k4q"], real.sa)
        self.principals.append(_who(fake))
        for e in [e for e in mesh.edges if e.src is real]:
            self._edge(mesh, fake, e.dst, self.rate * self.intensity, route_idx=e.route_idx)
        return []


@dataclass
class Exfiltration(Scenario):
    """A known edge suddenly pulls far more data (bytes_sent by the server) than usual."""

    name: ClassVar[str] = "exfiltration"
    description: ClassVar[str] = "etl-worker@prod-us pulls ~40x the usual bytes from ledger"
    source: tuple[str, str] = ("etl-worker", "prod-us")
    target: tuple[str, str] = ("ledger", "prod-us")
    bytes_factor: float = 40.0
    rate_factor: float = 2.0

    def apply(self, mesh: Mesh) -> list[Modifier]:
        src, dst = mesh.workload(*self.source), mesh.workload(*self.target)
        e = _edge_between(mesh, src, dst)
        self.principals.append(_who(src))
        self.services.append(_svc(dst))
        return [Modifier(self.start, self.end, frozenset({id(e)}),
                         rate_factor=self.rate_factor,
                         bytes_out_factor=self.bytes_factor * self.intensity)]  # fmt: skip

    def params(self) -> dict[str, Any]:
        return {**super().params(), "bytes_factor": self.bytes_factor}


ATTACKER_IPS: Final = tuple(f"185.220.101.{i}" for i in range(3, 40))


@dataclass
class CredentialStuffing(Scenario):
    """A 401 storm on the login route, from a few outside addresses through the gateway."""

    name: ClassVar[str] = "credential_stuffing"
    description: ClassVar[str] = (
        "istio-ingressgateway@prod-us forwards a login storm to auth-server: ~95% 401"
    )
    cluster: str = "prod-us"
    rate: float = 6.0

    def apply(self, mesh: Mesh) -> list[Modifier]:
        gw = mesh.workload("istio-ingressgateway", self.cluster)
        auth = mesh.workload("auth-server", self.cluster)
        login = next(i for i, r in enumerate(auth.svc.routes) if r.template == "/api/v1/login")
        self.principals.append(_who(gw))
        self._edge(mesh, gw, auth, self.rate * self.intensity, route_idx=(login,),
                   p_app401=0.95, xff=ATTACKER_IPS)  # fmt: skip
        return []


_PROBE_PATHS: Final = (
    "/", "/admin", "/actuator/env", "/.env", "/api/v1/users", "/metrics", "/debug/pprof/",
    "/swagger.json", "/api/v1/secrets", "/v2/_catalog",
)  # fmt: skip


@dataclass
class PolicyProbing(Scenario):
    """A debug pod fans out to many services in other clusters and is mostly denied (403)."""

    name: ClassVar[str] = "policy_probing"
    description: ClassVar[str] = (
        "netshoot (qa, staging) scans ~20 prod services; RBAC 403s and some plaintext NR"
    )
    cluster: str = "staging"
    n_targets: int = 20
    rate: float = 0.03

    def apply(self, mesh: Mesh) -> list[Modifier]:
        svc = ServiceDef("netshoot", "qa", 8080, False, (), 1.0, "curl/8.5.0")
        scanner = mesh.workloads.get(("netshoot", self.cluster)) or mesh.add_workload(
            svc, self.cluster, 1
        )
        scanner.sa = "default"
        self.principals.append(_who(scanner))
        targets = sorted(
            (w for w in mesh.workloads.values()
             if w.cluster != self.cluster and w.sidecar and w.svc.routes),
            key=lambda w: w.key,
        )  # fmt: skip
        step = max(1, len(targets) // self.n_targets)
        routes = tuple(Route("GET", p, 1.0, 5.0, 0) for p in _PROBE_PATHS)
        for w in targets[::step][: self.n_targets]:
            self._edge(mesh, scanner, w, self.rate * self.intensity, routes=routes,
                       p_rbac=0.85, p_nr=0.05)  # fmt: skip
        return []

    def params(self) -> dict[str, Any]:
        return {**super().params(), "n_targets": self.n_targets}


@dataclass
class KubeApiAbuse(Scenario):
    """A compromised service account lists secrets everywhere (403), and a 401 token storm."""

    name: ClassVar[str] = "k8s_api_abuse"
    description: ClassVar[str] = (
        "catalog/recommendations SA in prod-eu lists secrets across namespaces (forbidden) and "
        "an unauthenticated bearer-token storm hits the same API server"
    )
    cluster: str = "prod-eu"
    rate: float = 0.3

    def apply(self, mesh: Mesh) -> list[Modifier]:
        user = "system:serviceaccount:catalog:recommendations"
        groups = ("system:serviceaccounts", "system:serviceaccounts:catalog",
                  "system:authenticated")  # fmt: skip
        ip = mesh.ip_in(self.cluster, "recommendations/0")
        acts = (
            *(
                ApiAction(v, "secrets", ns, None, 1)
                for ns in ("kube-system", "payments", "identity", "istio-system", "default")
                for v in ("list", "get")
            ),
            ApiAction("list", "secrets", None, None, 2),
        )
        mesh.add_api_client(
            ApiClient(
                user,
                groups,
                self.cluster,
                ip,
                "kubectl/v1.29.3 (linux/amd64) kubernetes/6813625",
                acts,
                self.rate * self.intensity,
                p_forbid=0.95,
                window=(self.start, self.end),
            )
        )
        mesh.add_api_client(
            ApiClient(
                "",
                (),
                self.cluster,
                mesh.ip_in(self.cluster, "token-storm"),
                "python-requests/2.31.0",
                (
                    ApiAction("list", "secrets", "kube-system", None, 1),
                    ApiAction("list", "pods", None, None, 1),
                ),
                3.0 * self.rate * self.intensity,
                p_unauth=1.0,
                window=(self.start, self.end),
            )
        )
        self.principals += [f"{user}@{self.cluster}", f"{spiffe('catalog', 'recommendations')}"
                            f"@{self.cluster}"]  # fmt: skip
        self.services.append(f"kube-apiserver@{self.cluster}")
        return []


@dataclass
class SlowRamp(Scenario):
    """A known edge's rate creeps up to many times its baseline over hours (slow scraping)."""

    name: ClassVar[str] = "slow_ramp"
    description: ClassVar[str] = "reviews@prod-us -> user-profile ramps linearly to 12x"
    source: tuple[str, str] = ("reviews", "prod-us")
    target: tuple[str, str] = ("user-profile", "prod-us")
    ramp_to: float = 12.0

    def apply(self, mesh: Mesh) -> list[Modifier]:
        src, dst = mesh.workload(*self.source), mesh.workload(*self.target)
        e = _edge_between(mesh, src, dst)
        self.principals.append(_who(src))
        self.services.append(_svc(dst))
        return [Modifier(self.start, self.end, frozenset({id(e)}),
                         ramp_to=1.0 + (self.ramp_to - 1.0) * self.intensity)]  # fmt: skip

    def params(self) -> dict[str, Any]:
        return {**super().params(), "ramp_to": self.ramp_to}


@dataclass
class GlobalSurge(Scenario):
    """Trap: every organic edge triples at once (a marketing push, a failover)."""

    name: ClassVar[str] = "global_surge"
    kind: ClassVar[str] = TRAP
    description: ClassVar[str] = "all organic edges in all clusters x3"
    factor: float = 3.0

    def apply(self, mesh: Mesh) -> list[Modifier]:
        self.services.append("*")
        return [Modifier(self.start, self.end, None, seasonal_only=True,
                         rate_factor=1.0 + (self.factor - 1.0) * self.intensity)]  # fmt: skip

    def params(self) -> dict[str, Any]:
        return {**super().params(), "factor": self.factor}


@dataclass
class NewRollout(Scenario):
    """Trap: a new service is deployed the normal way (Argo CD) and gets organic traffic."""

    name: ClassVar[str] = "new_service_rollout"
    kind: ClassVar[str] = TRAP
    description: ClassVar[str] = (
        "loyalty (orders) rolled out in prod-eu and prod-us by Argo CD; checkout and "
        "web-frontend start calling it, it calls user-profile; stays after the window"
    )
    clusters: tuple[str, ...] = ("prod-eu", "prod-us")

    def apply(self, mesh: Mesh) -> list[Modifier]:
        from detector.simulation.topology import JAVA, _rest

        svc = ServiceDef("loyalty", "orders", 8080, False, _rest("points", 5, 1, 1, 0.2), 2.6,
                         JAVA)  # fmt: skip
        for c in self.clusters:
            w = mesh.add_workload(svc, c, 2)
            self.services.append(_svc(w))
            self.principals.append(_who(w))
            scale = mesh.clusters[c].scale * self.intensity
            for src, dst, rate in (
                (mesh.workload("checkout", c), w, 0.2),
                (mesh.workload("web-frontend", c), w, 0.3),
                (w, mesh.workload("user-profile", c), 0.1),
            ):
                # Organic from the start (seasonal, the destination's log format); it stays.
                mesh.add_edge(Edge(src, dst, rate * scale, window=(self.start, INF),
                                   p_error=0.002))  # fmt: skip
                if dst is not w:
                    self.services.append(_svc(dst))
            user = "system:serviceaccount:argocd:argocd-application-controller"
            mesh.add_api_client(ApiClient(
                user, ("system:serviceaccounts", "system:serviceaccounts:argocd",
                       "system:authenticated"),
                c, mesh.ip_in(c, "argocd"), "argocd-controller/v2.10.4",
                (ApiAction("create", "deployments", "orders", None, 1, "apps"),
                 ApiAction("create", "services", "orders", None, 1),
                 ApiAction("create", "serviceaccounts", "orders", None, 1)),
                0.02, window=(self.start, self.start + 300.0)))  # fmt: skip
        return []


@dataclass
class Outage(Scenario):
    """Trap: one service is down: most calls fail 503 UF, the rest are slow. Not an attack."""

    name: ClassVar[str] = "availability_outage"
    kind: ClassVar[str] = TRAP
    description: ClassVar[str] = "payments-api@prod-eu: 60% 503 UF, latency x8"
    target: tuple[str, str] = ("payments-api", "prod-eu")
    p_fail: float = 0.6
    latency_factor: float = 8.0

    def apply(self, mesh: Mesh) -> list[Modifier]:
        dst = mesh.workload(*self.target)
        self.services.append(_svc(dst))
        ids = frozenset(id(e) for e in mesh.edges if e.dst is dst)
        return [Modifier(self.start, self.end, ids, p_uf=min(1.0, self.p_fail * self.intensity),
                         latency_factor=self.latency_factor)]  # fmt: skip


ALL: Final = (
    GlobalSurge, LateralMovement, Outage, CredentialReplay, Exfiltration, NewRollout,
    CredentialStuffing, PolicyProbing, KubeApiAbuse, SlowRamp,
)  # fmt: skip


def default_scenarios(test_start: float, test_s: float, intensity: float = 1.0) -> list[Scenario]:
    """Every scenario once, in its own slot of the test span (half a slot long, at most 1 h;
    the slow ramp takes most of its slot)."""
    slot = test_s / len(ALL)
    out: list[Scenario] = []
    for i, cls in enumerate(ALL):
        start = test_start + i * slot + 0.2 * slot
        dur = 0.75 * slot if cls is SlowRamp else min(0.5 * slot, 3600.0)
        out.append(cls(start=start, duration_s=dur, intensity=intensity))
    return out


def labels_jsonl(scenarios: list[Scenario] | tuple[Scenario, ...]) -> bytes:
    """The ground-truth file: one JSON object per scenario, in start order. Call after the
    scenarios were applied to a mesh (that fills in principals and services)."""
    from detector.simulation.topology import build_mesh

    for s in scenarios:
        if not s.services:
            s.apply(build_mesh())
    lines = [orjson.dumps(s.label()) for s in sorted(scenarios, key=lambda s: s.start)]
    return b"\n".join(lines) + b"\n"
