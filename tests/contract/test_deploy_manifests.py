"""Contract of deploy/: the kustomize trees, the container build file, the collector example.

* The kustomize trees are rendered here without the kustomize binary: a small loader reads each
  kustomization.yaml (``resources``, ``images``, strategic-merge ``patches`` of ConfigMaps and
  ``$patch: delete`` patches, the only features deploy/ uses; any other key fails the test
  rather than being skipped). Where ``kubectl`` is installed, its ``kubectl kustomize`` output
  must equal the loader's (so the trees also build with the real kustomize, whose load
  restrictor, for one, refuses files outside the kustomization's directory).
* Every core object validates against the upstream Kubernetes 1.30 OpenAPI schemas
  (``kubernetes_validate``, strict); the ServiceMonitor (a CRD) is checked field by field, and
  the PrometheusRule's groups must be deploy/prometheus/rules.yaml's (the file promtool tests).
* Security: non-root, read-only root filesystem, no privilege escalation, ALL capabilities
  dropped, RuntimeDefault seccomp, probes on /healthz and /readyz; RBAC grants only the three
  policy kinds the playbooks render.
* The ConfigMap's detector config passes the project's own loader (``detector.config``), with
  the ``${env:...}`` secrets supplied as the workload would supply them from the Secret.
* The workload is the base's Deployment (one replica, one shared ReadWriteOnce claim) in
  overlays/dry-run and overlays/enforce, and a StatefulSet in overlays/scale-out (several
  replicas sharing the input through ``scale_out``, a state volume per pod from
  ``volumeClaimTemplates``); every check runs for each overlay.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from detector.config import DetectorConfig, load_config
from detector.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
OVERLAYS = ["dry-run", "enforce", "scale-out"]
SCALE_OUT = "scale-out"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
K8S_VERSION = "1.30.0"
NAMESPACE = "mesh-detector"
SECRET_NAME = "detector-secrets"

POLICY_KINDS = {
    ("security.istio.io", "authorizationpolicies"),
    ("cilium.io", "ciliumnetworkpolicies"),
    ("networking.k8s.io", "networkpolicies"),
}
POLICY_VERBS = {"get", "list", "watch", "create", "patch", "delete"}
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# test values for the secrets the workload takes from detector-secrets
FAKE_ENV = {
    "KAFKA_SASL_PASSWORD": "kafka-pass",
    "SOC_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "DETECTOR_APPROVAL_SECRET": "approval-signing-key-0123456789",
}
_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


# ---------------------------------------------------------------------------------------------
# A minimal kustomize


_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys, kustomize does not: refuse duplicates."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dup = {k for k in keys if keys.count(k) > 1}
        assert not dup, f"duplicate YAML keys {sorted(dup)} at {node.start_mark}"
        return super().construct_mapping(node, deep=deep)


def _load_all(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as it applies to ConfigMaps: maps merge key by key, the rest replaces."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(patch)


def _ident(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _render(directory: Path) -> list[dict[str, Any]]:
    (k,) = _load_all((directory / "kustomization.yaml").read_text())
    unknown = set(k) - _KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: the test's loader does not implement {sorted(unknown)}"
    assert k["kind"] == "Kustomization"
    objs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            objs += _render(path)
        else:
            objs += _load_all(path.read_text())
    for p in k.get("patches", []):
        assert set(p) == {"path"}, f"only file strategic-merge patches are supported: {p}"
        (patch,) = _load_all((directory / p["path"]).read_text())
        hits = [i for i, o in enumerate(objs) if _ident(o) == _ident(patch)]
        assert len(hits) == 1, f"patch {p['path']} matches {len(hits)} objects"
        if patch.get("$patch") == "delete":  # the whole object goes (any kind)
            assert set(patch) == {"apiVersion", "kind", "metadata", "$patch"}, p["path"]
            assert set(patch["metadata"]) <= {"name", "namespace"}, p["path"]
            assert patch["apiVersion"] == objs[hits[0]]["apiVersion"], p["path"]
            del objs[hits[0]]
            continue
        assert "$patch" not in patch, f"{p['path']}: only `$patch: delete` is implemented"
        assert patch["kind"] == "ConfigMap", "the loader's merge is exact for ConfigMaps only"
        objs[hits[0]] = _merge(objs[hits[0]], patch)
    for img in k.get("images", []):
        for o in objs:
            for c in _containers(o):
                if c["image"].split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"
    return objs


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(_render(KUSTOMIZE / "overlays" / overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(overlay)))


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workload(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The detector's workload: the Deployment, or the StatefulSet of overlays/scale-out."""
    found = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, f"expected one workload, found {[_ident(o) for o in found]}"
    return found[0]


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = workload(objs)["spec"]["template"]["spec"]
    return spec


