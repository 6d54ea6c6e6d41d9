"""Import a take into a fresh scene with the add-on's own import code and save it as a .blend.

usage: python tools/take_to_blend.py TAKE_DIR OUT.blend   (runs in the project's .venv, bpy wheel)
Used by `./microexp demo`; the .blend is written to a temporary name and renamed, so a failure
never leaves a half-written file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    take_dir, out = Path(argv[0]), Path(argv[1]).resolve()
    sys.path.insert(0, str(ROOT))
    import bpy

    import blender_microexp
    from blender_microexp.blender.importer import ImportTakeError, import_take

    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_microexp.register()
    try:
        result = import_take(bpy.context, take_dir)
    except ImportTakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tmp = out.with_name(f".{out.stem}.tmp.blend")
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp), check_existing=False, copy=True)
    os.replace(tmp, out)
    print(f"wrote {out} ({result.root.name})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
