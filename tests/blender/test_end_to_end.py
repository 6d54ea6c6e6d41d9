"""The real thing: the Reconstruct operator runs `python -m server run job.json` on a made clip and imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bpy
import checks
import numpy as np
import pytest

from blender_microexp.blender import importer
from blender_microexp.core.take import read_take

ROOT = Path(__file__).resolve().parents[2]
SERVER_PYTHON = ROOT / ".venv" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")

pytestmark = [pytest.mark.blender, pytest.mark.slow]


def test_reconstruct_made_clip_and_import(tmp_path: Path) -> None:
    # Full stages (refinement on) only, the default an artist runs; one run costs over a minute. Its deformation
    # offsets are too small to make detail keys (take.detail_basis drops them); fixture takes cover those keys.
    clip = tmp_path / "clip.mp4"
    made = subprocess.run([str(SERVER_PYTHON), "-m", "server", "make-clip", str(clip), "--frames", "12"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0 and clip.is_file(), f"make-clip failed: {made.stderr[-2000:]}"
    checks.fresh_file()
    checks.set_server(ROOT, python=str(SERVER_PYTHON), cache_dir=tmp_path / "cache")
    settings = bpy.context.scene.microexp
    settings.clip = str(clip)
    settings.stages = "full"
    settings.flow = "fast"
    result, message = checks.call_operator(bpy.ops.microexp.run_job)
    state = bpy.context.window_manager.microexp_job
    assert result == {"FINISHED"}, message or state.last_message
    take_dir = Path(state.job_dir) / "take"
    take = read_take(take_dir)
    assert take.frame_count == 12
    stem = "clip"
    mesh = bpy.data.objects[f"{stem}_head"]
    assert len(mesh.data.vertices) == int(take.header["dims"]["V"])
    assert mesh.data.shape_keys.key_blocks[1].name == take.expression_names[0]
    for i in (0, 6, 11):
        bpy.context.scene.frame_set(1 + i)
        got = importer.evaluated_vertices(bpy.context, mesh)
        assert float(np.abs(got - take["vertices"][i]).max()) < checks.TOL
    assert bpy.context.scene.camera == bpy.data.objects[f"{stem}_camera"]
