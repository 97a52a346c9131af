"""Errors the detector raises, and what each means for the process.

Contract:
* ``DecodeError`` - one input unit (line, Kafka message) is bad. Never fatal: the pipeline
  counts it by ``reason`` (a short, bounded label), dead-letters it and carries on.
* ``PartialDecode`` - a unit holding many records (an OTLP message, a Hubble batch) had some
  bad items: ``records`` are the good ones, ``problems`` the reasons of the bad ones.
* ``ConfigError`` - the configuration is wrong. Startup stops with one readable line, exit 2.
* ``InfrastructureError`` - a broker, file or sink we depend on is broken. The service exits
  non-zero (exit 3) so Kubernetes restarts it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detector.records import FlowRecord


class DetectorError(Exception):
    """Base of every error the detector raises on purpose."""


class DecodeError(DetectorError):
    """One input unit could not be decoded; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PartialDecode(DetectorError):
    """Some items of a multi-record unit were bad; the good ones travel with the error."""

    def __init__(self, records: list[FlowRecord], problems: list[str]) -> None:
        super().__init__(f"{len(problems)} bad item(s): {', '.join(sorted(set(problems)))}")
        self.records = records
        self.problems = problems


class ConfigError(DetectorError):
    """The configuration is invalid; the message is one readable line."""


class InfrastructureError(DetectorError):
    """Something the detector depends on is broken; the process must exit non-zero."""
