"""Test set-up for the add-on's core (no bpy, no torch): the fixture-take module under a unique name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "microexp_fixtures"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("fixtures.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
