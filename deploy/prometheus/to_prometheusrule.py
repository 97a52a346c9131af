"""Print deploy/prometheus/rules.yaml wrapped as a Prometheus Operator ``PrometheusRule``.

Contract: reads rules.yaml beside this script and writes the kustomize base's
``prometheusrule.yaml`` to stdout (its ``spec.groups`` are rules.yaml's groups verbatim; a
contract test compares the two files).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HEADER = """\
# The alerting rules of deploy/prometheus/rules.yaml for the Prometheus Operator (needs the
# monitoring.coreos.com CRDs; drop this file from kustomization.yaml if you do not run the
# operator). spec.groups is rules.yaml's groups verbatim: a contract test fails when the two
# differ, and promtool tests rules.yaml (tests/contract/test_prometheus_rules.py).
# Regenerate after editing rules.yaml:
#   python deploy/prometheus/to_prometheusrule.py > deploy/kustomize/base/prometheusrule.yaml
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as rules.yaml has them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def main() -> None:
    rules = yaml.safe_load((Path(__file__).parent / "rules.yaml").read_text())
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "detector",
            "namespace": "mesh-detector",
            "labels": {
                "app.kubernetes.io/name": "detector",
                "app.kubernetes.io/part-of": "mesh-detector",
            },
        },
        "spec": {"groups": rules["groups"]},
    }
    sys.stdout.write(HEADER + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100))


if __name__ == "__main__":
    main()
