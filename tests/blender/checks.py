"""The Blender-side checks, as plain functions: run by pytest on bpy 5.x and by run_bpy42_checks.py on 4.2.

Each check starts from an empty file, takes a scratch folder and raises AssertionError on failure.
The add-on must be enabled (see enable_addon) before they run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FAKE_DIR = Path(__file__).resolve().parent / "fake_servers"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if "microexp_fixtures" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("microexp_fixtures", ROOT / "tests" / "core" / "fixtures.py")
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["microexp_fixtures"] = _module
    _spec.loader.exec_module(_module)

import microexp_fixtures as fixtures  # noqa: E402

from blender_microexp.blender import compat, importer  # noqa: E402
from blender_microexp.core import rig  # noqa: E402
from blender_microexp.core.take import read_take  # noqa: E402

ADDON = "blender_microexp"
TOL = 1e-5  # m; bpy evaluates in float32 (~1e-6 here), a detail key 20 % short is 2.5e-5 off


def enable_addon() -> None:
    import addon_utils

    if bpy.context.preferences.addons.get(ADDON) is None:
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
    assert hasattr(bpy.types.Scene, "microexp"), "the add-on did not register"


def fresh_file() -> None:
    bpy.ops.wm.read_homefile(use_empty=True)


def set_server(server_dir: Path, python: str = sys.executable, cache_dir: Path | None = None) -> None:
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.server_dir = str(server_dir)
    prefs.server_python = python
    prefs.head_model = "BUILTIN"
    prefs.cache_dir = str(cache_dir) if cache_dir else ""


def call_operator(op: Any, **kwargs: Any) -> tuple[set[str], str]:
    """Run an operator; an ERROR report (which bpy.ops raises in background mode) becomes CANCELLED + message."""
    try:
        return set(op(**kwargs)), ""
    except RuntimeError as exc:
        return {"CANCELLED"}, str(exc).removeprefix("Error: ").strip()


def microexp_objects() -> list[Any]:
    return [o for o in bpy.data.objects if o.name.startswith(("clip", "take", "face", "smoke", "flame"))]


def assert_matches_take(result: importer.ImportResult, take_dir: Path, frames: list[int]) -> float:
    """The evaluated mesh equals the take's vertices at these take frames; returns the worst error."""
    take = read_take(take_dir)
    scene = bpy.context.scene
    worst = 0.0
    for i in frames:
        scene.frame_set(result.frame_start + i)
        got = importer.evaluated_vertices(bpy.context, result.mesh)
        err = float(np.abs(got - take["vertices"][i]).max())
        worst = max(worst, err)
        assert err < TOL, f"frame {i}: evaluated mesh is {err:.2e} m off the take"
    return worst


def check_register_twice(tmp: Path) -> None:
    import blender_microexp

    fresh_file()
    for _ in range(2):
        blender_microexp.unregister()
        # bpy.ops.<module> hands back a wrapper for any attribute name, so only dir() tells a registered operator.
        assert not hasattr(bpy.types.Scene, "microexp"), "unregister left Scene.microexp behind"
        assert "run_job" not in dir(bpy.ops.microexp), "unregister left the run_job operator behind"
        blender_microexp.register()
        assert hasattr(bpy.types.Scene, "microexp") and hasattr(bpy.types.WindowManager, "microexp_job")
        assert "run_job" in dir(bpy.ops.microexp)
    handlers = [h for h in bpy.app.handlers.load_pre if getattr(h, "__module__", "") == ADDON]
    assert len(handlers) == 1, "register/unregister leaked load_pre handlers"


