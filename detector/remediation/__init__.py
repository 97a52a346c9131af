"""Remediation: the response stage (DESIGN.md §6) without network delivery.

Findings (OCSF dicts) go into ``Responder.on_findings``; out come action records (JSON-able
dicts, see ``actions``) for the delivery stage, which applies approved ones and reports back
with ``Responder.mark_applied``; ``Responder.tick`` yields the ``Restore`` deliveries of expired
actions. Modules: ``playbooks`` (config and rules), ``policies`` (Istio/Cilium/NetworkPolicy
rendering), ``credentials`` (Vault/Kubernetes/SPIRE revoke requests), ``blast`` (blast radius
from the learned baseline), ``rails`` (protection, budgets, kill switch, signed approvals),
``actions`` (records, OCSF Remediation Activity), ``responder`` (the stage).
"""

from detector.remediation.actions import to_ocsf
from detector.remediation.playbooks import ResponseConfig, default_playbooks
from detector.remediation.rails import approval_app
from detector.remediation.responder import Responder

__all__ = ["Responder", "ResponseConfig", "approval_app", "default_playbooks", "to_ocsf"]
