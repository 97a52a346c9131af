"""Playbooks: which findings get which remediation actions, and the response stage's config.

Contract:
* ``ResponseConfig`` is the ``response`` section of the detector config (strict: unknown keys
  are errors, units in option names). Its defaults are safe: ``mode: dry_run`` (actions are
  recorded as proposals, nothing is applied), protected control-plane namespaces, budgets.
* A ``PlaybookRule`` matches a finding by ``finding_types`` (empty: any), ``categories`` (empty:
  any), ``min_severity_id`` (OCSF severity_id) and ``min_confidence_score`` (OCSF 0..100); its
  ``actions`` run in order. Rules are tried in order and the FIRST match wins (like a firewall),
  so specific rules go before general ones.
* Operational and context findings are never remediated: a rule that would give them a
  ``tighten_policy`` or ``revoke_credential`` is rejected when the config loads, and the
  responder refuses such actions at run time as well (``rails.CATEGORY``).
* ``default_playbooks()``: credential replay -> revoke (Kubernetes) + Istio DENY + notify;
  Kubernetes API abuse -> revoke (Kubernetes) + notify (the revoke brings its paired DENY);
  any other security finding with severity >= 4 -> Istio DENY + notify; operational/context ->
  notify only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from detector.anomalies import CONTEXT, FINDING_TYPES, OPERATIONAL, SECURITY

TIGHTEN: Literal["tighten_policy"] = "tighten_policy"
REVOKE: Literal["revoke_credential"] = "revoke_credential"
NOTIFY: Literal["notify"] = "notify"
REMEDIATION_KINDS = frozenset({TIGHTEN, REVOKE})
NEVER_REMEDIATED = frozenset({OPERATIONAL, CONTEXT})

Flavour = Literal["istio", "cilium", "networkpolicy"]
Backend = Literal["vault", "kubernetes", "spire"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TightenPolicy(_Strict):
    """Render a policy that cuts the offending edge (DENY, or a narrower allow-list)."""

    kind: Literal["tighten_policy"] = "tighten_policy"
    flavour: Flavour = "istio"
    ttl_s: float | None = Field(None, gt=0)  # None: ResponseConfig.default_ttl_s


class RevokeCredential(_Strict):
    """Revoke the credential behind the principal; always paired with a time-boxed DENY."""

    kind: Literal["revoke_credential"] = "revoke_credential"
    backend: Backend = "kubernetes"
    # Vault: which revoke; None picks from the evidence (lease id > accessor > entity)
    vault_operation: Literal["revoke_lease", "revoke_accessor", "disable_entity"] | None = None


class Notify(_Strict):
    """Tell people (the delivery stage sends it to the configured webhook targets)."""

    kind: Literal["notify"] = "notify"
    channel: str = "soc"


ActionSpec = Annotated[TightenPolicy | RevokeCredential | Notify, Field(discriminator="kind")]


class PlaybookRule(_Strict):
    name: str
    finding_types: list[str] = []
    categories: list[Literal["security", "operational", "context"]] = []
    min_severity_id: int = Field(1, ge=0, le=6)
    min_confidence_score: int = Field(0, ge=0, le=100)
    require_approval: bool = False
    actions: list[ActionSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> PlaybookRule:
        unknown = [t for t in self.finding_types if t not in FINDING_TYPES]
        if unknown:
            raise ValueError(f"unknown finding types {unknown}; known: {', '.join(FINDING_TYPES)}")
        if any(a.kind in REMEDIATION_KINDS for a in self.actions):
            cats: set[str] = set(self.categories)
            cats |= {FINDING_TYPES[t][0] for t in self.finding_types}
            if not self.finding_types and not self.categories:
                cats = {SECURITY}  # an unrestricted rule only ever remediates security findings
            bad = sorted(cats & NEVER_REMEDIATED)
            if bad:
                raise ValueError(
                    f"rule {self.name!r}: {'/'.join(bad)} findings are never remediated "
                    "(only notify is allowed for them)"
                )
        return self

    def matches(
        self, finding_type: str, category: str, severity_id: int, confidence_score: int
    ) -> bool:
        if self.finding_types and finding_type not in self.finding_types:
            return False
        if self.categories and category not in self.categories:
            return False
        return severity_id >= self.min_severity_id and confidence_score >= self.min_confidence_score


def default_playbooks() -> list[PlaybookRule]:
    return [
        PlaybookRule(
            name="credential-replay",
            finding_types=["credential_replay"],
            # its own threshold already makes it rare; novelty risk is bounded by the training
            # size, so a replayed credential rarely reaches severity 4 on risk alone
            min_severity_id=3,
            actions=[
                RevokeCredential(backend="kubernetes"),
                TightenPolicy(flavour="istio"),
                Notify(),
            ],
        ),
        PlaybookRule(
            name="k8s-api-abuse",
            finding_types=["k8s_api_abuse"],
            min_severity_id=4,
            actions=[RevokeCredential(backend="kubernetes"), Notify()],
        ),
        PlaybookRule(
            name="security-high",
            categories=["security"],
            min_severity_id=4,
            actions=[TightenPolicy(flavour="istio"), Notify()],
        ),
        PlaybookRule(
            name="operational-notify",
            categories=["operational", "context"],
            actions=[Notify()],
        ),
    ]


def select_rule(
    rules: list[PlaybookRule],
    finding_type: str,
    category: str,
    severity_id: int,
    confidence_score: int,
) -> PlaybookRule | None:
    """The first rule that matches, or None."""
    for r in rules:
        if r.matches(finding_type, category, severity_id, confidence_score):
            return r
    return None


DEFAULT_PROTECTED_NAMESPACES = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "istio-system",
    "cilium",
    "spire",
    "linkerd",
]


class ProtectionConfig(_Strict):
    """Identities and namespaces never acted on (fnmatch globs)."""

    namespaces: list[str] = Field(default_factory=lambda: list(DEFAULT_PROTECTED_NAMESPACES))
    identities: list[str] = []  # e.g. "spiffe://*/ns/payments/sa/ledger", "system:*"
    services: list[str] = []  # destination services never given a policy, e.g. "kube-apiserver"
    self_namespace: str = "mesh-detector"  # the detector's own namespace and service account
    self_service_account: str = "detector"


class BudgetConfig(_Strict):
    """Remediation actions admitted per sliding window (proposals count in dry-run too)."""

    window_s: float = Field(3600.0, gt=0)
    max_actions_per_window: int = Field(20, ge=0)
    max_actions_per_identity: int = Field(3, ge=0)
    max_actions_per_cluster: int = Field(10, ge=0)


class ApprovalConfig(_Strict):
    # HMAC key for approve/deny links; use ${env:DETECTOR_APPROVAL_SECRET} in the config file
    secret: str | None = None
    base_url: str = "http://detector.mesh-detector.svc:8080"
    link_ttl_s: float = Field(3600.0, gt=0)


class LifetimeConfig(_Strict):
    """Longest life of an issued credential: a revoke's paired DENY lasts at least this long."""

    svid_s: float = Field(3600.0, gt=0)  # SPIRE/Istio workload certificates
    bound_token_s: float = Field(3600.0, gt=0)  # Kubernetes bound service-account tokens
    vault_token_s: float = Field(3600.0, gt=0)