def check_import_structure_and_exactness(tmp: Path) -> None:
    fresh_file()
    folder = fixtures.make_fixture_take(tmp / "face_take", T=12, V=300, E=5, K=3, P=36, big_expression=True,
                                        first_frame=40, fps=24.0)
    take = read_take(folder)
    result = importer.import_take(bpy.context, folder, frame_start=1)
    name = "face_take"  # no clip in the header: the take folder's name
    assert result.collection.name == f"MicroExp {name}"
    assert {o.name for o in result.collection.objects} == {f"{name}_root", f"{name}_camera", f"{name}_rig",
                                                           f"{name}_head"}
    assert result.mesh.parent == result.armature and result.armature.parent == result.root
    assert result.camera.parent == result.root
    assert np.allclose(np.array(result.root.rotation_euler), [np.pi / 2, 0, 0])
    assert [b.name for b in result.armature.data.bones] == take.joint_names
    assert result.armature.data.bones["jaw"].parent.name == "neck"
    assert [g.name for g in result.mesh.vertex_groups] == take.joint_names
    keys = [k.name for k in result.mesh.data.shape_keys.key_blocks]
    assert keys[0] == "Basis" and len(keys) == 1 + 5 + 36 + 3
    assert keys[1:6] == take.expression_names and keys[6] == "pose.neck.00" and keys[-1] == "detail_02"
    assert len(result.mesh.data.vertices) == 300 and len(result.mesh.data.polygons) == len(take["faces"])
    scene = bpy.context.scene
    assert scene.frame_start == 1 and scene.frame_end == 12 and scene.render.fps == 24
    assert list(result.root["microexp_frame_numbers"]) == list(range(40, 52))
    assert (scene.render.resolution_x, scene.render.resolution_y) == (640, 480)
    fx = float(take["camera"][0])
    assert abs(result.camera.data.lens - fx * result.camera.data.sensor_width / 640) < 1e-4
    # expr_00 exceeds the ±10 slider limit, so its data was scaled and its values divided.
    big = result.mesh.data.shape_keys.key_blocks["expr_00"]
    assert big.slider_min >= -10 and big.slider_max <= 10
    scene.frame_set(1 + 5)
    want = float(take["expression"][5, 0])
    scale = float(np.abs(take["expression"][:, 0]).max()) / 10
    assert abs(big.value * scale - want) < 1e-3 * abs(want) + 1e-5
    jaw_q = result.armature.pose.bones["jaw"].rotation_quaternion
    assert np.allclose(np.array(jaw_q), rig.axis_angle_to_quaternion(take["pose"][:, 2])[5], atol=1e-5)
    assert np.allclose(np.array(result.armature.location), take["translation"][5], atol=1e-6)
    assert_matches_take(result, folder, [0, 5, 11])
    fcurves = [fc for a in result.actions for fc in compat.action_fcurves(a)]
    assert len(fcurves) == 3 + 4 + 4 * 4 + 5 + 36 + 3
    assert all(len(fc.keyframe_points) == 12 for fc in fcurves)
    if compat.SLOTTED_ACTIONS:
        assert [a.name for a in result.actions] == [name] and len(result.actions[0].slots) == 2
    else:
        assert [a.name for a in result.actions] == [name, f"{name}_shapes"]
    # pushed to the NLA, still playing
    assert result.armature.animation_data.nla_tracks[0].strips[0].action == result.actions[0]


def check_world_transform(tmp: Path) -> None:
    """The head's world position in Blender = the take's world (y-up) rotated into z-up by the root."""
    fresh_file()
    folder = fixtures.make_fixture_take(tmp / "take_world", T=4, V=80, E=2, K=1, P=0)
    take = read_take(folder)
    result = importer.import_take(bpy.context, folder, push_to_nla=False)
    bpy.context.scene.frame_set(result.frame_start + 2)
    bpy.context.view_layer.update()
    local = importer.evaluated_vertices(bpy.context, result.mesh)
    mw = np.array(result.mesh.matrix_world)
    blender_world = local @ mw[:3, :3].T + mw[:3, 3]
    head_world = rig.to_world(take["vertices"][2:3], take["pose"][2:3], take["translation"][2:3])[0]
    y_up_to_z_up = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    assert np.abs(blender_world - head_world @ y_up_to_z_up.T).max() < TOL
    assert result.armature.animation_data.action is not None  # not pushed: the action is active


