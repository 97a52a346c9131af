"""Shared test fixtures: where the shared fixtures and schemas live.

``../shared`` sits beside the project in development and in CI; ``DETECTOR_SHARED`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DETECTOR_SHARED", ROOT.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared folder not found at {SHARED} (set DETECTOR_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures"
