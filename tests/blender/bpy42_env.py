"""Creates, once, the second virtualenv .venv-bpy42 (Python 3.11, bpy 4.2 LTS, numpy<2) for the 4.2 checks.

Idempotent: an existing venv whose bpy is 4.2 is reused. Raises Bpy42Unavailable (one sentence) when it
cannot be made, e.g. without access to the package index.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-bpy42"
BPY42 = "4.2.23"  # the newest 4.2 LTS wheel on PyPI for cp311 when this was written
PYTHON = VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


class Bpy42Unavailable(Exception):
    """The 4.2 venv cannot be created here."""


def _has_bpy42() -> bool:
    if not PYTHON.is_file():
        return False
    probe = subprocess.run([str(PYTHON), "-c", "import bpy, sys; sys.exit(bpy.app.version[:2] != (4, 2))"],
                           capture_output=True, timeout=120)
    return probe.returncode == 0


def ensure_bpy42_venv() -> Path:
    """The 4.2 venv's interpreter, creating the venv on first use."""
    if _has_bpy42():
        return PYTHON
    base = shutil.which("python3.11") or (sys.executable if sys.version_info[:2] == (3, 11) else None)
    if base is None:
        raise Bpy42Unavailable("Python 3.11 is needed to create .venv-bpy42 for the Blender 4.2 checks.")
    if not PYTHON.is_file():
        made = subprocess.run([base, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            raise Bpy42Unavailable(f"Could not create {VENV}: {made.stderr.strip()[-200:]}")
    pip = subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          f"bpy=={BPY42}", "numpy<2"], capture_output=True, text=True, timeout=1800)
    if pip.returncode != 0 or not _has_bpy42():
        last = (pip.stderr.strip().splitlines() or ["no output"])[-1]
        raise Bpy42Unavailable(f"Could not install bpy=={BPY42} into {VENV} ({last[:200]}).")
    return PYTHON


if __name__ == "__main__":
    print(ensure_bpy42_venv())