def check_flame_topology(tmp: Path) -> None:
    fresh_file()
    folder = fixtures.make_flame_fixture_take(tmp / "flame_take", T=6, E=8, K=4, P=36)
    result = importer.import_take(bpy.context, folder)
    assert len(result.mesh.data.vertices) == 5023 and len(result.mesh.data.polygons) == 9976
    assert_matches_take(result, folder, [0, 3, 5])


def check_reimport_updates(tmp: Path) -> None:
    fresh_file()
    folder = fixtures.make_fixture_take(tmp / "take_again", T=6, V=100, E=3, K=2, P=36, seed=3)
    importer.import_take(bpy.context, folder)
    counts = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.armatures), len(bpy.data.actions),
              len(bpy.data.collections), len(bpy.data.cameras))
    # A re-run writes a new take into the same folder: the rig follows, nothing is duplicated.
    fixtures.make_fixture_take(folder, T=8, V=100, E=3, K=2, P=36, seed=4)
    again = importer.import_take(bpy.context, folder)
    assert again.replaced
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.armatures), len(bpy.data.actions),
            len(bpy.data.collections), len(bpy.data.cameras)) == counts
    assert again.mesh.name == "take_again_head" and again.collection.name == "MicroExp take_again"
    assert bpy.context.scene.frame_end == 8
    assert_matches_take(again, folder, [0, 7])


def check_damaged_take(tmp: Path) -> None:
    fresh_file()
    folder = fixtures.make_fixture_take(tmp / "take_bad", T=4, V=60, E=2, K=1, P=0)
    (folder / "take.npz").write_bytes(b"PK\x03\x04 not really a zip")
    before = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.collections), len(bpy.data.actions))
    try:
        importer.import_take(bpy.context, folder)
    except importer.ImportTakeError as exc:
        assert "take.npz is damaged and cannot be read" in str(exc), str(exc)
    else:
        raise AssertionError("a damaged take was imported")
    result, message = call_operator(bpy.ops.microexp.import_take, filepath=str(folder / "take.json"))
    assert result == {"CANCELLED"} and "damaged and cannot be read" in message
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.collections), len(bpy.data.actions)) == before


def import_failing_midway(folder: Path) -> str:
    """Import a take with the key-filling step broken, after part of the rig exists; returns the error's message."""
    original = compat.fill_fcurve

    def broken(*_args: Any) -> None:
        raise RuntimeError("simulated failure")

    compat.fill_fcurve = broken  # type: ignore[assignment]
    try:
        importer.import_take(bpy.context, folder)
    except importer.ImportTakeError as exc:
        return str(exc)
    finally:
        compat.fill_fcurve = original
    raise AssertionError("the failure was not reported")


def check_failure_midway_leaves_nothing(tmp: Path) -> None:
    """An exception after part of the rig exists removes all of it (nothing half-imported)."""
    fresh_file()
    folder = fixtures.make_fixture_take(tmp / "take_midway", T=4, V=60, E=2, K=1, P=36)
    before = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.armatures), len(bpy.data.collections),
              len(bpy.data.actions), len(bpy.data.cameras))
    assert import_failing_midway(folder) == ("Importing the take failed (simulated failure); nothing was imported, "
                                             "details are in the system console.")
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.armatures), len(bpy.data.collections),
            len(bpy.data.actions), len(bpy.data.cameras)) == before


def _still_image(path: Path) -> Path:
    """A tiny PNG Blender can open as a movie clip (the tests have no video encoder in Blender's Python)."""
    image = bpy.data.images.new("still", 8, 8)
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)
    return path


def check_failure_keeps_an_existing_clip(tmp: Path) -> None:
    """A movie clip that was already in the file (the take's source, loaded by the user) survives a failed import."""
    fresh_file()
    still = _still_image(tmp / "source.png")
    users_clip = bpy.data.movieclips.load(str(still))
    folder = fixtures.make_fixture_take(tmp / "take_clip", T=4, V=60, E=2, K=1, P=0, clip=str(still))
    import_failing_midway(folder)
    assert list(bpy.data.movieclips) == [users_clip]
    # A successful import shares it rather than loading the file again.
    result = importer.import_take(bpy.context, folder)
    assert list(bpy.data.movieclips) == [users_clip]
    assert result.camera.data.background_images[0].clip == users_clip


