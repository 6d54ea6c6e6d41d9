"""Import boundaries: the add-on's core imports without bpy, and no add-on module imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "blender_microexp"


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_addon_module_imports_torch_and_core_never_imports_bpy() -> None:
    files = list(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        roots = _imported_roots(path)
        assert "torch" not in roots, f"{path} imports torch"
        if "core" in path.relative_to(PACKAGE).parts:
            assert not roots & {"bpy", "bpy_extras", "mathutils"}, f"{path} imports Blender"


def test_core_imports_in_a_plain_interpreter() -> None:
    code = ("import sys, blender_microexp, blender_microexp.core.runner, blender_microexp.core.jobs, "
            "blender_microexp.core.rig; assert 'bpy' not in sys.modules and 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
