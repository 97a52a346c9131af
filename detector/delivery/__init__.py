"""Outbound delivery of findings and actions: signed webhooks, Alertmanager, CloudEvents.

Contract: ``WebhookSink`` (durable outbox + Standard Webhooks signing, ordered per incident,
at-least-once) and ``AlertmanagerSink`` (active incidents as alerts) are finding sinks
(``detection.FindingSink``); ``DeliverySettings`` is their config section; ``OutboxStore``
is the synchronous view of the outbox the CLI uses to list and replay dead letters.
"""

from detector.delivery.alertmanager import AlertmanagerSink
from detector.delivery.outbox import DeadLetter, Outbox, OutboxStore
from detector.delivery.settings import (
    AlertmanagerSettings,
    DeliverySettings,
    WebhookEndpointSettings,
)
from detector.delivery.webhook import WebhookSink

__all__ = [
    "AlertmanagerSettings",
    "AlertmanagerSink",
    "DeadLetter",
    "DeliverySettings",
    "Outbox",
    "OutboxStore",
    "WebhookEndpointSettings",
    "WebhookSink",
]
