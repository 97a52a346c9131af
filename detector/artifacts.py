"""Versioned baseline artifacts: what ``detector train`` writes and ``replay``/``run`` load.

Layout of a model directory (see ``models/README.md``)::

    DIR/CURRENT              the active version's name ("v0003"); ``revert`` rewrites it
    DIR/v0003/manifest.json  format, versions of detector and libraries, features, window,
                             hyper-parameters, training span, offline metrics, state checksum
    DIR/v0003/state.json.gz  learned state of every baseline and calibrator (JSON, no pickle)

Contract:
* ``save(dir, scorer, ...)`` writes the next version atomically (temporary folder, rename) and
  points CURRENT at it; earlier versions are kept, so every version can be diffed and reverted.
* ``load(path)`` accepts a model directory (uses CURRENT) or one version's folder. It refuses,
  with one readable ``ArtifactError`` line, an unknown format version, a checksum mismatch, or a
  scikit-learn major.minor other than the one it was written with (the forest is refit from
  stored rows on load and must come out identical).
* ``diff(a, b)`` summarises what changed between two versions: parameters, training spans,
  and the edges, identities, services and routes one knows and the other does not.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import scipy
import sklearn

from detector import __version__
from detector.baselines.features import FEATURES
from detector.errors import DetectorError
from detector.scoring import Scorer

FORMAT = "detector-baseline"
FORMAT_VERSION = 1
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class ArtifactError(DetectorError):
    """A model artifact is missing, damaged or incompatible; the message is one line."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]
    state: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def scorer(self, **kwargs: Any) -> Scorer:
        return Scorer.from_state(self.state, **kwargs)


def _minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def libraries() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "detector": __version__,
    }


def versions(model_dir: Path) -> list[str]:
    if not model_dir.is_dir():
        return []
    return sorted(
        (p.name for p in model_dir.iterdir() if _VERSION_RE.match(p.name) and p.is_dir()),
        key=lambda n: int(n[1:]),
    )


def current(model_dir: Path) -> str | None:
    f = model_dir / "CURRENT"
    return f.read_text().strip() if f.is_file() else None


def save(
    model_dir: str | Path,
    scorer: Scorer,
    window_s: float,
    training: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    existing = versions(root)
    n = int(existing[-1][1:]) + 1 if existing else 1
    name = f"v{n:04d}"
    state = scorer.get_state()
    blob = gzip.compress(orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY), mtime=0)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "libraries": libraries(),
        "features": list(FEATURES),
        "window_s": window_s,
        "models": {name_: m["params"] for name_, m in state["models"].items()},
        "thresholds": vars(scorer.thresholds),
        "training": training,
        "metrics": metrics,
        "state_sha256": hashlib.sha256(blob).hexdigest(),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        (tmp / "state.json.gz").write_bytes(blob)
        (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        os.replace(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    set_current(root, name)
    return root / name


def set_current(model_dir: Path, version: str) -> None:
    if not (model_dir / version / "manifest.json").is_file():
        known = ", ".join(versions(model_dir)) or "none"
        raise ArtifactError(f"{model_dir}: no version {version!r} (have: {known})")
    tmp = model_dir / ".CURRENT.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, model_dir / "CURRENT")


def resolve(path: str | Path) -> Path:
    p = Path(path)
    if (p / "manifest.json").is_file():
        return p
    cur = current(p)
    if cur is None:
        if not p.exists():
            raise ArtifactError(f"{p}: no such model directory (train one with 'detector train')")
        raise ArtifactError(f"{p}: not a model directory (no CURRENT file or manifest.json)")
    return p / cur


def read_manifest(version_dir: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = orjson.loads((version_dir / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise ArtifactError(f"{version_dir}: unreadable manifest.json ({e})") from None
    return manifest


def load(path: str | Path) -> Artifact:
    vdir = resolve(path)
    manifest = read_manifest(vdir)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{vdir}: format {manifest.get('format')} v{manifest.get('format_version')} is not "
            f"{FORMAT} v{FORMAT_VERSION}; retrain with 'detector train'"
        )
    built = manifest.get("libraries", {}).get("scikit-learn", "?")
    if _minor(built) != _minor(sklearn.__version__):
        raise ArtifactError(
            f"{vdir}: built with scikit-learn {built}, this is {sklearn.__version__}; the forest "
            "would not refit identically; retrain with 'detector train'"
        )
    try:
        blob = (vdir / "state.json.gz").read_bytes()
    except OSError as e:
        raise ArtifactError(f"{vdir}: cannot read state.json.gz ({e.strerror})") from None
    if hashlib.sha256(blob).hexdigest() != manifest.get("state_sha256"):
        raise ArtifactError(f"{vdir}: state.json.gz does not match its manifest checksum")
    try:
        state = orjson.loads(gzip.decompress(blob))
    except (OSError, EOFError, orjson.JSONDecodeError) as e:
        raise ArtifactError(f"{vdir}: damaged state.json.gz ({e})") from None
    return Artifact(vdir, manifest, state)


def _knowledge(state: dict[str, Any]) -> dict[str, set[str]]:
    nov = state["models"].get("novelty", {}).get("state", {})
    routes = {f"{svc} {r}" for svc, rs in nov.get("routes", {}).items() for r in rs}
    return {
        "edges": set(nov.get("edges", {})),
        "identities": {
            f"{p}@{c}" for p, cs in nov.get("principal_clusters", {}).items() for c in cs
        },
        "services": set(nov.get("services", [])),
        "routes": routes,
    }


def diff(a: Artifact, b: Artifact, limit: int = 20) -> dict[str, Any]:
    ka, kb = _knowledge(a.state), _knowledge(b.state)
    out: dict[str, Any] = {"from": a.version, "to": b.version}
    params = {}
    for model in sorted(set(a.manifest["models"]) | set(b.manifest["models"])):
        pa, pb = a.manifest["models"].get(model, {}), b.manifest["models"].get(model, {})
        changed = {
            k: [pa.get(k), pb.get(k)] for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)
        }
        if changed:
            params[model] = changed
    out["parameters"] = params
    out["training"] = {"from": a.manifest.get("training"), "to": b.manifest.get("training")}
    for kind in ka:
        added, removed = sorted(kb[kind] - ka[kind]), sorted(ka[kind] - kb[kind])
        out[kind] = {
            "count": [len(ka[kind]), len(kb[kind])],
            "added": added[:limit],
            "removed": removed[:limit],
            "added_total": len(added),
            "removed_total": len(removed),
        }
    return out
