"""Shared fixtures for server tests: a FLAME-format stand-in folder built on ../shared's real topology."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from flame_standin import make_flame_folder


@pytest.fixture(scope="session")
def flame_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """generic_model.pkl (chumpy-style, synthetic bases) with the real embedding files; skips without ../shared."""
    return make_flame_folder(tmp_path_factory.mktemp("flame"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Optimisation tests run single-threaded: two torch threads on a shared 2-core machine run several times
    slower than one, and one thread makes reductions reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
