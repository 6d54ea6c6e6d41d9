"""Both ends of the supported range: the checks on bpy 4.2 LTS (in .venv-bpy42), and installing the zip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bpy42_env import Bpy42Unavailable, ensure_bpy42_venv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytestmark = pytest.mark.blender


def _bpy42() -> Path:
    try:
        return ensure_bpy42_venv()
    except Bpy42Unavailable as exc:
        pytest.skip(f"Blender 4.2 checks not run: {exc}")


@pytest.mark.slow
def test_checks_on_bpy42() -> None:
    python = _bpy42()
    proc = subprocess.run([str(python), str(HERE / "run_bpy42_checks.py")], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert "bpy 4.2" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.count("PASS ") >= 14  # checks.ALL_CHECKS (and the shared ones where ../shared exists)


def _build_zip(tmp_path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_extension
    finally:
        sys.path.pop(0)
    return build_extension.build(tmp_path / "dist")


def test_zip_layout(tmp_path: Path) -> None:
    import zipfile

    names = set(zipfile.ZipFile(_build_zip(tmp_path)).namelist())
    assert {"blender_manifest.toml", "__init__.py", "core/take.py", "core/runner.py", "blender/importer.py",
            "operators/run_job.py", "ui/panel.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.parametrize("which", ["current", "4.2"])
def test_install_extension_zip(tmp_path: Path, which: str) -> None:
    python = Path(sys.executable) if which == "current" else _bpy42()
    zip_path = _build_zip(tmp_path)
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user")}
    proc = subprocess.run([str(python), str(HERE / "install_check.py"), str(zip_path)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "OK bl_ext.user_default.blender_microexp" in proc.stdout, \
        proc.stdout[-3000:] + proc.stderr[-3000:]
