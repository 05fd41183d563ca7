"""Shared test fixtures. `../shared` must exist beside the repository: tests that need it fail loudly."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"required shared fixture folder is missing: {path} (clone the project with ../shared beside it)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def golden_models_dir() -> Path:
    return _require(SHARED / "golden" / "models")


@pytest.fixture(scope="session")
def golden_eval_dir() -> Path:
    return _require(SHARED / "golden" / "h36m_eval")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    return _require(SHARED / "data" / "h36m_real")