def check_update_keeps_the_users_work(tmp: Path) -> None:
    """Updating a rig replaces only what the import made: the artist's parented objects, material, keyed action
    and NLA layer move to the new rig; the old rig's objects, data, actions and clip are gone."""
    fresh_file()
    still = _still_image(tmp / "shot.png")
    first = importer.import_take(bpy.context, fixtures.make_fixture_take(tmp / "take_a", T=6, V=100, E=3, K=2,
                                                                          P=36, seed=3, clip=str(still)))
    glasses = bpy.data.objects.new("glasses", None)
    first.collection.objects.link(glasses)
    glasses.parent = first.mesh
    skin = bpy.data.materials.new("skin")
    first.mesh.data.materials.append(skin)
    first.armature.keyframe_insert("location", index=0, frame=3)  # the artist keys the rig: their own action
    tweak = first.armature.animation_data.action
    first.mesh.keyframe_insert("location", index=2, frame=2)
    head_ad = first.mesh.animation_data
    layer_action = head_ad.action
    track = head_ad.nla_tracks.new()
    track.name = "artist layer"
    strip = track.strips.new("layer", 2, layer_action)
    if compat.SLOTTED_ACTIONS:
        strip.action_slot = head_ad.action_slot
    head_ad.action = None
    second = fixtures.make_fixture_take(tmp / "take_b", T=8, V=100, E=3, K=2, P=36, seed=4, clip=str(still))
    again = importer.import_take(bpy.context, second, replace=first.root)
    assert again.replaced
    assert glasses.parent == again.mesh and again.collection in glasses.users_collection
    assert list(again.mesh.data.materials) == [skin]
    assert again.armature.animation_data.action == tweak
    layers = [t for t in again.mesh.animation_data.nla_tracks if t.name == "artist layer"]
    assert len(layers) == 1 and layers[0].strips[0].action == layer_action
    assert int(layers[0].strips[0].frame_start) == 2
    assert {o.name for o in bpy.data.objects} == {"shot_root", "shot_camera", "shot_rig", "shot_head", "glasses"}
    assert (len(bpy.data.meshes), len(bpy.data.armatures), len(bpy.data.cameras), len(bpy.data.movieclips)) == \
        (1, 1, 1, 1)
    assert {a.name for a in bpy.data.actions} == {a.name for a in again.actions} | {tweak.name, layer_action.name}
    assert [c.name for c in bpy.data.collections] == ["MicroExp shot"]  # the rig is named after its clip
    assert_matches_take(again, second, [0, 7])


def check_update_refuses_another_head(tmp: Path) -> None:
    fresh_file()
    first = importer.import_take(bpy.context, fixtures.make_fixture_take(tmp / "take_small", T=4, V=60, E=2, K=1))
    counts = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.actions), len(bpy.data.collections))
    other = fixtures.make_fixture_take(tmp / "take_big", T=4, V=80, E=2, K=1)
    try:
        importer.import_take(bpy.context, other, replace=first.root)
    except importer.ImportTakeError as exc:
        assert str(exc) == ("The rig take_small_root has a head of 60 vertices and this take's head has 80 (another "
                            "head model), so it cannot be updated; import it as a new rig.")
    else:
        raise AssertionError("a rig was updated with another head model's take")
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.actions), len(bpy.data.collections)) == counts
    assert first.root.name == "take_small_root"


def check_save_and_reopen(tmp: Path) -> None:
    fresh_file()
    folder = fixtures.make_fixture_take(tmp / "take_saved", T=6, V=120, E=3, K=2, P=36)
    importer.import_take(bpy.context, folder)
    blend = tmp / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    fresh_file()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    mesh = bpy.data.objects["take_saved_head"]
    take = read_take(folder)
    for i in (0, 4):
        bpy.context.scene.frame_set(1 + i)
        got = importer.evaluated_vertices(bpy.context, mesh)
        assert np.abs(got - take["vertices"][i]).max() < TOL
    assert bpy.data.objects["take_saved_root"].microexp_take.take_id == take.header["id"]


