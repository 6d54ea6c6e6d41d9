"""Shared fixtures for server tests: a FLAME-format stand-in folder built on ../shared's real topology."""

from __future__ import annotations

from pathlib import Path

import pytest
from flame_standin import make_flame_folder


@pytest.fixture(scope="session")
def flame_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """generic_model.pkl (chumpy-style, synthetic bases) with the real embedding files; skips without ../shared."""
    return make_flame_folder(tmp_path_factory.mktemp("flame"))