class RenderConfig(_Strict):
    workload_label: str = "app"  # destination pods carry <workload_label>: <service name>
    trust_domain: str = "cluster.local"
    istio_root_namespace: str = "istio-system"  # a policy here applies mesh-wide
    # NetworkPolicy peers through which other clusters' traffic arrives (east-west gateway)
    remote_peers: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "istio-system"}
                },
                "podSelector": {"matchLabels": {"istio": "eastwestgateway"}},
            }
        ]
    )


class ResponseConfig(_Strict):
    enabled: bool = True
    mode: Literal["dry_run", "approval", "auto"] = "dry_run"
    kill_switch: bool = False
    kill_switch_file: str | None = None  # its existence stops every new remediation
    default_ttl_s: float = Field(3600.0, gt=0)
    max_blast_radius_edges: int = Field(3, ge=0)  # above this an action needs approval
    pair_flavour: Literal["istio", "cilium"] = "istio"
    playbooks: list[PlaybookRule] = Field(default_factory=default_playbooks)
    protected: ProtectionConfig = ProtectionConfig()
    budgets: BudgetConfig = BudgetConfig()
    approval: ApprovalConfig = ApprovalConfig()
    lifetimes: LifetimeConfig = LifetimeConfig()
    rendering: RenderConfig = RenderConfig()

    @model_validator(mode="after")
    def _approval_needs_secret(self) -> ResponseConfig:
        if self.mode == "approval" and not self.approval.secret:
            raise ValueError("mode approval needs approval.secret (e.g. ${env:NAME})")
        return self