def fake_server_scene(tmp: Path, clip_name: str = "clip_face.mp4", python: str = sys.executable) -> Path:
    """A fresh file whose panel points at a clip (its bytes are never decoded) and the fake server."""
    fresh_file()
    set_server(FAKE_DIR, python=python, cache_dir=tmp / "cache")
    clip = tmp / clip_name
    clip.write_bytes(b"not decoded by the fake server")
    bpy.context.scene.microexp.clip = str(clip)
    return clip


def run_operator_job(tmp: Path, mode: str, frames: int = 6, stages: str = "full") -> tuple[set[str], Any]:
    """Run microexp.run_job (blocking execute) against a fake server; returns (result, job state)."""
    fake_server_scene(tmp)
    bpy.context.scene.microexp.stages = stages
    os.environ["MICROEXP_FAKE_MODE"] = mode
    os.environ["MICROEXP_FAKE_FRAMES"] = str(frames)
    try:
        result, _message = call_operator(bpy.ops.microexp.run_job)
    finally:
        os.environ.pop("MICROEXP_FAKE_MODE", None)
    return result, bpy.context.window_manager.microexp_job


def check_operator_job_imports(tmp: Path) -> None:
    result, state = run_operator_job(tmp, "ok", frames=7, stages="solve")
    assert result == {"FINISHED"}, state.last_message
    from blender_microexp.core.jobs import JOB_NAME
    from blender_microexp.core.protocol import JobSpec

    spec = JobSpec.from_dict(json.loads((Path(state.job_dir) / JOB_NAME).read_text(encoding="utf-8")))
    assert spec.stages == "solve"  # the panel's choice reaches the server
    assert spec.checkpoint is None
    assert not state.running and "Imported MicroExp clip_face" in state.last_message
    assert "MicroExp clip_face" in bpy.data.collections
    assert len(bpy.data.objects["clip_face_head"].data.vertices) == 150
    assert bpy.context.scene.frame_end == 7
    take_dir = Path(state.job_dir) / "take"
    assert (Path(state.job_dir) / "job.json").is_file() and (take_dir / "take.json").is_file()
    assert (Path(state.job_dir) / "server.log").is_file()


def check_operator_job_crash(tmp: Path) -> None:
    result, state = run_operator_job(tmp, "crash")
    assert result == {"CANCELLED"}
    assert "exit code 3" in state.last_message and "server.log" in state.last_message
    assert not state.running and not [c for c in bpy.data.collections if c.name.startswith("MicroExp")]


def check_operator_job_garbage(tmp: Path) -> None:
    result, state = run_operator_job(tmp, "garbage")
    assert result == {"CANCELLED"} and "not a protocol event" in state.last_message
    assert not [c for c in bpy.data.collections if c.name.startswith("MicroExp")]


def check_operator_setup_error(tmp: Path) -> None:
    fresh_file()
    set_server(FAKE_DIR, cache_dir=tmp / "cache")
    bpy.context.scene.microexp.clip = str(tmp / "missing.mp4")
    result, message = call_operator(bpy.ops.microexp.run_job)
    assert result == {"CANCELLED"} and message.startswith("The clip") and "does not exist" in message
    assert not bpy.context.window_manager.microexp_job.running


def check_operator_server_that_cannot_start(tmp: Path) -> None:
    """An interpreter that exists but cannot run: one sentence, and no job folder left behind."""
    python = tmp / "python"
    python.write_text("not a program\n")  # a file, but not executable
    fake_server_scene(tmp, python=str(python))
    result, message = call_operator(bpy.ops.microexp.run_job)
    assert result == {"CANCELLED"} and message.startswith(f"Cannot start the server with {python}"), message
    assert not list((tmp / "cache" / "jobs").iterdir())
    assert not bpy.context.window_manager.microexp_job.running


