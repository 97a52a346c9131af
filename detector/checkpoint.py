"""Checkpoints of the live detection state, and scheduled snapshots of the learned baselines.

Contract:
* ``Checkpointer.save(stage, event_ts)`` writes the scorer (every baseline and calibrator, as
  learned online since the model was loaded), the open incidents, the response stage's
  actions and, in scale-out, where those baselines are in the window log (``exchange``) to
  ``path`` atomically (temporary file, fsync, rename): a crash leaves the previous
  checkpoint whole. ``load()`` returns it, or None when there is none; a damaged file is an
  ``InfrastructureError`` (the service must not silently relearn from zero).
* A checkpoint belongs to the model it grew from: ``load`` ignores one whose
  ``model_version`` differs from the model now configured (a retrained model starts fresh).
* ``due(event_ts)`` says when the next save is due (every ``interval_s`` of event time).
* ``snapshot(model_dir, scorer, window_s, event_ts)`` writes the online-learned scorer as a new
  model version (``artifacts.save``), so ``detector models list/diff/revert`` cover it.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import orjson

from detector.errors import InfrastructureError

FORMAT = "detector-checkpoint"


class Checkpointer:
    def __init__(self, path: str | Path, interval_s: float, model_version: str) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.model_version = model_version
        self.last_saved_ts: float | None = None

    def due(self, event_ts: float) -> bool:
        if self.last_saved_ts is None:
            self.last_saved_ts = event_ts  # the first window starts the clock
            return False
        return event_ts - self.last_saved_ts >= self.interval_s

    def save(self, stage: Any, event_ts: float) -> None:
        state = {
            "format": FORMAT,
            "model_version": self.model_version,
            "event_ts": event_ts,
            "scorer": stage.scorer.get_state(),
            "tracker": stage.tracker.get_state(),
            "responder": stage.responder.get_state() if stage.responder is not None else None,
        }
        extra = getattr(stage, "extra_state", None)
        if extra is not None:
            state["exchange"] = extra()  # scale-out: where the baselines are in the window log
        blob = gzip.compress(orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY), 3, mtime=0)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise InfrastructureError(f"cannot write checkpoint {self.path}: {e}") from None
        self.last_saved_ts = event_ts

    def load(self) -> dict[str, Any] | None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise InfrastructureError(f"cannot read checkpoint {self.path}: {e}") from None
        try:
            state: dict[str, Any] = orjson.loads(gzip.decompress(blob))
        except (OSError, EOFError, orjson.JSONDecodeError) as e:
            raise InfrastructureError(f"damaged checkpoint {self.path}: {e}") from None
        if state.get("format") != FORMAT or state.get("model_version") != self.model_version:
            return None
        self.last_saved_ts = state.get("event_ts")
        return state


def snapshot(model_dir: str | Path, scorer: Any, window_s: float, event_ts: float) -> Path:
    from detector import artifacts

    return artifacts.save(
        model_dir,
        scorer,
        window_s,
        training={
            "online_snapshot": True,
            "first_event_ts": scorer.first_ts,
            "last_event_ts": scorer.last_ts,
            "snapshot_event_ts": event_ts,
        },
        metrics={
            "edge_windows": scorer.stats.edge_windows,
            "window_times": scorer.stats.window_times,
            "windows_not_learned": scorer.stats.learned_skipped,
        },
    )
