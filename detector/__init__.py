"""detector: a streaming anomaly detector for multi-cluster service meshes.

The package reads mesh access logs, traces and authentication failures, aggregates them into
per-edge event-time windows (principal@cluster -> service@cluster), and hands the windows to the
scoring and response stages. See ``README.md`` for the two commands and ``DESIGN.md`` for the
contracts.
"""

__version__ = "0.1.0"