def check_operator_check_server(tmp: Path) -> None:
    """Check Server writes the server's versions, or the problem, into the preferences' status line."""
    fresh_file()
    set_server(FAKE_DIR, cache_dir=tmp / "cache")
    prefs = bpy.context.preferences.addons[ADDON].preferences
    result, message = call_operator(bpy.ops.microexp.check_server)
    assert result == {"FINISHED"} and prefs.server_status.startswith("Server fake-0"), prefs.server_status
    # In the UI the check runs on a thread and a timer writes the answer (background mode runs it in place).
    from blender_microexp.operators.check_server import start_check

    prefs.server_status = ""
    poll = start_check(bpy.context, sys.executable, str(FAKE_DIR))
    assert prefs.server_status == "Checking the server…"
    deadline = time.monotonic() + 30
    while poll() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert prefs.server_status.startswith("Server fake-0"), prefs.server_status
    set_server(FAKE_DIR, python=str(tmp / "no-python"), cache_dir=tmp / "cache")
    result, message = call_operator(bpy.ops.microexp.check_server)
    assert result == {"CANCELLED"} and message == prefs.server_status
    assert message == (f"The server interpreter {tmp / 'no-python'} does not exist; run ./microexp setup or choose "
                       "another Python.")


def check_operator_checkpoint(tmp: Path) -> None:
    """The panel's checkpoint reaches the server with the Full Model; a missing one is refused in one sentence
    before any server starts; with another stage the field is not used."""
    from blender_microexp.core.jobs import JOB_NAME
    from blender_microexp.core.protocol import JobSpec

    fresh_file()
    missing = tmp / "missing.pt"
    bpy.context.scene.microexp.checkpoint = str(missing)
    bpy.context.scene.microexp.clip = str(tmp / "clip_face.mp4")
    (tmp / "clip_face.mp4").write_bytes(b"not decoded by the fake server")
    set_server(FAKE_DIR, cache_dir=tmp / "cache_ckpt")
    result, message = call_operator(bpy.ops.microexp.run_job)
    assert result == {"CANCELLED"}
    assert message == (f"The checkpoint {missing} does not exist; choose a file written by 'microexp train', "
                       "or clear the field.")
    assert not bpy.context.window_manager.microexp_job.running and not (tmp / "cache_ckpt").exists()

    ckpt = tmp / "refine.pt"
    ckpt.write_bytes(b"read by the server, not by the add-on")
    for stages, want in (("full", str(ckpt)), ("solve", None)):
        scene = bpy.context.scene.microexp
        scene.stages, scene.checkpoint = stages, str(ckpt)
        os.environ["MICROEXP_FAKE_MODE"] = "ok"
        try:
            result, _message = call_operator(bpy.ops.microexp.run_job)
        finally:
            os.environ.pop("MICROEXP_FAKE_MODE", None)
        state = bpy.context.window_manager.microexp_job
        assert result == {"FINISHED"}, state.last_message
        spec = JobSpec.from_dict(json.loads((Path(state.job_dir) / JOB_NAME).read_text(encoding="utf-8")))
        assert spec.checkpoint == want


