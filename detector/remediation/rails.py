"""Safety rails: what keeps automatic response acceptable.

Contract:
* Rail names (the ``suppressed_by`` of a suppressed action): ``category`` (operational and
  context findings are never remediated), ``kill_switch``, ``protected``, ``unrenderable``,
  ``budget``, ``pairing`` (a revoke whose time-boxed DENY could not be admitted).
* ``protected_reason(target, cfg, remediation_kind)``: why a target must never be acted on
  (fnmatch globs over the caller's namespace, the principal, the destination namespace and
  service, and the detector's own namespace/service account), or None.
* ``Budget``: sliding event-time window of admitted remediation actions; ``admits(now,
  identity, cluster, n)`` checks all three limits for ``n`` actions at once (a revoke and its
  DENY are admitted together or not at all); ``spend`` records them. JSON state.
* ``kill_switch_on(cfg)``: config flag, or the existence of ``kill_switch_file`` (a ConfigMap
  or a ``touch`` flips it without a restart). It stops new remediation; restores still run,
  because rolling back is always safe.
* Approvals: ``sign`` is hex HMAC-SHA256 over ``<action id>.<decision>.<exp>`` (exp: epoch
  seconds); ``approval_links`` builds ``<base>/v1/approvals/<id>/<approve|deny>?exp=..&sig=..``;
  ``verify_approval`` compares in constant time and refuses expired links (signature first, so
  an expired link reveals nothing about a forged one). ``approval_app(store, secret)`` is the
  aiohttp app: GET answers a confirmation page whose button POSTs (link scanners and
  previews issue GETs; a GET must never approve); POST calls ``store.decide``.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlencode

from aiohttp import web

from detector.remediation.playbooks import (
    BudgetConfig,
    ProtectionConfig,
    ResponseConfig,
)
from detector.remediation.targets import Target

CATEGORY: Final = "category"
KILL_SWITCH: Final = "kill_switch"
PROTECTED: Final = "protected"
UNRENDERABLE: Final = "unrenderable"
BUDGET: Final = "budget"
PAIRING: Final = "pairing"

APPROVE: Final = "approve"
DENY: Final = "deny"
DECISIONS: Final = (APPROVE, DENY)


# -- protected identities ----------------------------------------------------------------------


def _any(value: str | None, globs: list[str]) -> str | None:
    if value is None:
        return None
    return next((g for g in globs if fnmatchcase(value, g)), None)


def protected_reason(target: Target, cfg: ProtectionConfig) -> str | None:
    ident = target.identity
    src_ns = ident.namespace if ident else None
    if ident and src_ns == cfg.self_namespace and ident.service_account == cfg.self_service_account:
        return f"caller {target.principal} is the detector itself"
    if g := _any(src_ns, cfg.namespaces):
        return f"caller namespace {src_ns} is protected ({g})"
    if g := _any(target.principal, cfg.identities):
        return f"identity {target.principal} is protected ({g})"
    if target.dst_namespace == cfg.self_namespace:
        return "destination is the detector's own namespace"
    if g := _any(target.dst_namespace, cfg.namespaces):
        return f"destination namespace {target.dst_namespace} is protected ({g})"
    if g := _any(target.dst_service, cfg.services):
        return f"destination service {target.dst_service} is protected ({g})"
    return None


def kill_switch_on(cfg: ResponseConfig, runtime: bool = False) -> bool:
    if cfg.kill_switch or runtime:
        return True
    return bool(cfg.kill_switch_file) and Path(str(cfg.kill_switch_file)).exists()


# -- budgets -----------------------------------------------------------------------------------


class Budget:
    def __init__(self, cfg: BudgetConfig) -> None:
        self.cfg = cfg
        self.spent: list[tuple[float, str, str]] = []  # (event ts, identity, cluster)

    def _prune(self, now: float) -> None:
        horizon = now - self.cfg.window_s
        self.spent = [s for s in self.spent if s[0] > horizon]

    def admits(self, now: float, identity: str, cluster: str, n: int = 1) -> str | None:
        """None if ``n`` more actions fit, else which limit they exceed."""
        self._prune(now)
        c = self.cfg
        if len(self.spent) + n > c.max_actions_per_window:
            return f"max {c.max_actions_per_window} actions per {c.window_s:g} s"
        if sum(1 for s in self.spent if s[1] == identity) + n > c.max_actions_per_identity:
            return f"max {c.max_actions_per_identity} actions per identity per {c.window_s:g} s"
        if sum(1 for s in self.spent if s[2] == cluster) + n > c.max_actions_per_cluster:
            return f"max {c.max_actions_per_cluster} actions per cluster per {c.window_s:g} s"
        return None

    def spend(self, now: float, identity: str, cluster: str, n: int = 1) -> None:
        self.spent.extend((now, identity, cluster) for _ in range(n))

    def get_state(self) -> list[list[Any]]:
        return [list(s) for s in self.spent]

    def set_state(self, state: list[list[Any]]) -> None:
        self.spent = [(float(t), str(i), str(c)) for t, i, c in state]


# -- approvals ---------------------------------------------------------------------------------


def sign(secret: str, action_id: str, decision: str, exp: int) -> str:
    msg = f"{action_id}.{decision}.{exp}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def approval_url(base_url: str, secret: str, action_id: str, decision: str, exp: int) -> str:
    query = urlencode({"exp": exp, "sig": sign(secret, action_id, decision, exp)})
    return f"{base_url.rstrip('/')}/v1/approvals/{action_id}/{decision}?{query}"


def approval_links(
    base_url: str, secret: str, action_id: str, now: float, ttl_s: float
) -> dict[str, Any]:
    exp = int(now + ttl_s)
    return {
        "approve_url": approval_url(base_url, secret, action_id, APPROVE, exp),
        "deny_url": approval_url(base_url, secret, action_id, DENY, exp),
        "expires_ts": exp,
    }


def verify_approval(
    secret: str, action_id: str, decision: str, exp: str | int, sig: str, now: float
) -> str | None:
    """None when the link is genuine and current, else why it is refused."""
    if decision not in DECISIONS:
        return "unknown decision"
    try:
        exp_i = int(exp)
    except (TypeError, ValueError):
        return "bad expiry"
    if not hmac.compare_digest(sign(secret, action_id, decision, exp_i), str(sig)):
        return "bad signature"
    if now > exp_i:
        return "link expired"
    return None


class ApprovalStore(Protocol):
    def decide(self, action_id: str, decision: str, now_ts: float) -> dict[str, Any] | None:
        """Apply a verified decision; the updated action, or None if unknown."""
        ...


def approval_app(
    store: ApprovalStore, secret: str, clock: Callable[[], float] = time.time
) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        action_id = request.match_info["action_id"]
        decision = request.match_info["decision"]
        q = request.rel_url.query
        refused = verify_approval(
            secret, action_id, decision, q.get("exp", ""), q.get("sig", ""), clock()
        )
        if refused:
            return web.json_response({"error": refused}, status=403)
        if request.method == "GET":
            url = html.escape(str(request.rel_url), quote=True)
            page = (
                f"<!doctype html><title>{decision} action</title>"
                f"<p>{html.escape(decision.capitalize())} remediation action "
                f"<code>{html.escape(action_id)}</code>?</p>"
                f'<form method="post" action="{url}">'
                f"<button>{html.escape(decision)}</button></form>"
            )
            return web.Response(text=page, content_type="text/html")
        result = store.decide(action_id, decision, clock())
        if result is None:
            return web.json_response({"error": "unknown action"}, status=404)
        return web.json_response(
            {"action_id": action_id, "state": result.get("state"), "decision": decision}
        )

    app = web.Application()
    app.router.add_route("GET", "/v1/approvals/{action_id}/{decision}", handle)
    app.router.add_route("POST", "/v1/approvals/{action_id}/{decision}", handle)
    return app