def detector_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(objs)["containers"]
    assert [c["name"] for c in containers] == ["detector"]
    return containers[0]


def load_detector_config(
    objs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, DetectorConfig]:
    text = one(objs, "ConfigMap")["data"]["config.yaml"]
    for name in {m.group(1) for m in _ENV.finditer(text)}:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return text, load_config(path)


# ---------------------------------------------------------------------------------------------
# Rendering and schemas


COMMON_KINDS = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "Service",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "PrometheusRule",
]


def expected_kinds(overlay: str) -> list[str]:
    if overlay == SCALE_OUT:
        # no Deployment and no shared claim: the StatefulSet's pods each get their own
        return sorted([*COMMON_KINDS, "StatefulSet"])
    return sorted([*COMMON_KINDS, "PersistentVolumeClaim", "Deployment"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(overlay: str) -> None:
    objs = rendered(overlay)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == expected_kinds(overlay)
    assert len({_ident(o) for o in objs}) == len(objs)
    for o in objs:
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == NAMESPACE, _ident(o)
    assert detector_container(objs)["image"] == "ghcr.io/example/mesh-detector:0.1.0"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_loader_renders_what_kubectl_kustomize_renders(overlay: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    real = sorted(_load_all(out.stdout), key=_ident)
    assert real == sorted(rendered(overlay), key=_ident)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_strictly(overlay: str) -> None:
    checked = 0
    for obj in rendered(overlay):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked == len(expected_kinds(overlay)) - len(CUSTOM_KINDS)


@pytest.mark.parametrize("overlay", ["dry-run", SCALE_OUT])
def test_strict_validation_catches_a_misspelt_field(overlay: str) -> None:
    obj = workload(rendered(overlay))
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_reaches_into_the_volume_claim_templates() -> None:
    sts = one(rendered(SCALE_OUT), "StatefulSet")
    sts["spec"]["volumeClaimTemplates"][0]["spec"]["accesMode"] = ["ReadWriteOnce"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_no_secret_is_committed() -> None:
    for path in DEPLOY.rglob("*.yaml"):
        for doc in _load_all(path.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", path
    for overlay in OVERLAYS:
        assert "whsec_" not in one(rendered(overlay), "ConfigMap")["data"]["config.yaml"]


def test_secret_keys_are_documented() -> None:
    readme = (DEPLOY / "README.md").read_text()
    keys = [
        e["valueFrom"]["secretKeyRef"]["key"]
        for overlay in OVERLAYS
        for e in detector_container(rendered(overlay))["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert keys
    for key in keys:
        assert f"`{key}`" in readme, f"secret key {key} is not documented in deploy/README.md"
    assert SECRET_NAME in readme


# ---------------------------------------------------------------------------------------------
# Service, probes, monitoring


def _port(container: dict[str, Any], ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    return next(p["containerPort"] for p in container["ports"] if p["name"] == ref)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_servicemonitor_reach_the_metrics_endpoint(overlay: str) -> None:
    objs = rendered(overlay)
    container = detector_container(objs)
    pod_labels = workload(objs)["spec"]["template"]["metadata"]["labels"]
    svc = one(objs, "Service")
    if overlay == SCALE_OUT:  # the StatefulSet's governing Service exists
        assert one(objs, "StatefulSet")["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["port"] == 8080
    assert _port(container, svc_port["targetPort"]) == 8080

    sm = one(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = sm["spec"]
    assert spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (ep,) = spec["endpoints"]
    assert ep["port"] == svc_port["name"]
    assert ep["path"] == "/metrics"
    assert ep.get("scheme", "http") == "http"
    assert re.fullmatch(r"\d+s", ep["interval"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security_and_probes(overlay: str) -> None:
    objs = rendered(overlay)
    dep = workload(objs)
    if dep["kind"] == "Deployment":
        # one replica: the state claim is ReadWriteOnce and the SQLite outbox has one writer,
        # so the old pod goes before the new one starts
        assert dep["spec"]["replicas"] == 1
        assert dep["spec"]["strategy"] == {"type": "Recreate"}
    else:
        assert dep["spec"]["replicas"] > 1  # overlays/scale-out; its own test has the rest
    pod = dep["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("hostNetwork", False) is False and pod.get("hostPID", False) is False
    for c in _containers(dep):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc.get("privileged", False) is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["capabilities"].get("add")
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
    c = detector_container(objs)
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and _port(c, live["port"]) == 8080
    assert ready["path"] == "/readyz" and _port(c, ready["port"]) == 8080
    if "startupProbe" in c:
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volumes_cover_every_path_the_detector_writes(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = rendered(overlay)
    wl = workload(objs)
    pod = wl["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # a StatefulSet's volumeClaimTemplates are volumes of each pod too (its own claim)
    templates = {t["metadata"]["name"]: t for t in wl["spec"].get("volumeClaimTemplates", [])}
    assert not volumes.keys() & templates.keys()
    mounts = {m["mountPath"]: m for m in detector_container(objs)["volumeMounts"]}
    for m in mounts.values():
        assert m["name"] in volumes or m["name"] in templates, m

    config_vol = volumes[mounts["/etc/detector"]["name"]]
    assert config_vol["configMap"]["name"] == one(objs, "ConfigMap")["metadata"]["name"]
    assert mounts["/etc/detector"].get("readOnly") is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    pvcs = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    state_name = mounts["/var/lib/detector"]["name"]
    if state_name in templates:
        # one claim per pod (state-detector-0, -1...): each replica's outbox and dead letters
        assert wl["kind"] == "StatefulSet"
        assert templates[state_name]["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert "storage" in templates[state_name]["spec"]["resources"]["requests"]
        assert not pvcs  # and no claim shared between the replicas
    else:
        state = volumes[state_name]
        assert "emptyDir" in state or "persistentVolumeClaim" in state
        if "persistentVolumeClaim" in state:
            assert wl["spec"]["replicas"] == 1  # a ReadWriteOnce claim, one SQLite writer
            claim = state["persistentVolumeClaim"]["claimName"]
            assert [p["metadata"]["name"] for p in pvcs] == [claim]

    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    _, cfg = load_detector_config(objs, tmp_path, monkeypatch)
    written = [cfg.delivery.outbox_path, cfg.dead_letters.path, cfg.detection.model]
    for path in written:
        assert path and any(path.startswith(w.rstrip("/") + "/") for w in writable), path
    # the container's own command reads the mounted config
    args = detector_container(objs)["args"]
    assert args[0] == "run" and args[args.index("-c") + 1] == "/etc/detector/config.yaml"


# ---------------------------------------------------------------------------------------------
# RBAC


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_only_the_three_policy_kinds(overlay: str) -> None:
    objs = rendered(overlay)
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding")]
    role = one(objs, "ClusterRole")
    granted: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no nonResourceURLs
        assert set(rule["verbs"]) <= POLICY_VERBS, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in group and "*" not in resource and "/" not in resource
                granted.add((group, resource))
    assert granted == POLICY_KINDS
    # each kind gets the whole verb set the applier needs
    for group, resource in POLICY_KINDS:
        verbs = {
            v
            for r in role["rules"]
            if group in r["apiGroups"] and resource in r["resources"]
            for v in r["verbs"]
        }
        assert verbs == POLICY_VERBS, (group, resource)

    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = one(objs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert pod_spec(objs)["serviceAccountName"] == sa["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# The detector config in the ConfigMap


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_config_passes_the_project_loader(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = rendered(overlay)
    text, cfg = load_detector_config(objs, tmp_path, monkeypatch)

    (src,) = cfg.sources
    assert src.type == "kafka"
    topics = {t.name: t for t in src.topics}
    istio = [t for n, t in topics.items() if n.startswith("istio-access-")]
    assert len(istio) >= 2 and all(t.cluster for t in istio)
    assert topics["otlp_spans"].format in ("otlp_proto", "otlp_proto_traces")
    assert topics["otlp_logs"].format in ("otlp_proto", "otlp_proto_logs")
    assert src.sasl_plain_password is not None
    assert src.sasl_plain_password.get_secret_value() == FAKE_ENV["KAFKA_SASL_PASSWORD"]

    assert cfg.detection.model == "/var/lib/detector/models"
    assert cfg.delivery.outbox_path == "/var/lib/detector/outbox.db"
    (hook,) = cfg.delivery.webhooks
    assert hook.secrets == [FAKE_ENV["SOC_WEBHOOK_SECRET"]]
    assert hook.url.startswith("https://")
    assert cfg.service.listen_port == 8080
    assert cfg.response.protected.self_namespace == NAMESPACE
    sa_name = one(objs, "ServiceAccount")["metadata"]["name"]
    assert cfg.response.protected.self_service_account == sa_name
    if overlay in ("dry-run", SCALE_OUT):
        assert cfg.response.mode == "dry_run"
    else:
        assert cfg.response.mode == "approval"
        assert cfg.response.approval.secret == FAKE_ENV["DETECTOR_APPROVAL_SECRET"]
        assert cfg.response.approval.base_url.startswith("https://")

    # every placeholder without a default is set by the container, from detector-secrets
    env = {e["name"]: e for e in detector_container(objs)["env"]}
    required = {m.group(1) for m in _ENV.finditer(text) if m.group(2) is None}
    assert {"KAFKA_SASL_PASSWORD", "SOC_WEBHOOK_SECRET"} <= required
    for name in required:
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME, name


@pytest.mark.parametrize("missing", ["KAFKA_SASL_PASSWORD", "SOC_WEBHOOK_SECRET"])
def test_config_refuses_to_start_without_its_secrets(
    missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = rendered("dry-run")
    load_detector_config(objs, tmp_path, monkeypatch)  # sets every fake secret
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigError, match=missing):
        load_config(tmp_path / "config.yaml")


def test_enforce_changes_only_the_response_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, dry = load_detector_config(rendered("dry-run"), tmp_path / "a", monkeypatch)
    _, enforce = load_detector_config(rendered("enforce"), tmp_path / "b", monkeypatch)
    a, b = dry.model_dump(mode="json"), enforce.model_dump(mode="json")
    ra, rb = a.pop("response"), b.pop("response")
    assert a == b
    assert (ra["mode"], rb["mode"]) == ("dry_run", "approval")
    ra.pop("mode"), rb.pop("mode"), ra.pop("approval"), rb.pop("approval")
    assert ra == rb
    # and the rest of the objects are the base's
    others = [o for o in rendered("enforce") if o["kind"] != "ConfigMap"]
    assert others == [o for o in rendered("dry-run") if o["kind"] != "ConfigMap"]


# ---------------------------------------------------------------------------------------------
# Disruptions


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdb_covers_the_pods_and_lets_one_go_at_a_time(overlay: str) -> None:
    objs = rendered(overlay)
    pdb = one(objs, "PodDisruptionBudget")["spec"]
    # one replica: drains are allowed (the pod drains on SIGTERM, resumes from its offsets);
    # scale-out: one replica at a time, its partitions rebalance to the others
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    pod_labels = workload(objs)["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


# ---------------------------------------------------------------------------------------------
# overlays/scale-out


def test_scale_out_runs_several_replicas_each_with_its_own_state_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = rendered(SCALE_OUT)
    sts = one(objs, "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] > 1
    assert spec["podManagementPolicy"] == "Parallel"  # Kafka's groups order the work, not k8s
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["updateStrategy"].get("rollingUpdate", {}).get("partition", 0) == 0
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    # scaling down or deleting keeps each pod's claim: its outbox may hold undelivered webhooks
    retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
    assert retention.get("whenScaled", "Retain") == "Retain"
    assert retention.get("whenDeleted", "Retain") == "Retain"

    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in detector_container(objs)["volumeMounts"]}
    assert mounts["/var/lib/detector"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # what only one replica may write lives on its own claim
    _, cfg = load_detector_config(objs, tmp_path, monkeypatch)
    d = cfg.detection
    per_pod = [cfg.delivery.outbox_path, cfg.dead_letters.path, d.checkpoint_path, d.snapshot_dir]
    for path in per_pod:
        assert path is None or path.startswith("/var/lib/detector/"), path
    assert not [o for o in objs if o["kind"] in ("Deployment", "PersistentVolumeClaim")]


def test_scale_out_pods_are_the_base_pods_but_for_the_state_volume() -> None:
    base_tpl = one(rendered("dry-run"), "Deployment")["spec"]["template"]
    tpl = one(rendered(SCALE_OUT), "StatefulSet")["spec"]["template"]
    base_pod, pod = base_tpl["spec"], tpl["spec"]
    assert tpl["metadata"] == base_tpl["metadata"]
    state = next(
        m["name"]
        for m in pod["containers"][0]["volumeMounts"]
        if m["mountPath"] == "/var/lib/detector"
    )
    # the base's shared claim becomes the StatefulSet's per-pod claim template
    base_pod["volumes"] = [v for v in base_pod["volumes"] if v["name"] != state]
    # spread over nodes, so that a node drain takes one replica
    (spread,) = pod.pop("topologySpreadConstraints")
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items()
    # dry run only: an approval link is answered by the replica that proposed the action
    (base_c,) = base_pod["containers"]
    base_c["env"] = [e for e in base_c["env"] if e["name"] != "DETECTOR_APPROVAL_SECRET"]
    assert pod == base_pod


def test_scale_out_config_is_the_base_config_plus_scale_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, dry = load_detector_config(rendered("dry-run"), tmp_path / "a", monkeypatch)
    _, cfg = load_detector_config(rendered(SCALE_OUT), tmp_path / "b", monkeypatch)
    a, b = dry.model_dump(mode="json"), cfg.model_dump(mode="json")
    assert a.pop("scale_out") is None and b.pop("scale_out") is not None
    assert a == b

    s = cfg.scale_out
    assert s is not None
    (src,) = cfg.sources
    inputs = {t.name for t in src.topics}
    # the internal and the state topic are the detector's own, never one of its inputs
    assert s.state_topic_name != s.topic
    assert not {s.topic, s.state_topic_name} & inputs
    assert s.group_id != src.group_id  # ingest and edge owners are separate consumer groups
    assert s.replication_factor == 3  # a real cluster: the state survives a broker
    replicas = one(rendered(SCALE_OUT), "StatefulSet")["spec"]["replicas"]
    assert s.partitions >= replicas  # every replica owns edges


def test_scale_out_topics_acls_and_groups_are_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (DEPLOY / "README.md").read_text()
    _, cfg = load_detector_config(rendered(SCALE_OUT), tmp_path, monkeypatch)
    s = cfg.scale_out
    assert s is not None
    for name in (s.topic, s.state_topic_name, s.group_id, cfg.sources[0].group_id):
        assert f"`{name}`" in readme, f"{name} is not documented in deploy/README.md"
    assert "kubectl apply -k deploy/kustomize/overlays/scale-out" in readme
    for word in ("ACL", "cleanup.policy=compact"):
        assert word in readme
    # the stale "not built" notes are gone
    stale = re.compile(r"scale-out\W+is\W+not\W+built|not\W+built.{0,40}scale", re.I | re.S)
    for path in [DEPLOY / "README.md", *KUSTOMIZE.rglob("*.yaml")]:
        assert not stale.search(path.read_text()), path


# ---------------------------------------------------------------------------------------------
# Containerfile and collector example


def _directives(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_runs_as_non_root() -> None:
    directives = _directives((DEPLOY / "Containerfile").read_text())
    froms = [rest for word, rest in directives if word == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = directives[max(i for i, (w, _) in enumerate(directives) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit() and int(user) == 10001
    group = users[-1].split(":")[1] if ":" in users[-1] else ""
    assert group not in ("root", "0")
    assert ("EXPOSE", "8080") in final
    assert ("ENTRYPOINT", '["detector"]') in final
    cmd = [rest for word, rest in final if word == "CMD"]
    assert cmd == ['["run", "-c", "/etc/detector/config.yaml"]']
    installs = [rest for word, rest in final if word == "RUN" and "pip install" in rest]
    assert installs and all("--no-index" in shlex.split(r) for r in installs)
    # every workload's uid is the image's
    for overlay in OVERLAYS:
        assert pod_spec(rendered(overlay))["securityContext"]["runAsUser"] == int(user)


def test_otel_collector_exports_to_the_topics_the_detector_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (col,) = _load_all((DEPLOY / "otel-collector.yaml").read_text())
    kafka = col["exporters"]["kafka"]
    assert kafka["logs"] == {"topic": "otlp_logs", "encoding": "otlp_proto"}
    assert kafka["traces"] == {"topic": "otlp_spans", "encoding": "otlp_proto"}
    pipelines = col["service"]["pipelines"]
    for signal in ("logs", "traces"):
        assert pipelines[signal]["receivers"] == ["otlp"]
        assert "kafka" in pipelines[signal]["exporters"]
        for proc in pipelines[signal]["processors"]:
            assert proc in col["processors"]
    assert "grpc" in col["receivers"]["otlp"]["protocols"]  # Istio's envoyOtelAls speaks gRPC
    cluster_attr = [
        a
        for p in col["processors"].values()
        for a in p.get("attributes", [])
        if a.get("key") == "k8s.cluster.name"
    ]
    assert cluster_attr and cluster_attr[0]["action"] in ("upsert", "insert")

    _, cfg = load_detector_config(rendered("dry-run"), tmp_path, monkeypatch)
    topics = {t.name: t.format for t in cfg.sources[0].topics}
    assert topics["otlp_logs"] == "otlp_proto_logs"
    assert topics["otlp_spans"] == "otlp_proto_traces"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rule_carries_the_tested_rules(overlay: str) -> None:
    rule = one(rendered(overlay), "PrometheusRule")
    assert rule["metadata"]["namespace"] == NAMESPACE
    tested = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"]["groups"] == tested["groups"]
    assert rule["spec"]["groups"], "no rule groups"