def check_controller_cancel(tmp: Path) -> None:
    """The modal operator's code path: start, pump on a timer, cancel from the panel's button."""
    from blender_microexp.blender.jobs import JobController

    fake_server_scene(tmp, "clip_slow.mp4")
    env = {**os.environ, "MICROEXP_FAKE_MODE": "slow"}
    controller = JobController.start(bpy.context, env=env)
    state = bpy.context.window_manager.microexp_job
    assert state.running and not bpy.ops.microexp.run_job.poll()  # no second job while one runs
    child_pid_file = Path(state.job_dir) / "child.pid"
    deadline = time.monotonic() + 20
    while not child_pid_file.exists() and time.monotonic() < deadline:
        assert controller.pump(bpy.context) is None
        time.sleep(0.1)
    for _ in range(5):
        assert controller.pump(bpy.context) is None
        time.sleep(0.1)
    assert state.progress > 0.0 and state.stage == "preprocess" and "left" in state.text
    assert bpy.ops.microexp.cancel_job() == {"FINISHED"}
    t0 = time.monotonic()
    outcome = None
    while outcome is None and time.monotonic() - t0 < 10:
        outcome = controller.pump(bpy.context)
        time.sleep(0.1)
    assert outcome is not None and outcome.status == "CANCELLED"
    assert time.monotonic() - t0 < 3.5
    time.sleep(0.2)
    for pid in (controller.job.pid, int(child_pid_file.read_text())):
        assert not _alive(pid), f"process {pid} survived the cancel"
    assert not state.running and not [c for c in bpy.data.collections if c.name.startswith("MicroExp")]


def _run_controller(tmp: Path, before_done: Callable[[], None] | None = None) -> Any:
    """Start a job on the fake server ('ok': writes a take at once) and pump it to its end; `before_done` runs
    once the server has exited, before its events (done included) are read."""
    from blender_microexp.blender.jobs import JobController

    controller = JobController.start(bpy.context, env={**os.environ, "MICROEXP_FAKE_MODE": "ok"})
    deadline = time.monotonic() + 30
    while controller.job.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    if before_done is not None:
        before_done()
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        outcome = controller.pump(bpy.context)
        time.sleep(0.05)
    assert outcome is not None, "the job did not end"
    return outcome


def check_job_updates_the_chosen_rig_or_a_new_one(tmp: Path) -> None:
    """Update Rig follows the chosen rig by identity: the panel then points at the new rig; a rig deleted while the
    job ran makes the take a new rig, with a warning; a cancel that comes after the take was written imports nothing."""
    fake_server_scene(tmp)
    scene = bpy.context.scene.microexp
    assert _run_controller(tmp).status == "FINISHED"
    scene.target = "UPDATE"
    scene.target_root = bpy.data.objects["clip_face_root"]
    outcome = _run_controller(tmp)
    assert outcome.status == "FINISHED" and outcome.message.startswith("Updated MicroExp clip_face"), outcome.message
    assert scene.target_root == outcome.result.root and len(bpy.data.armatures) == 1

    def delete_target() -> None:
        importer._remove_rig(scene.target_root)

    outcome = _run_controller(tmp, delete_target)
    assert outcome.status == "FINISHED" and outcome.message.startswith("Imported MicroExp clip_face"), outcome.message
    assert ("The rig clip_face_root was deleted during the reconstruction, so the take was imported as a new "
            "rig.") in outcome.warnings
    assert "This is a fake server." in outcome.warnings  # the server's warnings reach the artist too
    assert scene.target_root == outcome.result.root  # the panel points at the rig that now holds the take
    assert len(bpy.data.armatures) == 1 and not bpy.context.window_manager.microexp_job.running

    # A duplicate of the rig (Shift+D copies its take id) is updated when it is the one chosen, not the original.
    duplicate = scene.target_root.copy()
    bpy.context.scene.collection.objects.link(duplicate)
    duplicate.name = "clip_face_root.copy"
    original = scene.target_root
    scene.target_root = duplicate
    outcome = _run_controller(tmp)
    assert outcome.status == "FINISHED" and "clip_face_root.copy" not in bpy.data.objects
    assert original.name == "clip_face_root" and original.children  # the original rig is untouched
    assert scene.target_root == outcome.result.root and outcome.result.root != original
    assert len(bpy.data.armatures) == 2  # the original's and the one that replaced the duplicate

    scene.target = "NEW"
    counts = (len(bpy.data.objects), len(bpy.data.actions), len(bpy.data.collections))

    def press_cancel() -> None:
        bpy.context.window_manager.microexp_job.cancel_requested = True

    outcome = _run_controller(tmp, press_cancel)
    assert outcome.status == "CANCELLED" and outcome.message == ("The reconstruction was cancelled; nothing was "
                                                                 "imported.")
    assert (len(bpy.data.objects), len(bpy.data.actions), len(bpy.data.collections)) == counts
    assert not bpy.context.window_manager.microexp_job.running


