"""Retry policy for outbound deliveries: outcome classes, backoff, Retry-After, circuit breaker.

Contract:
* ``classify(status)``: 2xx ``DELIVERED``; 410 ``GONE`` (disable the endpoint); 408, 429 and
  5xx ``RETRY``; every other status (3xx - redirects are not followed - and 4xx) ``DEAD``.
  Connection errors and timeouts are ``RETRY`` (the caller decides that; there is no status).
* ``backoff_s(attempt, base, cap, rng)``: "full jitter" - uniform in
  ``[0, min(cap, base * 2**(attempt-1))]`` - so a fleet of retries after an outage spreads out
  instead of arriving in waves.
* ``parse_retry_after(value, now)``: seconds from now for ``Retry-After: <seconds>`` or an HTTP
  date; ``None`` when absent or unparsable (then the backoff applies).
* ``CircuitBreaker``: closed until ``failures`` consecutive failures, then open for
  ``cooldown_s``; then half-open, where the caller sends a single probe: success closes it,
  failure opens it again. While open nothing is sent, so a dead endpoint costs no CPU and
  burns no attempts of the queued messages.
* ``Clock``: ``now()`` in seconds and ``real_s(delay)``, the wall seconds to wait for ``delay``
  clock seconds. ``ScaledClock`` runs faster than real time so tests can simulate a long outage
  with production-like backoff settings; it never affects ``webhook-timestamp``.
"""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    GONE = "gone"


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.DEAD


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1 = after the first failure), full jitter."""
    ceiling = min(cap_s, base_s * (2.0 ** max(0, min(attempt - 1, 62))))
    return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` -> seconds to wait (>= 0), or ``None`` if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Clock(Protocol):
    def now(self) -> float: ...

    def real_s(self, delay_s: float) -> float: ...


class RealClock:
    def now(self) -> float:
        return time.time()

    def real_s(self, delay_s: float) -> float:
        return delay_s


class ScaledClock:
    """Clock time runs ``factor`` times faster than wall time (for tests and what-ifs)."""

    def __init__(self, factor: float, start: float | None = None) -> None:
        self.factor = float(factor)
        self._t0 = time.monotonic()
        self._start = time.time() if start is None else start

    def now(self) -> float:
        return self._start + (time.monotonic() - self._t0) * self.factor

    def real_s(self, delay_s: float) -> float:
        return delay_s / self.factor


@dataclass(slots=True)
class CircuitBreaker:
    failures: int
    cooldown_s: float
    consecutive: int = 0
    open_until: float = 0.0  # clock time; 0 = closed
    trips: int = 0

    def state(self, now: float) -> str:
        if self.open_until == 0.0:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def record_success(self) -> None:
        self.consecutive = 0
        self.open_until = 0.0

    def record_failure(self, now: float) -> None:
        self.consecutive += 1
        # A failed half-open probe re-opens at once; a closed breaker needs ``failures`` in a row.
        if self.open_until != 0.0 or self.consecutive >= self.failures:
            if self.open_until == 0.0:
                self.trips += 1
            self.open_until = now + self.cooldown_s
