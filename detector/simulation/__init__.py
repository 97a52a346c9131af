"""A deterministic multi-cluster service-mesh traffic simulator (test data and live demo input).

Modules, each named for its part of the domain:

* ``topology``: clusters, namespaces, workloads, services, routes, the call graph, and the
  Kubernetes API clients; a fixed, hand-written mesh so scenarios can name their targets.
* ``traffic``: the event engine: per-edge seasonal Poisson rates, latencies, sizes and outcomes,
  drawn in numpy one event-time chunk at a time, merged in event-time order.
* ``writers``: rendering of events in the formats the real systems write (Istio JSON/text access
  logs, Kubernetes audit events, Hubble flows, OTLP trace protobuf) and ``write_files``.
* ``scenarios``: attacks and benign traps with ground-truth labels.

Contract: for a given seed, start and options the output is byte-for-byte identical, on any
machine (randomness comes only from ``numpy.random.Generator`` seeded per event-time chunk).
The Source adapter is ``detector.sources.simulate.SimulatorSource``.
"""

from __future__ import annotations

from detector.simulation.scenarios import Scenario, default_scenarios, labels_jsonl
from detector.simulation.topology import Mesh, build_mesh
from detector.simulation.traffic import SimOptions, Simulator, generate
from detector.simulation.writers import write_files

__all__ = [
    "Mesh",
    "Scenario",
    "SimOptions",
    "Simulator",
    "build_mesh",
    "default_scenarios",
    "generate",
    "labels_jsonl",
    "write_files",
]
