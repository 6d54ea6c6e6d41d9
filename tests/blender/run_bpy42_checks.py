"""Runs the Blender checks in whatever bpy this interpreter has (used for the 4.2 LTS venv, no pytest there).

Usage: .venv-bpy42/bin/python tests/blender/run_bpy42_checks.py [-k SUBSTRING]
Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checks  # noqa: E402


def main(argv: list[str]) -> int:
    pattern = argv[argv.index("-k") + 1] if "-k" in argv else ""
    checks.enable_addon()
    selected = list(checks.ALL_CHECKS)
    if checks.fixtures.FLAME_OBJ.is_file():
        selected += checks.SHARED_CHECKS
    else:
        print(f"SKIP check_flame_topology: {checks.fixtures.FLAME_OBJ} is absent")
    failed = 0
    import bpy

    print(f"bpy {bpy.app.version_string}")
    for check in selected:
        if pattern not in check.__name__:
            continue
        with tempfile.TemporaryDirectory(prefix="microexp-bpy-") as tmp:
            try:
                check(Path(tmp))
            except Exception:
                failed += 1
                print(f"FAIL {check.__name__}\n{traceback.format_exc()}")
            else:
                print(f"PASS {check.__name__}")
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
