"""Signed webhook delivery: the ``WebhookSink`` finding sink and its per-endpoint workers.

Contract:
* ``WebhookSink`` implements ``detection.FindingSink``. ``emit(findings)`` (and
  ``emit_actions(actions)`` for OCSF remediation actions) serialises each payload once, fans it
  out to every endpoint whose ``kinds`` include it, writes the rows to the durable ``Outbox``
  and returns when that transaction is committed - the acknowledgement the pipeline waits for
  before committing input offsets. Delivery happens later, in background tasks.
* One worker task per endpoint claims due rows (oldest per incident only, see ``outbox``), sends
  up to ``concurrency`` at a time with Standard Webhooks headers (``webhook-id`` = the row's
  stable message id, ``webhook-timestamp`` = now, one ``v1`` signature per secret) and records
  every outcome in one transaction: 2xx delivered; 410 disables the endpoint (persisted; its
  queue becomes dead letters ``endpoint_disabled``); other 4xx dead ``http_<code>``; 408, 429,
  5xx, connection errors and timeouts retry with full-jitter exponential backoff, or after
  ``Retry-After`` when the receiver sent one (and a 429/503 ``Retry-After`` pauses the whole
  endpoint, since the receiver asked for quiet, not for another message), until
  ``max_attempts`` or ``max_age_s`` - then dead ``max_attempts`` / ``max_age``.
* A circuit breaker per endpoint stops sending after ``breaker_failures`` consecutive failures;
  after ``breaker_cooldown_s`` one probe goes out. Messages not sent while it is open keep
  their attempt count, so an outage costs probes, not the queue's retry budget.
* ``close()`` keeps delivering up to ``drain_s``, then stops the workers and returns in-flight
  rows to pending; ``abort()`` stops without any of that (as a crash would). Either way the
  next ``open`` of the same file resumes: at-least-once, duplicates only as retries with the
  same ``webhook-id``.
* ``from_settings`` builds the sink from the ``delivery`` config section synchronously (the
  outbox file opens at once, so a bad path fails at startup); an hourly task prunes delivered
  rows older than ``retention_s``. ``healthy`` is False once a worker died (the outbox failed);
  ``emit`` then raises ``InfrastructureError`` instead of acknowledging.
* Redirects are not followed (a redirect is a misconfigured endpoint, dead ``http_3xx``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from detector import __version__
from detector.delivery import cloudevents
from detector.delivery.outbox import Claimed, NewMessage, Outbox, OutboxStore, Result
from detector.delivery.retry import (
    CircuitBreaker,
    Clock,
    Outcome,
    RealClock,
    backoff_s,
    classify,
    parse_retry_after,
)
from detector.delivery.settings import DeliverySettings, WebhookEndpointSettings
from detector.delivery.signing import message_id, ordering_key, sign_headers
from detector.errors import InfrastructureError
from detector.tracing import tracer

log = logging.getLogger(__name__)

Kind = Literal["findings", "actions"]
USER_AGENT = f"detector/{__version__} (+standard-webhooks)"
# How long an idle worker sleeps (wall seconds) between looks at the queue when nothing wakes
# it: enqueues wake it at once, so this only bounds how late a scheduled retry can start.
IDLE_POLL_S = 0.5


@dataclass(slots=True)
class _Endpoint:
    settings: WebhookEndpointSettings
    keys: list[bytes]
    breaker: CircuitBreaker
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    paused_until: float = 0.0
    disabled: bool = False
    task: asyncio.Task[None] | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n


class WebhookSink:
    """Durable, signed, ordered-per-incident webhook delivery (see the module contract)."""

    def __init__(
        self,
        outbox: Outbox,
        endpoints: Sequence[WebhookEndpointSettings],
        *,
        source: str = "urn:detector",
        drain_s: float = 10.0,
        retention_s: float = 7 * 86400.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.source = source
        self.drain_s = drain_s
        self.retention_s = retention_s
        self.clock: Clock = clock or RealClock()
        self.rng = rng or random.Random()
        self.endpoints = {
            s.name: _Endpoint(s, s.keys(), CircuitBreaker(s.breaker_failures, s.breaker_cooldown_s))
            for s in endpoints
        }
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self._stopping = False
        self.enqueued = 0
        self.error: BaseException | None = None  # why a worker stopped, if one did
        self._maintenance: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        path: str | Path,
        endpoints: Sequence[WebhookEndpointSettings],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Clock | None = None,
        **kwargs: Any,
    ) -> WebhookSink:
        clk = clock or RealClock()
        outbox = await Outbox.open(path, synchronous=synchronous, clock=clk.now)
        return cls(outbox, endpoints, clock=clk, **kwargs)

    @classmethod
    def from_settings(
        cls, settings: DeliverySettings, *, clock: Clock | None = None
    ) -> WebhookSink:
        """Build from the ``delivery`` config section, synchronously (opens the file now, so a
        bad path fails at startup with ``InfrastructureError``); workers start on first emit."""
        clk = clock or RealClock()
        store = OutboxStore(settings.outbox_path, clock=clk.now)
        outbox = Outbox(store, ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox"))
        return cls(
            outbox,
            settings.webhooks,
            clock=clk,
            source=settings.source,
            drain_s=settings.drain_s,
            retention_s=settings.retention_s,
        )

    # -- the sink -----------------------------------------------------------------------------

    async def emit(self, findings: Sequence[Mapping[str, Any]]) -> None:
        await self._enqueue("findings", findings)

    async def emit_actions(self, actions: Sequence[Mapping[str, Any]]) -> None:
        await self._enqueue("actions", actions)

    async def _enqueue(self, kind: Kind, payloads: Sequence[Mapping[str, Any]]) -> None:
        if not payloads:
            return
        if self._stopping:
            raise RuntimeError("webhook sink is closed")
        if self.error is not None:
            # A worker died on the outbox (disk full, file gone): stop acknowledging, so the
            # pipeline stops committing offsets and the process exits for a restart.
            raise InfrastructureError(f"webhook delivery stopped: {self.error}")
        targets = [e for e in self.endpoints.values() if kind in e.settings.kinds]
        if not targets:
            return
        msgs: list[NewMessage] = []
        for p in payloads:
            mid = message_id(kind, p)
            key = ordering_key(p)
            plain: bytes | None = None
            wrapped: bytes | None = None
            for ep in targets:
                if ep.settings.envelope == "cloudevents":
                    if wrapped is None:
                        env = cloudevents.envelope(kind, p, mid, self.source)
                        wrapped = orjson.dumps(env)
                    body, ctype = wrapped, cloudevents.CONTENT_TYPE
                else:
                    if plain is None:
                        plain = orjson.dumps(p)
                    body, ctype = plain, "application/json"
                msgs.append(NewMessage(ep.settings.name, mid, key, body, kind, ctype))
        self.enqueued += await self.outbox.enqueue_many(msgs)
        await self.start()
        for ep in targets:
            ep.wake.set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the delivery workers (idempotent; ``emit`` calls it)."""
        if self._started:
            return
        self._started = True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            headers={"user-agent": USER_AGENT},
        )
        self._maintenance = asyncio.create_task(self._prune_loop(), name="outbox:prune")
        disabled = await self.outbox.disabled_endpoints()
        for ep in self.endpoints.values():
            ep.disabled = ep.settings.name in disabled
            if not ep.disabled:
                ep.task = asyncio.create_task(self._worker(ep), name=f"webhook:{ep.settings.name}")

    async def drain(self, timeout_s: float) -> bool:
        """Wait (wall seconds) until nothing is pending or in flight; False on timeout."""
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if await self.outbox.active() == 0:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)

    async def close(self, drain_s: float | None = None) -> None:
        """Deliver for up to ``drain_s`` (default: the configured one), then stop cleanly."""
        if self.outbox.closed:
            return
        wait = self.drain_s if drain_s is None else drain_s
        if self._started and wait > 0 and any(not e.disabled for e in self.endpoints.values()):
            await self.drain(wait)
        await self._stop_workers()
        with contextlib.suppress(Exception):
            await self.outbox.store_recover()
        await self.outbox.close()

    async def abort(self) -> None:
        """Stop at once, leaving rows in flight (what a crash leaves behind)."""
        await self._stop_workers()
        await self.outbox.close()

    async def _stop_workers(self) -> None:
        self._stopping = True
        tasks = [e.task for e in self.endpoints.values() if e.task is not None]
        if self._maintenance is not None:
            tasks.append(self._maintenance)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def healthy(self) -> bool:
        """For ``/readyz``: no worker has died."""
        return self.error is None and not self.outbox.closed

    def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, ep in self.endpoints.items():
            out[name] = dict(ep.stats)
            out[name]["breaker_trips"] = ep.breaker.trips
            out[name]["disabled"] = int(ep.disabled)
        return out

    # -- delivery -----------------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        # Delivered rows are kept only as idempotency keys; an hourly sweep bounds the file.
        while True:
            try:
                await self.outbox.prune(self.retention_s)
            except Exception as e:
                log.warning("outbox prune failed: %s", e)
            await asyncio.sleep(self.clock.real_s(3600.0))

    async def _idle(self, ep: _Endpoint, clock_s: float) -> None:
        real = min(max(self.clock.real_s(clock_s), 0.0), IDLE_POLL_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ep.wake.wait(), timeout=real)

    async def _worker(self, ep: _Endpoint) -> None:
        try:
            await self._deliver(ep)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("webhook worker %s stopped: %s", ep.settings.name, e)
            self.error = e

    async def _deliver(self, ep: _Endpoint) -> None:
        s = ep.settings
        sem = asyncio.Semaphore(s.concurrency)
        while not self._stopping and not ep.disabled:
            now = self.clock.now()
            blocked = ep.paused_until
            if ep.breaker.state(now) == "open":
                blocked = max(blocked, ep.breaker.open_until)
            if now < blocked:
                await self._idle(ep, blocked - now)
                continue
            # Cleared before the claim: an enqueue during the claim sets it again, so we do
            # not sleep past new work.
            ep.wake.clear()
            limit = 1 if ep.breaker.state(now) == "half_open" else s.batch
            rows = await self.outbox.claim(s.name, now, limit)
            if not rows:
                due = await self.outbox.next_due(s.name)
                await self._idle(ep, IDLE_POLL_S if due is None else due - now)
                continue
            results = await asyncio.gather(*(self._attempt(ep, r, sem) for r in rows))
            done = [r for r in results if r is not None]
            skipped = [row.id for row, r in zip(rows, results, strict=True) if r is None]
            if done:
                await self.outbox.record(done)
            if skipped:
                await self.outbox.release(skipped)
                ep.count("released", len(skipped))
            if ep.disabled:
                moved = await self.outbox.disable_endpoint(s.name, "http_410")
                ep.count("dead", moved)

    async def _attempt(self, ep: _Endpoint, row: Claimed, sem: asyncio.Semaphore) -> Result | None:
        async with sem:
            now = self.clock.now()
            # The breaker may have opened (or a 410 arrived) while this row waited its turn:
            # hand it back untried rather than spend one of its attempts on a known-bad endpoint.
            if ep.disabled or ep.breaker.state(now) == "open" or now < ep.paused_until:
                return None
            s = ep.settings
            headers = sign_headers(ep.keys, row.message_id, row.body)
            headers["content-type"] = row.content_type
            assert self._session is not None
            with tracer().start_as_current_span("detector.deliver") as span:
                span.set_attribute("detector.endpoint", s.name)
                span.set_attribute("detector.kind", row.kind)
                try:
                    async with self._session.post(
                        s.url,
                        data=row.body,
                        headers=headers,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=s.timeout_s),
                    ) as resp:
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
                        await resp.read()
                except Exception as e:  # connection, timeout, protocol: all worth a retry
                    span.set_attribute("detector.outcome", "error")
                    return self._retry(ep, row, f"{type(e).__name__}: {e}"[:300], None, 0)
                span.set_attribute("http.response.status_code", status)
        outcome = classify(status)
        if outcome is Outcome.DELIVERED:
            ep.breaker.record_success()
            ep.count("delivered")
            return Result(row.id, "delivered")
        if outcome is Outcome.GONE:
            ep.disabled = True
            ep.count("dead")
            return Result(row.id, "dead", reason="http_410", error="410 Gone: endpoint disabled")
        if outcome is Outcome.DEAD:
            ep.breaker.record_success()  # it answered: the endpoint is up, the message is bad
            ep.count("dead")
            return Result(row.id, "dead", reason=f"http_{status}", error=f"HTTP {status}")
        return self._retry(ep, row, f"HTTP {status}", retry_after, status)

    def _retry(
        self, ep: _Endpoint, row: Claimed, error: str, retry_after: str | None, status: int
    ) -> Result:
        s = ep.settings
        now = self.clock.now()
        ep.breaker.record_failure(now)
        attempts = row.attempts + 1
        if attempts >= s.max_attempts:
            ep.count("dead")
            return Result(row.id, "dead", reason="max_attempts", error=error)
        if now - row.created_at >= s.max_age_s:
            ep.count("dead")
            return Result(row.id, "dead", reason="max_age", error=error)
        asked = parse_retry_after(retry_after)
        if asked is not None:
            delay = min(asked, s.retry_after_max_s)
            if status in (429, 503):
                ep.paused_until = max(ep.paused_until, now + delay)
        else:
            delay = backoff_s(attempts, s.backoff_base_s, s.backoff_max_s, self.rng)
        # The last try happens at max_age rather than never.
        when = min(now + delay, row.created_at + s.max_age_s)
        ep.count("retried")
        return Result(row.id, "retry", next_attempt_at=when, error=error)
