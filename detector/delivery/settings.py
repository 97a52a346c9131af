"""Settings of the delivery stage: webhook endpoints, Alertmanager, the outbox file.

Contract: strict pydantic models (unknown keys rejected, frozen, units in option names) meant
to be one section of the detector config (``delivery:``). Secrets arrive already substituted
(``${env:NAME}`` is the config loader's job) and are checked here: one or two ``whsec_`` values
per endpoint (two while rotating; both signatures go out). Endpoint names are unique: they key
the outbox rows, so renaming an endpoint orphans its queue (listed by ``deliveries list``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from detector.delivery.signing import parse_secret

Kind = Literal["findings", "actions"]
KINDS: tuple[Kind, ...] = ("findings", "actions")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(v: str) -> str:
    if not re.match(r"^https?://[^\s/]+", v):
        raise ValueError("must be an http:// or https:// URL")
    return v


class WebhookEndpointSettings(_Strict):
    name: str
    url: str
    secrets: list[str] = Field(min_length=1, max_length=2)
    timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(15, ge=1)
    max_age_s: float = Field(3 * 86400.0, gt=0)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(600.0, gt=0)
    retry_after_max_s: float = Field(3600.0, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0)
    concurrency: int = Field(16, ge=1, le=256)
    batch: int = Field(256, ge=1, le=10_000)
    envelope: Literal["none", "cloudevents"] = "none"
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS), min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("endpoint name: letters, digits, '_', '.', '-' (max 63)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for s in v:
            parse_secret(s)  # raises ValueError with a readable message
        return v

    def keys(self) -> list[bytes]:
        return [parse_secret(s) for s in self.secrets]


class AlertmanagerSettings(_Strict):
    urls: list[str] = Field(min_length=1)  # base URLs, e.g. http://alertmanager:9093 (HA: all)
    resend_interval_s: float = Field(60.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    generator_url: str | None = None
    static_labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [_http_url(u) for u in v]

    @field_validator("static_labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", k):
                raise ValueError(f"label name {k!r} is not a Prometheus label name")
        return v


class DeliverySettings(_Strict):
    outbox_path: str = "state/outbox.sqlite"
    drain_s: float = Field(10.0, ge=0)  # on shutdown, keep delivering this long
    retention_s: float = Field(7 * 86400.0, gt=0)  # delivered rows kept for idempotency
    source: str = "urn:detector"  # CloudEvents ``source``
    webhooks: list[WebhookEndpointSettings] = Field(default_factory=list)
    alertmanager: AlertmanagerSettings | None = None

    @model_validator(mode="after")
    def _unique(self) -> DeliverySettings:
        names = [w.name for w in self.webhooks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate webhook endpoint name(s): {', '.join(dup)}")
        return self
