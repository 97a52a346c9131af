"""Baselines: the learned models that say how unusual a closed window is. One module per family.

Contract of every baseline (see ``Baseline``):
* Hyper-parameters are constructor arguments, stored verbatim (``get_params()``); learned state
  lives in attributes ending in ``_`` and round-trips through ``get_state()``/``set_state()``
  as JSON-serialisable data (numpy arrays as lists), so artifacts need no pickle.
* ``learn(batch)`` folds one window time's edge windows into the state (online; called in event
  time order; the scorer never passes windows that raised findings: poisoning resistance).
* ``score(batch)`` returns ``Anomaly`` objects for one window time, with *raw* p-values; the
  scorer calibrates them against the model's own held-out training scores before fusing.
* Scoring is done per window time on all its edges at once (vectorised where it matters).
"""

from __future__ import annotations

from typing import Any, Protocol

from detector.anomalies import Anomaly
from detector.baselines.features import WindowBatch


class Baseline(Protocol):
    name: str

    def learn(self, batch: WindowBatch) -> None: ...

    def score(self, batch: WindowBatch) -> list[Anomaly]: ...

    def get_params(self) -> dict[str, Any]: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...
