"""Approval mode end to end on the service's HTTP server: a proposed DENY, its signed link
approved over real HTTP, the approved action delivered at once, and its TTL's Restore.

The finding comes from the real incident tracker; the responder, the detection stage, the
approval endpoint and the service's web app are the ones `detector run` assembles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from detector.anomalies import Anomaly, Subject
from detector.detection import DetectionStage
from detector.findings import IncidentTracker
from detector.pipeline import Pipeline
from detector.remediation import Responder, ResponseConfig, approval_app
from detector.scoring import Scorer
from detector.web import serve

SECRET = "approval-secret-for-tests"


class Collect:
    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    async def emit(self, items: Sequence[Mapping[str, Any]]) -> None:
        self.got.extend(dict(i) for i in items)

    async def close(self) -> None:
        return None


def lateral_finding(now: float) -> list[dict[str, Any]]:
    a = Anomaly(
        finding_type="lateral_movement", pattern="UNSEEN",
        subject=Subject(principal="spiffe://cluster.local/ns/shop/sa/recs", src_cluster="prod-eu"),
        window_start=now - 60, window_end=now, model="novelty", feature="new_destinations",
        observed=4.0, expected=0.0, p_value=1e-12,
        evidence={"new_destinations": ["ledger.payments@prod-us"]}, confidence=0.9,
    )
    return IncidentTracker().observe([a], now)


async def test_approve_link_applies_and_ttl_restores() -> None:
    now = time.time()
    cfg = ResponseConfig.model_validate({
        "mode": "approval", "approval": {"secret": SECRET, "base_url": "http://x"},
        "max_blast_radius_edges": 1000, "default_ttl_s": 600,
    })
    responder = Responder(cfg)
    actions = Collect()
    stage = DetectionStage(Scorer(models=[]), IncidentTracker(), [], responder, [actions])
    proposed = [r for r in responder.on_findings(lateral_finding(now), now)
                if r["kind"] == "tighten_policy"]
    assert proposed and proposed[0]["state"] == "proposed"
    approve = urlsplit(proposed[0]["approval"]["approve_url"])

    pipeline = Pipeline(sinks=[stage])
    server = await serve(pipeline, "127.0.0.1", 0, base=approval_app(stage, SECRET))
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            # a tampered signature is refused
            async with http.post(f"{base}{approve.path}?{approve.query}0") as r:
                assert r.status == 403
            # GET only shows a confirmation page (link scanners must not approve)
            async with http.get(f"{base}{approve.path}?{approve.query}") as r:
                assert r.status == 200 and "<form" in await r.text()
            assert proposed[0]["action_id"] not in {a["action_id"] for a in actions.got}
            async with http.post(f"{base}{approve.path}?{approve.query}") as r:
                assert r.status == 200 and (await r.json())["state"] == "approved"
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
        for _ in range(100):  # the approved record is delivered without waiting for a window
            if any(a["action_id"] == proposed[0]["action_id"] for a in actions.got):
                break
            await asyncio.sleep(0.02)
        delivered = [a for a in actions.got if a["action_id"] == proposed[0]["action_id"]]
        assert delivered and delivered[0]["state"] == "approved"
    finally:
        await server.close()
    restores = responder.tick(now + 3600)
    assert any(r["kind"] == "restore" and r["action_id"] == proposed[0]["action_id"]
               for r in restores)
