"""Blast radius: which legitimate, learned edges an action would cut, from the novelty baseline.

Contract:
* The baseline is anything with ``edges_``: a mapping of novelty edge keys
  ``principal|src_cluster|dst_ns|dst_service|dst_cluster`` to ``[windows seen, first ts, last
  ts]``. Those edges were learned only from windows that raised no finding (the scorer does not
  learn flagged windows), so every edge in it is traffic we believe legitimate.
* ``blast_radius(edges, scope, target)`` lists the edges the action cuts, by scope:
  ``PRINCIPAL_TO_SERVICE`` (an Istio DENY: the principal from ANY cluster, to that service in
  the destination cluster), ``CALLER_TO_SERVICE`` (a Cilium deny: the principal from its source
  cluster only), ``PRINCIPAL_EVERYWHERE`` (a revoke or a mesh-wide DENY: every edge of the
  principal), ``CALLER_EVERYWHERE`` (a cluster-wide Cilium deny) and ``EXPLICIT`` (the caller
  passes the keys, as NetworkPolicy rendering does).
* The result is JSON: ``count`` (None when no baseline is available: unknown, which the rails
  treat as above any limit), ``edges`` (the first ``limit`` by windows seen, most used first)
  and ``windows`` (sum of windows seen over all cut edges).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from detector.remediation.targets import Target

PRINCIPAL_TO_SERVICE: Final = "principal_to_service"
CALLER_TO_SERVICE: Final = "caller_to_service"
PRINCIPAL_EVERYWHERE: Final = "principal_everywhere"
CALLER_EVERYWHERE: Final = "caller_everywhere"
EXPLICIT: Final = "explicit"


class EdgeBaseline(Protocol):
    """The novelty model (``detector.baselines.novelty.NoveltyModel``) or anything like it."""

    @property
    def edges_(self) -> Mapping[str, Sequence[float]]: ...


def split_edge(key: str) -> tuple[str, str, str, str, str] | None:
    parts = key.rsplit("|", 4)
    if len(parts) != 5:
        return None
    return parts[0], parts[1], parts[2], parts[3], parts[4]


def _selected(key: str, scope: str, t: Target) -> bool:
    e = split_edge(key)
    if e is None:
        return False
    p, sc, ns, svc, dc = e
    if p != t.principal:
        return False
    if scope in (CALLER_TO_SERVICE, CALLER_EVERYWHERE) and t.src_cluster and sc != t.src_cluster:
        return False
    if scope in (PRINCIPAL_TO_SERVICE, CALLER_TO_SERVICE):
        if svc != t.dst_service or (t.dst_namespace and ns != t.dst_namespace):
            return False
        if t.dst_cluster and dc != t.dst_cluster:
            return False
    return True


def blast_radius(
    edges: Mapping[str, Sequence[float]] | None,
    scope: str,
    target: Target,
    explicit: Iterable[str] = (),
    limit: int = 20,
) -> dict[str, Any]:
    if edges is None:
        return {
            "scope": scope,
            "count": None,
            "windows": None,
            "edges": [],
            "baseline": "unavailable",
        }
    if scope == EXPLICIT:
        keys = [k for k in explicit if k in edges]
    elif target.principal is None:
        keys = []  # an IP-only target has no learned identity edges
    else:
        keys = [k for k in edges if _selected(k, scope, target)]
    keys.sort(key=lambda k: (-float(edges[k][0]), k))
    listed = []
    for k in keys[:limit]:
        e = split_edge(k)
        assert e is not None
        v = edges[k]
        listed.append(
            {
                "principal": e[0],
                "src_cluster": e[1],
                "dst_namespace": e[2],
                "dst_service": e[3],
                "dst_cluster": e[4],
                "windows_seen": int(v[0]),
                "first_seen_ts": float(v[1]),
                "last_seen_ts": float(v[2]),
            }
        )
    return {
        "scope": scope,
        "count": len(keys),
        "windows": int(sum(float(edges[k][0]) for k in keys)),
        "edges": listed,
        "baseline": "novelty",
    }


def edges_into(edges: Mapping[str, Sequence[float]] | None, target: Target) -> list[str]:
    """Keys of learned edges into the target's destination (any caller)."""
    if edges is None:
        return []
    out = []
    for k in edges:
        e = split_edge(k)
        if e is None:
            continue
        _, _, ns, svc, dc = e
        if (
            svc == target.dst_service
            and ns == target.dst_namespace
            and (not target.dst_cluster or dc == target.dst_cluster)
        ):
            out.append(k)
    return sorted(out)
