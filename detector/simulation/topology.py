"""The simulated mesh: clusters, workloads, services, routes, call graph and API clients.

Contract:
* ``build_mesh(topology_seed)`` returns the same ``Mesh`` for the same seed: three clusters
  (``prod-eu``, ``prod-us``, ``staging``) sharing the trust domain ``cluster.local``, ten
  namespaces, 25-31 workloads per cluster, each with its own service account and SPIFFE id
  ``spiffe://cluster.local/ns/<ns>/sa/<sa>``, pod IPs from one /16 per cluster (a flat,
  single-network multi-primary mesh: the server sees the caller's pod IP even across clusters).
* The mesh is hand-written (names, call graph, cross-cluster edges) so that scenarios and tests
  can name their targets; only pod IPs/names and per-edge parameters are drawn from the seed.
* Scenarios extend a mesh with ``add_workload``/``add_edge``/``add_api_client``; nothing else
  mutates it. Edges carry ``window`` (event-time span in which they exist) and outcome mixes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

import numpy as np

TRUST_DOMAIN: Final = "cluster.local"
INF: Final = float("inf")


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    net: str  # first two octets of the cluster's pod /16
    tz_offset_h: float  # local time of the users this cluster serves (drives seasonality)
    weekend_factor: float
    scale: float  # traffic scale relative to the base rates
    nodes: int = 6


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str  # "/api/v1/orders/{id}"; "{id}" is filled with a number per request
    weight: float
    out_mu: float  # log of the typical response size in bytes
    in_mu: float  # log of the typical request body size (0: no body)


@dataclass(frozen=True, slots=True)
class ServiceDef:
    name: str
    namespace: str
    port: int
    grpc: bool
    routes: tuple[Route, ...]
    lat_mu: float  # log of the typical server latency in ms
    user_agent: str  # what this workload's HTTP client sends when it calls others


@dataclass(slots=True)
class Workload:
    """One deployed workload (a Deployment behind a Service) in one cluster."""

    svc: ServiceDef
    cluster: str
    ips: list[str]
    pods: list[str]
    sa: str
    sidecar: bool = True  # False: not in the mesh (plaintext callers hit filter_chain_not_found)

    @property
    def name(self) -> str:
        return self.svc.name

    @property
    def namespace(self) -> str:
        return self.svc.namespace

    @property
    def principal(self) -> str | None:
        if not self.sidecar:
            return None
        return spiffe(self.namespace, self.sa)

    @property
    def key(self) -> str:
        return f"{self.svc.name}.{self.svc.namespace}@{self.cluster}"


@dataclass(slots=True)
class Edge:
    """A caller workload calling a service instance, with its traffic parameters."""

    src: Workload
    dst: Workload
    rate: float  # requests/s at seasonal factor 1 and rate multiplier 1
    seasonal: bool = True
    route_idx: tuple[int, ...] = ()  # which of dst's routes this caller uses (empty: all)
    p_error: float = 0.002  # application 5xx
    p_rbac: float = 0.0  # RBAC 403 at the server sidecar
    p_jwt: float = 0.0  # JWT 401 at the server sidecar
    p_app401: float = 0.0  # 401 written by the application (login failures)
    p_nr: float = 0.0  # plaintext to a STRICT port: filter_chain_not_found / NR
    p_tls: float = 0.0  # client-side mTLS failure (UF + TLS_error), logged in the caller's cluster
    p_uf: float = 0.0  # server app unreachable: 503 UF upstream_reset_before_response_started
    window: tuple[float, float] = (-INF, INF)  # event time in which the edge exists
    src_ip: str | None = None  # overrides the caller's pod IPs (an attacker's pod)
    src_cluster_label: str | None = None  # overrides the source_cluster label
    xff: tuple[str, ...] = ()  # client IPs when requests come from outside via this gateway
    routes: tuple[Route, ...] = ()  # routes used instead of dst's (probing paths), if set
    fmt: str | None = None  # force a log format ("envoy_json"); None: the destination's choice


@dataclass(frozen=True, slots=True)
class ApiAction:
    verb: str
    resource: str
    namespace: str | None
    name: str | None
    weight: float
    group: str = ""  # API group ("" = core), e.g. "apps"


@dataclass(slots=True)
class ApiClient:
    """A Kubernetes API caller (controller, operator, human) in one cluster."""

    username: str  # "" for a failed authentication (no user)
    groups: tuple[str, ...]
    cluster: str
    ip: str
    user_agent: str
    actions: tuple[ApiAction, ...]
    rate: float  # requests/s
    p_forbid: float = 0.0
    p_unauth: float = 0.0  # 401 "Authentication failed, attempted: bearer"
    window: tuple[float, float] = (-INF, INF)


@dataclass(slots=True)
class Mesh:
    clusters: dict[str, Cluster]
    services: dict[str, ServiceDef]
    workloads: dict[tuple[str, str], Workload] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    api_clients: list[ApiClient] = field(default_factory=list)
    seed: int = 1

    def workload(self, name: str, cluster: str) -> Workload:
        return self.workloads[(name, cluster)]

    def add_workload(
        self, svc: ServiceDef, cluster: str, replicas: int = 2, sidecar: bool = True
    ) -> Workload:
        self.services.setdefault(svc.name, svc)
        c = self.clusters[cluster]
        ips, pods = _pods(svc.name, c, replicas)
        sa = f"{svc.name}-service-account" if svc.namespace == "istio-system" else svc.name
        w = Workload(svc, cluster, ips, pods, sa, sidecar)
        self.workloads[(svc.name, cluster)] = w
        return w

    def add_edge(self, edge: Edge) -> Edge:
        self.edges.append(edge)
        return edge

    def add_api_client(self, client: ApiClient) -> ApiClient:
        self.api_clients.append(client)
        return client

    def ip_in(self, cluster: str, salt: str) -> str:
        """A stable pod IP in ``cluster`` for an ad-hoc pod (attacker, debug shell)."""
        return _ip(self.clusters[cluster], salt)


def spiffe(namespace: str, sa: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


def _h(s: str) -> int:
    # A stable hash (Python's hash() is salted per process).
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


def _ip(c: Cluster, salt: str) -> str:
    h = _h(c.name + "/" + salt)
    return f"{c.net}.{h % c.nodes}.{2 + (h >> 8) % 250}"


def _pods(name: str, c: Cluster, replicas: int) -> tuple[list[str], list[str]]:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    rs = _h(f"{c.name}/{name}/rs")
    rs_hash = "".join(alphabet[(rs >> (5 * i)) % len(alphabet)] for i in range(10))
    ips, pods = [], []
    for i in range(replicas):
        h = _h(f"{c.name}/{name}/{i}")
        ips.append(_ip(c, f"{name}/{i}"))
        pods.append(f"{name}-{rs_hash}-" + "".join(alphabet[(h >> (5 * j)) % 27] for j in range(5)))
    return ips, pods


def _rest(
    res: str, get: float = 6, lst: float = 2, post: float = 1, put: float = 0.5
) -> tuple[Route, ...]:
    return (
        Route("GET", f"/api/v1/{res}/{{id}}", get, 7.2, 0),
        Route("GET", f"/api/v1/{res}", lst, 8.6, 0),
        Route("POST", f"/api/v1/{res}", post, 5.5, 6.5),
        Route("PUT", f"/api/v1/{res}/{{id}}", put, 5.0, 6.2),
    )


def _grpc(pkg: str, svc: str, methods: tuple[str, ...]) -> tuple[Route, ...]:
    return tuple(
        Route("POST", f"/{pkg}.v1.{svc}/{m}", 1.0 / (i + 1), 6.0, 5.5)
        for i, m in enumerate(methods)
    )


# Documentation ranges (RFC 5737) stand in for customers' addresses behind the gateway.
CUSTOMER_IPS: Final = tuple(f"203.0.113.{i}" for i in range(1, 120)) + tuple(
    f"198.51.100.{i}" for i in range(1, 120)
)

GO: Final = "Go-http-client/1.1"
JAVA: Final = "Java/17.0.9"
PY: Final = "python-requests/2.31.0"
NODE: Final = "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)"
GRPC_GO: Final = "grpc-go/1.62.1"

# name, namespace, port, grpc, routes, latency mu (log ms), user agent
_SERVICES: Final[tuple[ServiceDef, ...]] = (
    ServiceDef("istio-ingressgateway", "istio-system", 8080, False, (), 1.0, "envoy"),
    ServiceDef(
        "web-frontend",
        "frontend",
        8080,
        False,
        (
            Route("GET", "/", 4, 9.5, 0),
            Route("GET", "/products/{id}", 6, 9.8, 0),
            Route("GET", "/cart", 2, 9.0, 0),
            Route("POST", "/checkout", 0.5, 8.0, 7.0),
        ),
        3.4,
        NODE,
    ),
    ServiceDef(
        "bff-mobile",
        "frontend",
        8080,
        False,
        (
            Route("GET", "/m/v2/home", 3, 8.5, 0),
            Route("GET", "/m/v2/products/{id}", 5, 8.0, 0),
            Route("POST", "/m/v2/cart/items", 1, 6.0, 6.0),
        ),
        3.2,
        NODE,
    ),
    ServiceDef("orders-api", "orders", 8080, False, _rest("orders"), 2.8, JAVA),
    ServiceDef(
        "checkout",
        "orders",
        8080,
        False,
        (
            Route("POST", "/api/v1/checkout", 3, 6.5, 7.5),
            Route("GET", "/api/v1/checkout/{id}/status", 1, 5.5, 0),
        ),
        4.0,
        JAVA,
    ),
    ServiceDef("cart", "orders", 8080, False, _rest("carts", 5, 0.2, 2, 2), 2.0, GO),
    ServiceDef("returns", "orders", 8080, False, _rest("returns", 2, 1, 1, 0.2), 2.5, JAVA),
    ServiceDef(
        "payments-api",
        "payments",
        8443,
        False,
        (
            Route("POST", "/api/v1/payments", 3, 6.2, 6.8),
            Route("GET", "/api/v1/payments/{id}", 2, 6.5, 0),
            Route("POST", "/api/v1/payments/{id}/capture", 1, 5.8, 5.0),
        ),
        4.2,
        JAVA,
    ),
    ServiceDef(
        "fraud-scoring",
        "payments",
        9090,
        True,
        _grpc("fraud", "FraudScoring", ("Score", "Explain")),
        3.0,
        GRPC_GO,
    ),
    ServiceDef("ledger", "payments", 8080, False, _rest("entries", 3, 2, 2, 0.1), 2.6, GO),
    ServiceDef("refunds", "payments", 8080, False, _rest("refunds", 2, 1, 1, 0.1), 3.0, JAVA),
    ServiceDef("catalog-api", "catalog", 8080, False, _rest("products", 8, 3, 0.1, 0.1), 2.2, GO),
    ServiceDef(
        "search",
        "catalog",
        8080,
        False,
        (
            Route("GET", "/api/v1/search?q={id}", 5, 8.8, 0),
            Route("GET", "/api/v1/suggest?q={id}", 3, 6.0, 0),
        ),
        3.0,
        GO,
    ),
    ServiceDef(
        "recommendations",
        "catalog",
        8080,
        False,
        (
            Route("GET", "/api/v1/recommendations/{id}", 4, 7.5, 0),
            Route("POST", "/api/v1/recommendations/batch", 1, 8.5, 6.5),
        ),
        3.6,
        PY,
    ),
    ServiceDef(
        "pricing",
        "catalog",
        9090,
        True,
        _grpc("pricing", "Pricing", ("GetPrice", "GetPrices", "Quote")),
        1.6,
        GRPC_GO,
    ),
    ServiceDef("reviews", "catalog", 8080, False, _rest("reviews", 4, 2, 0.5, 0.1), 2.4, PY),
    ServiceDef(
        "auth-server",
        "identity",
        8080,
        False,
        (
            Route("POST", "/oauth2/token", 4, 7.0, 6.0),
            Route("GET", "/oauth2/jwks", 1, 7.4, 0),
            Route("POST", "/api/v1/login", 2, 6.2, 5.8),
            Route("POST", "/oauth2/introspect", 3, 6.0, 6.0),
        ),
        2.9,
        JAVA,
    ),
    ServiceDef("user-profile", "identity", 8080, False, _rest("users", 5, 0.5, 0.2, 1), 2.5, JAVA),
    ServiceDef(
        "session-store",
        "identity",
        6380,
        True,
        _grpc("session", "Sessions", ("Get", "Put", "Touch")),
        0.8,
        GRPC_GO,
    ),
    ServiceDef("shipping-api", "shipping", 8080, False, _rest("shipments"), 3.1, JAVA),
    ServiceDef("inventory", "shipping", 8080, False, _rest("stock", 6, 1, 0.1, 2), 2.3, GO),
    ServiceDef(
        "warehouse-sync", "shipping", 8080, False, _rest("sync-jobs", 1, 1, 1, 0.1), 4.5, PY
    ),
    ServiceDef(
        "notifier", "notifications", 8080, False, _rest("notifications", 1, 0.2, 3, 0), 2.7, GO
    ),
    ServiceDef(
        "email-sender",
        "notifications",
        8080,
        False,
        (Route("POST", "/v1/send", 1, 4.5, 7.8),),
        5.0,
        GO,
    ),
    ServiceDef("reporting", "data", 8080, False, _rest("reports", 2, 1, 0.5, 0.1), 5.5, PY),
    ServiceDef(
        "etl-worker", "data", 8080, False, (Route("POST", "/jobs/{id}/run", 1, 5.0, 5.0),), 6.0, PY
    ),
    ServiceDef(
        "feature-store",
        "data",
        6566,
        True,
        _grpc("feast.serving", "ServingService", ("GetOnlineFeatures",)),
        2.0,
        GRPC_GO,
    ),
    ServiceDef(
        "analytics-ingest",
        "data",
        8080,
        False,
        (Route("POST", "/v1/events", 1, 3.5, 7.0),),
        1.5,
        GO,
    ),
    ServiceDef(
        "config-server",
        "platform",
        8888,
        False,
        (Route("GET", "/config/{id}/default", 1, 8.0, 0),),
        2.0,
        JAVA,
    ),
    ServiceDef(
        "feature-flags",
        "platform",
        8080,
        False,
        (Route("GET", "/api/v1/flags", 3, 8.2, 0), Route("GET", "/api/v1/flags/{id}", 1, 5.5, 0)),
        1.4,
        GO,
    ),
    ServiceDef(
        "audit-logger",
        "platform",
        9090,
        True,
        _grpc("audit", "AuditLog", ("Append",)),
        1.8,
        GRPC_GO,
    ),
)

_ONLY: Final[dict[str, tuple[str, ...]]] = {
    # Services deployed in fewer clusters; this is what makes some edges cross clusters.
    "feature-store": ("prod-us", "staging"),
    "etl-worker": ("prod-us",),
    "reporting": ("prod-eu",),
    "audit-logger": ("prod-eu", "staging"),
    "analytics-ingest": ("prod-us",),
}
_NOT_IN_STAGING: Final = frozenset({"refunds", "ledger", "warehouse-sync", "email-sender"})

# caller, callee, base rate (req/s). Applied in every cluster where both are deployed; when the
# callee is not deployed in the caller's cluster the call goes to the first cluster that has it.
_CALLS: Final[tuple[tuple[str, str, float], ...]] = (
    ("istio-ingressgateway", "web-frontend", 5.0),
    ("istio-ingressgateway", "bff-mobile", 2.5),
    ("istio-ingressgateway", "auth-server", 0.6),
    ("web-frontend", "catalog-api", 2.0),
    ("web-frontend", "search", 1.4),
    ("web-frontend", "cart", 0.9),
    ("web-frontend", "user-profile", 0.8),
    ("web-frontend", "recommendations", 0.7),
    ("web-frontend", "auth-server", 0.5),
    ("web-frontend", "checkout", 0.25),
    ("web-frontend", "reviews", 0.5),
    ("web-frontend", "feature-flags", 0.3),
    ("web-frontend", "analytics-ingest", 0.9),
    ("bff-mobile", "catalog-api", 1.0),
    ("bff-mobile", "cart", 0.5),
    ("bff-mobile", "user-profile", 0.5),
    ("bff-mobile", "auth-server", 0.4),
    ("bff-mobile", "orders-api", 0.3),
    ("bff-mobile", "returns", 0.05),
    ("bff-mobile", "feature-flags", 0.3),
    ("cart", "catalog-api", 0.7),
    ("cart", "pricing", 0.8),
    ("checkout", "orders-api", 0.25),
    ("checkout", "payments-api", 0.25),
    ("checkout", "pricing", 0.25),
    ("checkout", "inventory", 0.25),
    ("checkout", "shipping-api", 0.2),
    ("orders-api", "inventory", 0.3),
    ("orders-api", "notifier", 0.2),
    ("orders-api", "ledger", 0.1),
    ("payments-api", "fraud-scoring", 0.25),
    ("payments-api", "ledger", 0.25),
    ("payments-api", "audit-logger", 0.1),
    ("returns", "refunds", 0.05),
    ("refunds", "ledger", 0.05),
    ("search", "catalog-api", 0.6),
    ("recommendations", "catalog-api", 0.4),
    ("recommendations", "feature-store", 0.5),
    ("catalog-api", "pricing", 0.5),
    ("catalog-api", "config-server", 0.05),
    ("reviews", "user-profile", 0.2),
    ("shipping-api", "warehouse-sync", 0.1),
    ("shipping-api", "notifier", 0.1),
    ("inventory", "warehouse-sync", 0.05),
    ("notifier", "email-sender", 0.2),
    ("user-profile", "auth-server", 0.2),
    ("auth-server", "session-store", 0.5),
    ("auth-server", "audit-logger", 0.2),
    ("etl-worker", "orders-api", 0.05),
    ("etl-worker", "ledger", 0.05),
    ("etl-worker", "feature-store", 0.1),
    ("reporting", "ledger", 0.05),
    ("reporting", "orders-api", 0.05),
)

# Extra cross-cluster edges that exist on purpose (failover, data locality): caller@cluster,
# callee@cluster, rate.
_CROSS: Final[tuple[tuple[str, str, str, str, float], ...]] = (
    ("checkout", "prod-us", "payments-api", "prod-eu", 0.04),  # EU cards settle in the EU
    ("reporting", "prod-eu", "ledger", "prod-us", 0.05),  # one reporting job for both regions
    ("search", "prod-us", "catalog-api", "prod-eu", 0.05),  # catalogue master lives in the EU
    ("feature-flags", "staging", "feature-flags", "prod-eu", 0.02),  # staging mirrors prod flags
)


def build_mesh(topology_seed: int = 1) -> Mesh:
    """The simulated mesh (see the module docstring)."""
    clusters = {
        c.name: c
        for c in (
            Cluster("prod-eu", "10.10", tz_offset_h=1.0, weekend_factor=0.7, scale=1.0),
            Cluster("prod-us", "10.20", tz_offset_h=-5.0, weekend_factor=0.65, scale=1.2),
            Cluster("staging", "10.30", tz_offset_h=1.0, weekend_factor=0.15, scale=0.08, nodes=3),
        )
    }
    mesh = Mesh(clusters=clusters, services={s.name: s for s in _SERVICES}, seed=topology_seed)
    rng = np.random.default_rng([topology_seed, 0xC0FFEE])
    for svc in _SERVICES:
        for cname in clusters:
            if cname in _ONLY.get(svc.name, tuple(clusters)) and not (
                cname == "staging" and svc.name in _NOT_IN_STAGING
            ):
                replicas = 1 if cname == "staging" else int(rng.integers(2, 5))
                mesh.add_workload(svc, cname, replicas)
    # A legacy batch job outside the mesh (no sidecar): its plaintext calls to a STRICT mTLS
    # port are rejected with filter_chain_not_found; background noise the baseline must know.
    legacy = ServiceDef("legacy-report", "data", 8080, False, (), 1.0, "curl/8.5.0")
    mesh.add_workload(legacy, "prod-eu", 1, sidecar=False)

    def edge(src: Workload, dst: Workload, rate: float, **kw: object) -> None:
        nroutes = len(dst.svc.routes)
        # Each caller uses a subset of the callee's routes (what makes routes per edge learnable).
        k = max(1, min(nroutes, int(rng.integers(1, nroutes + 1))))
        idx = tuple(sorted(rng.choice(nroutes, size=k, replace=False).tolist()))
        e = Edge(
            src,
            dst,
            rate * clusters[src.cluster].scale,
            route_idx=idx,
            p_error=float(rng.uniform(0.0005, 0.004)),
        )
        for key, val in kw.items():
            setattr(e, key, val)
        mesh.add_edge(e)

    for caller, callee, rate in _CALLS:
        for cname in clusters:
            src = mesh.workloads.get((caller, cname))
            if src is None:
                continue
            dst = mesh.workloads.get((callee, cname))
            if dst is None:
                other = [c for c in clusters if (callee, c) in mesh.workloads and c != "staging"]
                if cname == "staging" or not other:
                    continue
                dst = mesh.workloads[(callee, other[0])]
            extra: dict[str, object] = {}
            if caller == "istio-ingressgateway":
                # Browsers with expired tokens: a steady trickle of JWT 401s at the edge.
                extra = {"xff": CUSTOMER_IPS, "p_jwt": 0.004, "route_idx": ()}
            edge(src, dst, rate, **extra)
    for caller, ccl, callee, dcl, rate in _CROSS:
        extra = {"p_tls": 0.03} if ccl == "staging" else {}  # staging's rotating root cert
        edge(mesh.workload(caller, ccl), mesh.workload(callee, dcl), rate, **extra)
    edge(
        mesh.workload("legacy-report", "prod-eu"),
        mesh.workload("reporting", "prod-eu"),
        0.004,
        p_nr=1.0,
        seasonal=False,
    )
    # A staging smoke-test job occasionally hits a prod service it is not allowed to: RBAC 403s
    # are part of normal life too.
    edge(
        mesh.workload("web-frontend", "staging"),
        mesh.workload("user-profile", "prod-eu"),
        0.01,
        p_rbac=0.9,
    )
    _api_clients(mesh)
    return mesh


def _sa_user(ns: str, sa: str) -> tuple[str, tuple[str, ...]]:
    return (
        f"system:serviceaccount:{ns}:{sa}",
        ("system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"),
    )


def _api_clients(mesh: Mesh) -> None:
    for cname, c in mesh.clusters.items():
        s = 0.15 if cname == "staging" else 1.0
        user, groups = _sa_user("argocd", "argocd-application-controller")
        mesh.add_api_client(
            ApiClient(
                user,
                groups,
                cname,
                mesh.ip_in(cname, "argocd"),
                "argocd-controller/v2.10.4",
                (
                    ApiAction("list", "deployments", None, None, 3, "apps"),
                    ApiAction("get", "configmaps", "argocd", "argocd-cm", 2),
                    ApiAction("list", "services", None, None, 2),
                    ApiAction("patch", "deployments", "catalog", "catalog-api", 0.2, "apps"),
                ),
                0.4 * s,
            )
        )
        user, groups = _sa_user("monitoring", "prometheus-k8s")
        mesh.add_api_client(
            ApiClient(
                user,
                groups,
                cname,
                mesh.ip_in(cname, "prometheus"),
                "Prometheus/2.51.1",
                (
                    ApiAction("list", "pods", None, None, 3),
                    ApiAction("list", "endpoints", None, None, 3),
                    ApiAction("list", "services", None, None, 1),
                ),
                0.3 * s,
            )
        )
        user, groups = _sa_user("cert-manager", "cert-manager")
        mesh.add_api_client(
            ApiClient(
                user,
                groups,
                cname,
                mesh.ip_in(cname, "cert-manager"),
                "cert-manager-certificates-issuing/v1.14.4 (linux/amd64) cert-manager/2a5b5b0e",
                (
                    ApiAction("get", "secrets", "istio-system", "cacerts", 1),
                    ApiAction("list", "certificates", None, None, 2, "cert-manager.io"),
                    ApiAction(
                        "update",
                        "leases",
                        "kube-system",
                        "cert-manager-controller",
                        2,
                        "coordination.k8s.io",
                    ),
                ),
                0.2 * s,
            )
        )
        user, groups = _sa_user("catalog", "recommendations")
        mesh.add_api_client(
            ApiClient(
                user,
                groups,
                cname,
                mesh.ip_in(cname, "recommendations/0"),
                "python-kubernetes/29.0.0",
                (ApiAction("get", "configmaps", "catalog", "recommendations-model", 1),),
                0.02 * s,
            )
        )
        mesh.add_api_client(
            ApiClient(
                "oidc:alice@corp.example",
                ("oidc:platform-team", "system:authenticated"),
                cname,
                "192.168.40.17",
                "kubectl/v1.29.3 (linux/amd64) kubernetes/6813625",
                (
                    ApiAction("get", "pods", "orders", None, 3),
                    ApiAction("get", "deployments", "orders", "orders-api", 1, "apps"),
                    ApiAction("list", "events", "orders", None, 1),
                ),
                0.01 * (3.0 if cname == "staging" else 1.0),
            )
        )
        del c
