"""The add-on in Blender (bpy 5.x, headless): import exactness, re-import, failures, jobs, save/reopen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import checks
import pytest

pytestmark = pytest.mark.blender


@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_check(check: Callable[[Path], None], tmp_path: Path) -> None:
    check(tmp_path)


@pytest.mark.shared
def test_flame_topology(tmp_path: Path) -> None:
    if not checks.fixtures.FLAME_OBJ.is_file():
        pytest.skip(f"FLAME topology not found at {checks.fixtures.FLAME_OBJ} (../shared is absent)")
    checks.check_flame_topology(tmp_path)
