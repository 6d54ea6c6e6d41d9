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


def _blender_ext(python: Path) -> Path:
    """Blender's own extension command-line tool (the one `blender --command extension` runs) in a bpy wheel."""
    code = "import bpy; print(bpy.utils.system_resource('SCRIPTS'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120,
                         check=True).stdout.strip().splitlines()[-1]
    tool = Path(out) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    assert tool.is_file(), f"no {tool}"
    return tool


@pytest.mark.parametrize("which", ["current", "4.2"])
def test_blenders_own_validation_accepts_the_zip(tmp_path: Path, which: str) -> None:
    """The strict checks of `blender --command extension validate` (and extensions.blender.org): tagline length and
    punctuation, tags, licence, permissions. Installing from disk checks less, so the install test alone misses them."""
    python = Path(sys.executable) if which == "current" else _bpy42()
    zip_path = _build_zip(tmp_path)
    proc = subprocess.run([str(python), str(_blender_ext(python)), "validate", str(zip_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_zip_is_reproducible(tmp_path: Path) -> None:
    import zipfile

    first = _build_zip(tmp_path / "a").read_bytes()
    assert _build_zip(tmp_path / "b").read_bytes() == first  # same sources, same bytes (fixed entry dates)
    assert "LICENSE" in zipfile.ZipFile(_build_zip(tmp_path / "c")).namelist()
