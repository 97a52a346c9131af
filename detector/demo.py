"""The embedded demo: simulated multi-cluster traffic through the whole detector, findings
included, with nothing to install or configure.

Contract: ``prepare(model_dir)`` trains a model on ``train_hours`` of simulated traffic (no
scenarios) ending where the live hour starts, writes it to ``model_dir``, and returns the
config of the live run: the simulator replaying the last whole hour before now (or the hour
``DETECTOR_DEMO_START`` names) at ``speedup``
with every labelled attack and trap compressed into it, scored with that model, windows and
findings printed to the console, actions proposed in dry run. Deterministic for a given hour.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from detector.config import DetectorConfig, parse_config
from detector.errors import ConfigError
from detector.pipeline import Pipeline, PipelineSettings
from detector.replay import _WindowCollector, finish_training
from detector.scoring import Scorer
from detector.sources.simulate import SimulatorSource

CIDRS = {"10.10.0.0/16": "prod-eu", "10.20.0.0/16": "prod-us", "10.30.0.0/16": "staging"}


def live_start() -> float:
    """The last whole hour before now; ``DETECTOR_DEMO_START`` (epoch seconds) pins another
    hour, for a demo that shows the same thing every time (docs, tests)."""
    pinned = os.environ.get("DETECTOR_DEMO_START")
    if pinned:
        try:
            return float(int(float(pinned)) // 3600 * 3600)
        except ValueError:
            raise ConfigError(f"DETECTOR_DEMO_START={pinned!r} is not epoch seconds") from None
    return float((time.time() // 3600 - 1) * 3600)


def prepare(
    model_dir: str | Path, train_hours: float = 3.0, speedup: float = 300.0
) -> DetectorConfig:
    start = live_start()
    train_start = start - train_hours * 3600
    split = train_start + train_hours * 3600 * 0.7
    settings = PipelineSettings(allowed_lateness_s=10.0, cidrs=dict(CIDRS))
    scorer = Scorer()
    pipeline = Pipeline(settings, sinks=[_WindowCollector(lambda ws: scorer.train(ws, split))])
    source = SimulatorSource(seed=7, start=train_start, duration_s=train_hours * 3600, name="train")
    stats = asyncio.run(pipeline.run([source]))
    finish_training(scorer, stats, model_dir, settings.window_s, split, 0.3, ["simulator"])
    cfg: dict[str, Any] = {
        "sources": [
            {
                "type": "simulate",
                "seed": 7,
                "start": start,
                "duration_s": 3600,
                "speedup": speedup,
                "scenarios": True,
            }
        ],
        "resolution": {"cidrs": CIDRS},
        "aggregation": {"window_s": 60, "allowed_lateness_s": 10},
        "detection": {"model": str(model_dir)},
        "sinks": {"console": {"enabled": True, "top_edges": 3}},
    }
    return parse_config(cfg, "embedded demo")
