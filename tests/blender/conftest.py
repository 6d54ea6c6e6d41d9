"""Blender tests: bpy headless, the add-on enabled once, every test from an empty file."""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy wheel (pip install bpy==5.0.1) is needed for the Blender tests")


@pytest.fixture(scope="session", autouse=True)
def _addon() -> None:
    from checks import enable_addon

    enable_addon()
