"""Shared test fixtures: the golden fixtures and real side data the tests use live in `tests/data/`
(copied into the repository, see `tests/data/README.md`), so a clone with nothing beside it runs every test."""
from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data folder is missing from the repository: {path} (see tests/data/README.md)")
    return path


@pytest.fixture(scope="session")
def golden_models_dir() -> Path:
    return _require(DATA / "golden" / "models")


@pytest.fixture(scope="session")
def golden_eval_dir() -> Path:
    return _require(DATA / "golden" / "h36m_eval")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    return _require(DATA / "h36m_real")