def check_job_survives_an_unexpected_error(tmp: Path) -> None:
    """A bug while pumping the job ends it in one sentence: the server is stopped, the panel is free again."""
    from blender_microexp.blender import jobs as blender_jobs

    fake_server_scene(tmp)
    original = blender_jobs.JobController.pump

    def broken(self: Any, context: Any) -> Any:
        raise RuntimeError("simulated bug")

    blender_jobs.JobController.pump = broken  # type: ignore[method-assign]
    os.environ["MICROEXP_FAKE_MODE"] = "slow"
    try:
        result, message = call_operator(bpy.ops.microexp.run_job)
    finally:
        blender_jobs.JobController.pump = original  # type: ignore[method-assign]
        os.environ.pop("MICROEXP_FAKE_MODE", None)
    state = bpy.context.window_manager.microexp_job
    assert result == {"CANCELLED"}
    assert message == ("The job stopped on an unexpected error; nothing was imported (details in the system "
                       "console).")
    assert not state.running and state.last_message == message
    time.sleep(0.2)
    child = Path(state.job_dir) / "child.pid"
    if child.exists():
        assert not _alive(int(child.read_text())), "the server's child survived"


def check_import_returns_to_the_artists_mode(tmp: Path) -> None:
    """Importing while the artist edits a mesh leaves them in Edit Mode on it afterwards."""
    fresh_file()
    mesh = bpy.data.meshes.new("prop")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    prop = bpy.data.objects.new("prop", mesh)
    bpy.context.scene.collection.objects.link(prop)
    bpy.context.view_layer.objects.active = prop
    bpy.ops.object.mode_set(mode="EDIT")
    folder = fixtures.make_fixture_take(tmp / "take_mode", T=4, V=60, E=2, K=1)
    result = importer.import_take(bpy.context, folder)
    assert bpy.context.mode == "EDIT_MESH" and bpy.context.view_layer.objects.active == prop
    bpy.ops.object.mode_set(mode="OBJECT")
    assert_matches_take(result, folder, [0, 3])


def check_load_pre_stops_jobs(tmp: Path) -> None:
    from blender_microexp.blender.jobs import JobController

    fake_server_scene(tmp, "clip_load.mp4")
    controller = JobController.start(bpy.context, env={**os.environ, "MICROEXP_FAKE_MODE": "slow"})
    state = bpy.context.window_manager.microexp_job
    child_pid_file = Path(state.job_dir) / "child.pid"
    deadline = time.monotonic() + 20
    while not child_pid_file.exists() and time.monotonic() < deadline:
        assert controller.pump(bpy.context) is None
        time.sleep(0.1)
    assert controller.job.alive and child_pid_file.exists(), "the slow fake server did not start"
    fresh_file()  # loading another file runs load_pre
    assert not controller.job.alive
    time.sleep(0.2)
    for pid in (controller.job.pid, int(child_pid_file.read_text())):
        assert not _alive(pid), f"process {pid} survived loading another file"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


ALL_CHECKS = [
    check_register_twice,
    check_import_structure_and_exactness,
    check_world_transform,
    check_reimport_updates,
    check_damaged_take,
    check_failure_midway_leaves_nothing,
    check_failure_keeps_an_existing_clip,
    check_update_keeps_the_users_work,
    check_update_refuses_another_head,
    check_save_and_reopen,
    check_operator_job_imports,
    check_operator_job_crash,
    check_operator_job_garbage,
    check_operator_setup_error,
    check_operator_server_that_cannot_start,
    check_operator_check_server,
    check_operator_checkpoint,
    check_controller_cancel,
    check_job_updates_the_chosen_rig_or_a_new_one,
    check_job_survives_an_unexpected_error,
    check_import_returns_to_the_artists_mode,
    check_load_pre_stops_jobs,
]
SHARED_CHECKS = [check_flame_topology]
