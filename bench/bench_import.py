"""Benchmark: importing a 1000-frame take (50 expression keys, 16 detail keys, 5 joints) into Blender.

FLAME-sized mesh from ../shared/flame_topology when present, else a 5023-vertex procedural mesh.
Prints a markdown table (median of 3 runs; target ≤ 3 s). Run: .venv/bin/python bench/bench_import.py
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("microexp_fixtures", ROOT / "tests" / "core" / "fixtures.py")
assert _spec is not None and _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
sys.modules["microexp_fixtures"] = fixtures
_spec.loader.exec_module(fixtures)

import bpy  # noqa: E402

import blender_microexp  # noqa: E402
from blender_microexp.blender import importer  # noqa: E402
from blender_microexp.core.take import read_take, write_take  # noqa: E402

T, E, K, P, RUNS, TARGET_S = 1000, 50, 16, 36, 3, 3.0


def make_take(folder: Path) -> str:
    if fixtures.FLAME_OBJ.is_file():
        verts, faces = fixtures.read_obj(fixtures.FLAME_OBJ)
        kind = "FLAME topology"
    else:
        verts, faces = fixtures.procedural_mesh(5023)
        kind = "procedural"
    arrays = fixtures.build_take_arrays(verts, faces, T=T, E=E, K=K, P=P)
    write_take(folder, fixtures.fixture_header(E, frames=(0, T)), arrays)
    return kind


def main() -> int:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_microexp.register()
    with tempfile.TemporaryDirectory(prefix="microexp-bench-") as tmp:
        folder = Path(tmp) / "bench_take"
        kind = make_take(folder)
        read_s = []
        import_s = []
        for _ in range(RUNS):
            bpy.ops.wm.read_homefile(use_empty=True)
            t0 = time.perf_counter()
            take = read_take(folder)
            t1 = time.perf_counter()
            importer.import_take(bpy.context, take)
            t2 = time.perf_counter()
            read_s.append(t1 - t0)
            import_s.append(t2 - t1)
        v_count = int(take.header["dims"]["V"])
    blender_microexp.unregister()
    total = statistics.median(r + i for r, i in zip(read_s, import_s))
    print(f"| Blender | mesh | V | frames | expression keys | pose keys | detail keys | read take (s) | "
          f"build rig (s) | total, median of {RUNS} (s) | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {bpy.app.version_string} | {kind} | {v_count} | {T} | {E} | {P} | {K} | "
          f"{statistics.median(read_s):.2f} | {statistics.median(import_s):.2f} | {total:.2f} | "
          f"{'≤' if total <= TARGET_S else '>'} {TARGET_S:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
