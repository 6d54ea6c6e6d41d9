"""Builds a take's animated rig in Blender: the one import path for jobs, the operator and File > Import.

Layout (docs/blender.md): collection "MicroExp <clip>" holding "<name>_root" (an empty turning y-up
head coordinates into Blender's z-up), its camera child, "<name>_rig" (armature: joints, keyed root
transform and bone rotations) and "<name>_head" (mesh: shape keys before an Armature modifier), so
the evaluated mesh in object space equals the take's ``vertices`` (core.rig is the reference).

Everything is built into new datablocks and swapped in at the end; on failure all of it is removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from ..core import rig
from ..core.take import Take, TakeError, read_take
from . import compat

SLIDER_LIMIT = 10.0  # Blender's hard limit on a shape key's slider range
COLLECTION_PREFIX = "MicroExp "


class ImportTakeError(Exception):
    """A take that cannot be imported; the message is one sentence for the user."""


@dataclass
class ImportResult:
    collection: Any
    root: Any
    armature: Any
    mesh: Any
    camera: Any
    actions: list[Any]
    frame_start: int
    frame_end: int
    replaced: bool
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Created:
    """New datablocks, in creation order, so a failure can remove every one of them."""

    items: list[tuple[Any, Any]] = field(default_factory=list)

    def add(self, collection: Any, block: Any) -> Any:
        self.items.append((collection, block))
        return block

    def remove_all(self) -> None:
        for collection, block in reversed(self.items):
            with contextlib.suppress(ReferenceError, RuntimeError):  # freed together with its owner
                collection.remove(block)
        self.items.clear()


def take_name(take: Take) -> str:
    """The clip's stem (or the take folder's name), safe for Blender names."""
    clip = source_clip(take)
    stem = Path(clip).stem if clip else (take.path.name if take.path else "take")
    stem = re.sub(r"[^\w\-. ]+", "_", stem).strip() or "take"
    return stem[:40]


def source_clip(take: Take) -> str:
    """The source clip's path as the header names it ('' when none)."""
    source = take.header.get("source")
    if isinstance(source, dict):
        return str(source.get("path") or source.get("clip") or "")
    if isinstance(source, str):
        return source
    return str(take.header.get("clip") or "")


def take_identity(take: Take) -> str:
    """What makes two imports the same take: the header id, else the take folder."""
    ident = take.header.get("id") or take.header.get("take_id")
    if ident:
        return str(ident)
    return str(take.path.resolve()) if take.path else ""


def find_imported_root(take_id: str, take_path: str) -> Any:
    """The root empty of an earlier import of this take, or None."""
    for obj in bpy.data.objects:
        prov = getattr(obj, "microexp_take", None)
        if prov is None or not prov.is_take_root:
            continue
        if (take_id and prov.take_id == take_id) or (take_path and prov.take_path == take_path):
            return obj
    return None


def _quoted(name: str) -> str:
    return '"' + bpy.utils.escape_identifier(name) + '"'


def _build_mesh(name: str, template: np.ndarray, faces: np.ndarray) -> Any:
    mesh = bpy.data.meshes.new(name)
    v_count, f_count = len(template), len(faces)
    mesh.vertices.add(v_count)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(template, dtype=np.float32).ravel())
    mesh.loops.add(3 * f_count)
    mesh.loops.foreach_set("vertex_index", np.ascontiguousarray(faces, dtype=np.int32).ravel())
    mesh.polygons.add(f_count)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * f_count, 3, dtype=np.int32))
    mesh.update()
    if hasattr(mesh, "shade_smooth"):
        mesh.shade_smooth()
    return mesh


def _add_vertex_groups(obj: Any, names: list[str], weights: np.ndarray) -> None:
    """One group per joint from the non-zero skin weights (V, J); equal weights share one call."""
    for j, name in enumerate(names):
        group = obj.vertex_groups.new(name=name)
        column = weights[:, j]
        nonzero = np.flatnonzero(column)
        values, inverse = np.unique(column[nonzero], return_inverse=True)
        for k, value in enumerate(values):
            group.add(nonzero[inverse == k].tolist(), float(value), "REPLACE")


def _key_scale(values: np.ndarray, normalise: bool) -> float:
    """The factor moved from a key's weights into its data: weights/s stay inside the slider range."""
    peak = float(np.abs(values).max()) if values.size else 0.0
    if peak == 0.0:
        return 1.0
    if normalise:
        return peak
    return peak / SLIDER_LIMIT if peak > SLIDER_LIMIT else 1.0


def _add_shape_key(obj: Any, name: str, template: np.ndarray, direction: np.ndarray, values: np.ndarray,
                   normalise: bool) -> tuple[Any, np.ndarray, float]:
    """A relative key template + s·direction whose per-frame values are values/s; returns (key, values/s, s)."""
    scale = _key_scale(values, normalise)
    block = obj.shape_key_add(name=name, from_mix=False)
    data = (template.astype(np.float64) + scale * direction.astype(np.float64)).astype(np.float32)
    block.data.foreach_set("co", data.ravel())
    scaled = values.astype(np.float64) / scale
    lo = max(-SLIDER_LIMIT, math.floor(min(0.0, float(scaled.min(initial=0.0))) - 1e-6))
    hi = min(SLIDER_LIMIT, math.ceil(max(1.0, float(scaled.max(initial=0.0))) + 1e-6))
    block.slider_max = hi
    block.slider_min = lo
    return block, scaled, scale


def _set_scene(scene: Any, take: Take, frame_start: int) -> None:
    fps = float(take.header.get("fps") or 30.0)
    whole = max(1, int(round(fps)))
    scene.render.fps = whole
    scene.render.fps_base = whole / fps
    scene.frame_start = frame_start
    scene.frame_end = frame_start + take.frame_count - 1
    width, height = (int(x) for x in take["image_size"])
    if width > 0 and height > 0:
        scene.render.resolution_x = width
        scene.render.resolution_y = height
        scene.render.resolution_percentage = 100


def _setup_camera(cam_data: Any, take: Take) -> None:
    fx, _fy, cx, cy = (float(x) for x in take["camera"])
    width, height = (int(x) for x in take["image_size"])
    cam_data.sensor_fit = "HORIZONTAL"
    if width > 0 and fx > 0:
        cam_data.lens = fx * cam_data.sensor_width / width
        # Principal point off-centre: Blender's shift is in units of the fitted (horizontal) size.
        cam_data.shift_x = (cx - width / 2.0) / width
        cam_data.shift_y = (height / 2.0 - cy) / width
    cam_data.clip_start = 0.01
    cam_data.clip_end = 100.0


def _attach_clip(cam_data: Any, clip_path: str, frame_offset: int, created: _Created) -> str | None:
    """The source clip as the camera's background; returns a warning when it cannot be loaded."""
    if not clip_path:
        return None
    if not os.path.isfile(clip_path):
        return f"The source clip {clip_path} was not found, so the camera has no background."
    count = len(bpy.data.movieclips)
    try:
        clip = bpy.data.movieclips.load(clip_path, check_existing=True)
    except RuntimeError:
        return f"Blender could not open the source clip {clip_path}, so the camera has no background."
    if len(bpy.data.movieclips) > count:  # new; an existing clip (the user's, or an earlier import's) is shared
        created.add(bpy.data.movieclips, clip)
    clip.frame_start = frame_offset
    background = cam_data.background_images.new()
    background.source = "MOVIE_CLIP"
    background.clip = clip
    cam_data.show_background_images = True
    return None


def _build_bones(context: Any, arm_obj: Any, take: Take) -> None:
    names = take.joint_names
    joints = take["joints_rest"].astype(np.float64)
    parents = take["joint_parents"]
    extent = float(np.ptp(take["template"], axis=0).max()) if take["template"].size else 0.1
    length = max(1e-3, 0.1 * extent)
    view_layer = context.view_layer
    previous_active = view_layer.objects.active
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        bones = arm_obj.data.edit_bones
        made = []
        for j, name in enumerate(names):
            bone = bones.new(name)
            bone.head = joints[j]
            # +Y with roll 0 makes every bone's rest rotation the identity, so a pose bone's
            # rotation is exactly the take's parent-relative joint rotation.
            bone.tail = joints[j] + np.array([0.0, length, 0.0])
            bone.roll = 0.0
            made.append(bone)
        for j, bone in enumerate(made):
            if int(parents[j]) >= 0:
                bone.parent = made[int(parents[j])]
                bone.use_connect = False
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous_active
    for pbone in arm_obj.pose.bones:
        pbone.rotation_mode = "QUATERNION"


def _animate(anim: compat.TakeAnimation, arm_obj: Any, key: Any, take: Take, frames: np.ndarray,
             shape_values: list[tuple[str, np.ndarray]]) -> None:
    obj_chans = anim.channels_for(arm_obj, "OBJECT", "")
    pose = take["pose"]
    translation = take["translation"].astype(np.float64)
    for i in range(3):
        compat.fill_fcurve(compat.new_fcurve(obj_chans, "location", i, "Object Transforms"), frames, translation[:, i])
    root_q = rig.axis_angle_to_quaternion(pose[:, 0])
    for i in range(4):
        fc = compat.new_fcurve(obj_chans, "rotation_quaternion", i, "Object Transforms")
        compat.fill_fcurve(fc, frames, root_q[:, i])
    for j, name in enumerate(take.joint_names):
        if j == 0:
            continue  # the root bone stays at rest: the global rotation is the object's
        quat = rig.axis_angle_to_quaternion(pose[:, j])
        path = f"pose.bones[{_quoted(name)}].rotation_quaternion"
        for i in range(4):
            compat.fill_fcurve(compat.new_fcurve(obj_chans, path, i, name), frames, quat[:, i])
    key_chans = anim.channels_for(key, "KEY", compat.SHAPES_SUFFIX)
    for name, values in shape_values:
        fc = compat.new_fcurve(key_chans, f"key_blocks[{_quoted(name)}].value", 0, None)
        compat.fill_fcurve(fc, frames, values)


PART = "microexp_part"  # custom property naming an import's own objects and actions (root, camera, rig, head, take)


def _objects_under(root: Any) -> list[Any]:
    out = [root]
    for child in root.children:
        out.extend(_objects_under(child))
    return out


def rig_parts(root: Any) -> dict[str, Any]:
    """An import's own objects by role ('root', 'camera', 'rig', 'head'); not the user's objects parented to them.

    Imports tag their objects; for an untagged one (made before the tags) the roles follow the layout."""
    parts = {"root": root}
    for obj in _objects_under(root)[1:]:
        role = obj.get(PART)
        if role in ("camera", "rig", "head") and role not in parts:
            parts[role] = obj
    if len(parts) == 1:
        for child in root.children:
            if child.type == "CAMERA" and "camera" not in parts:
                parts["camera"] = child
            elif child.type == "ARMATURE" and "rig" not in parts:
                parts["rig"] = child
        if "rig" in parts:
            heads = [c for c in parts["rig"].children if c.type == "MESH"
                     and any(m.type == "ARMATURE" and m.object == parts["rig"] for m in c.modifiers)]
            if heads:
                parts["head"] = heads[0]
    return parts


def _animated(obj: Any) -> list[Any]:
    """The datablocks of an import's object that carry its animation: the object, and a mesh's shape keys."""
    owners = [obj]
    keys = getattr(obj.data, "shape_keys", None)
    if keys is not None:
        owners.append(keys)
    return owners


def _is_take_action(action: Any, take_names: set[str]) -> bool:
    role = action.get(PART)
    return role == "take" if role is not None else action.name in take_names


def _move_user_animation(old: Any, new: Any, take_names: set[str]) -> None:
    """The user's own animation on an import's datablock (an active action they keyed, NLA tracks holding other
    actions) moves to the same datablock of the new import."""
    ad = old.animation_data
    if ad is None:
        return
    target = None

    def target_data() -> Any:
        nonlocal target
        target = target or new.animation_data or new.animation_data_create()
        return target

    if ad.action is not None and not _is_take_action(ad.action, take_names):
        data = target_data()
        data.action = ad.action
        if compat.SLOTTED_ACTIONS and ad.action_slot is not None:
            data.action_slot = ad.action_slot
    for track in ad.nla_tracks:
        strips = [st for st in track.strips if st.action is not None and not _is_take_action(st.action, take_names)]
        if not strips:
            continue
        moved = target_data().nla_tracks.new()
        moved.name, moved.mute, moved.lock = track.name, track.mute, track.lock
        for st in strips:
            copy = moved.strips.new(st.name, int(st.frame_start), st.action)
            if compat.SLOTTED_ACTIONS and st.action_slot is not None:
                copy.action_slot = st.action_slot
            for attr in ("action_frame_start", "action_frame_end", "scale", "repeat", "blend_type",
                         "extrapolation", "blend_in", "blend_out", "use_reverse", "mute", "use_animated_influence",
                         "influence"):
                with contextlib.suppress(AttributeError, TypeError, RuntimeError):
                    setattr(copy, attr, getattr(st, attr))


def _remove_rig(root: Any, new: ImportResult | None = None) -> None:
    """Delete an earlier import: its own objects, their data, its actions and (if then empty) its collection.

    The user's objects parented to it, its collection's other objects and the user's animation on its parts move
    to the same parts of `new` (the import replacing it); without one, they are kept in place, unparented."""
    parts = rig_parts(root)
    own = set(parts.values())
    take_names = {root.name.removesuffix("_root"), root.name.removesuffix("_root") + compat.SHAPES_SUFFIX}
    new_parts = {"root": new.root, "camera": new.camera, "rig": new.armature, "head": new.mesh} if new else {}
    for role, obj in parts.items():
        if role in new_parts:
            for old_owner, new_owner in zip(_animated(obj), _animated(new_parts[role]), strict=False):
                _move_user_animation(old_owner, new_owner, take_names)
    if new is not None and "head" in parts and not new.mesh.data.materials:
        for material in parts["head"].data.materials:  # the artist's look stays on the updated head
            new.mesh.data.materials.append(material)
    for obj in _objects_under(root):
        if obj in own or obj.parent not in own:
            continue
        role = next(r for r, part in parts.items() if part == obj.parent)
        if role in new_parts:
            obj.parent = new_parts[role]  # same role, same motion: parent type, bone and inverse still hold
        else:
            world = obj.matrix_world.copy()
            obj.parent = None
            obj.matrix_world = world
    collections = {c for obj in own for c in obj.users_collection}
    if new is not None:
        for coll in collections:
            if coll.name.startswith(COLLECTION_PREFIX):
                for obj in list(coll.objects):
                    if obj not in own:
                        if new.collection not in obj.users_collection:
                            new.collection.objects.link(obj)
                        coll.objects.unlink(obj)
    actions = set()
    datas = []
    clips: set[Any] = set()
    for obj in own:
        for owner in _animated(obj):
            ad = owner.animation_data
            if ad is None:
                continue
            if ad.action is not None and _is_take_action(ad.action, take_names):
                actions.add(ad.action)
            for track in ad.nla_tracks:
                actions.update(st.action for st in track.strips
                               if st.action is not None and _is_take_action(st.action, take_names))
        if obj.data is not None:
            datas.append(obj.data)
            if obj.type == "CAMERA":
                clips.update(bg.clip for bg in obj.data.background_images if bg.clip is not None)
    for obj in own:
        bpy.data.objects.remove(obj)
    owners = ((bpy.types.Mesh, bpy.data.meshes), (bpy.types.Armature, bpy.data.armatures),
              (bpy.types.Camera, bpy.data.cameras))
    for data in datas:
        if data.users == 0:
            for kind, owner in owners:
                if isinstance(data, kind):
                    owner.remove(data)
                    break
    for action in actions:
        if action.users == 0:
            bpy.data.actions.remove(action)
    for clip in clips:
        if clip.users == 0:  # the new import shares it when it shows the same file
            bpy.data.movieclips.remove(clip)
    for coll in collections:
        if coll.name.startswith(COLLECTION_PREFIX) and not coll.objects and not coll.children:
            bpy.data.collections.remove(coll)


def import_take(context: Any, source: str | os.PathLike[str] | Take, *, frame_start: int = 1,
                push_to_nla: bool = True, replace: Any = None,
                progress: Callable[[float], None] | None = None) -> ImportResult:
    """Import a take (folder, take.json, take.npz or a read Take) as an animated rig.

    Re-importing the same take (same header id or folder) — or passing ``replace`` (an earlier
    import's root) — updates that rig in place of duplicating it. Raises ImportTakeError.
    """
    try:
        take = source if isinstance(source, Take) else read_take(source)
    except TakeError as exc:
        raise ImportTakeError(str(exc)) from None
    mode = _MODES.get(context.mode, "EDIT" if context.mode.startswith("EDIT") else None)
    active = context.active_object
    if context.mode != "OBJECT" and active is not None:
        bpy.ops.object.mode_set(mode="OBJECT")  # building bones needs Object Mode to enter the armature's Edit Mode
    try:
        return _import(context, take, frame_start, push_to_nla, replace, progress)
    finally:
        if mode is not None and active is not None:
            _back_to_mode(context, active, mode)


_MODES = {"SCULPT": "SCULPT", "POSE": "POSE", "PAINT_WEIGHT": "WEIGHT_PAINT", "PAINT_VERTEX": "VERTEX_PAINT",
          "PAINT_TEXTURE": "TEXTURE_PAINT"}  # context.mode -> object.mode_set's name (EDIT_* -> EDIT)


def _back_to_mode(context: Any, obj: Any, mode: str) -> None:
    """The artist's object and mode from before the import, when the object still exists (best effort)."""
    try:
        context.view_layer.objects.active = obj
        bpy.ops.object.mode_set(mode=mode)
    except (ReferenceError, RuntimeError, TypeError):
        pass


def _import(context: Any, take: Take, frame_start: int, push_to_nla: bool, replace: Any,
            progress: Callable[[float], None] | None) -> ImportResult:
    name = take_name(take)
    take_id = take_identity(take)
    take_path = str(take.path.resolve()) if take.path else ""
    old_root = replace if replace is not None else find_imported_root(take_id, take_path)
    if old_root is not None:
        old_head = rig_parts(old_root).get("head")
        n_old, n_new = (len(old_head.data.vertices) if old_head is not None else 0), len(take["template"])
        if old_head is not None and n_old != n_new:
            raise ImportTakeError(f"The rig {old_root.name} has a head of {n_old} vertices and this take's head has "
                                  f"{n_new} (another head model), so it cannot be updated; import it as a new rig.")
    created = _Created()
    anim = compat.TakeAnimation(name)
    try:
        result = _build(context, take, name, frame_start, push_to_nla, created, anim, progress)
    except Exception as exc:
        for action in anim.created:
            created.add(bpy.data.actions, action)
        created.remove_all()
        if isinstance(exc, ImportTakeError):
            raise
        traceback.print_exc()  # a bug or Blender's refusal, not the take's fault: the console keeps the details
        detail = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0].rstrip(".")
        raise ImportTakeError(f"Importing the take failed ({detail}); nothing was imported, details are in the "
                              f"system console.") from exc
    result.actions = list(anim.created)
    for action in result.actions:
        action[PART] = "take"
    if old_root is not None:
        _remove_rig(old_root, result)
        result.replaced = True
    _finalise_names(result, name)
    prov = result.root.microexp_take
    prov.take_id = take_id
    prov.take_path = take_path
    return result


def _finalise_names(result: ImportResult, name: str) -> None:
    """Canonical names, now that an earlier import (which held them) is gone."""
    result.collection.name = COLLECTION_PREFIX + name
    for obj, suffix in ((result.root, "_root"), (result.armature, "_rig"), (result.mesh, "_head"),
                        (result.camera, "_camera")):
        obj.name = name + suffix
        if obj.data is not None:
            obj.data.name = name + suffix
    if len(result.actions) == 1:
        result.actions[0].name = name
    elif len(result.actions) == 2:
        result.actions[0].name = name
        result.actions[1].name = name + compat.SHAPES_SUFFIX


def _build(context: Any, take: Take, name: str, frame_start: int, push_to_nla: bool, created: _Created,
           anim: compat.TakeAnimation, progress: Callable[[float], None] | None) -> ImportResult:
    scene = context.scene
    warnings: list[str] = []
    template = take["template"]
    frames = (frame_start + np.arange(take.frame_count)).astype(np.float32)

    collection = created.add(bpy.data.collections, bpy.data.collections.new(COLLECTION_PREFIX + name))
    scene.collection.children.link(collection)

    root = created.add(bpy.data.objects, bpy.data.objects.new(name + "_root", None))
    root[PART] = "root"
    root.empty_display_type = "PLAIN_AXES"
    root.empty_display_size = 0.05
    # Head coordinates are y-up, Blender is z-up: +90° about X maps y to z (and z to -y).
    root.rotation_euler = (math.pi / 2.0, 0.0, 0.0)
    collection.objects.link(root)

    cam_data = created.add(bpy.data.cameras, bpy.data.cameras.new(name + "_camera"))
    _setup_camera(cam_data, take)
    camera = created.add(bpy.data.objects, bpy.data.objects.new(name + "_camera", cam_data))
    camera[PART] = "camera"
    camera.parent = root  # our camera convention (looks down -Z, y up) is Blender's: identity
    collection.objects.link(camera)
    first_source = int(take["frame_numbers"][0]) if take.frame_count else 0
    warning = _attach_clip(cam_data, source_clip(take), frame_start - first_source, created)
    if warning:
        warnings.append(warning)

    arm_data = created.add(bpy.data.armatures, bpy.data.armatures.new(name + "_rig"))
    arm_data.display_type = "STICK"
    arm_obj = created.add(bpy.data.objects, bpy.data.objects.new(name + "_rig", arm_data))
    arm_obj[PART] = "rig"
    arm_obj.parent = root
    arm_obj.rotation_mode = "QUATERNION"
    collection.objects.link(arm_obj)
    _build_bones(context, arm_obj, take)
    if progress:
        progress(0.1)

    mesh = created.add(bpy.data.meshes, _build_mesh(name + "_head", template, take["faces"]))
    mesh_obj = created.add(bpy.data.objects, bpy.data.objects.new(name + "_head", mesh))
    mesh_obj[PART] = "head"
    mesh_obj.parent = arm_obj
    collection.objects.link(mesh_obj)
    _add_vertex_groups(mesh_obj, take.joint_names, take["skin_weights"])
    modifier = mesh_obj.modifiers.new("Armature", "ARMATURE")
    modifier.object = arm_obj
    modifier.use_vertex_groups = True
    modifier.use_bone_envelopes = False
    modifier.use_deform_preserve_volume = False

    mesh_obj.shape_key_add(name="Basis", from_mix=False)
    shape_values: list[tuple[str, np.ndarray]] = []
    scales: dict[str, float] = {}
    expr_basis = take["expression_basis"]
    expression = take["expression"]
    for e, key_name in enumerate(take.expression_names):
        block, values, scale = _add_shape_key(mesh_obj, key_name, template, expr_basis[:, :, e], expression[:, e],
                                              normalise=False)
        shape_values.append((block.name, values))
        scales[block.name] = scale
    if take["pose_corrective_basis"].shape[2] > 0:
        feats = rig.pose_features(take["pose"])  # (T, P)
        pc_basis = take["pose_corrective_basis"]
        for p, key_name in enumerate(rig.pose_corrective_names(take.joint_names)):
            block, values, scale = _add_shape_key(mesh_obj, key_name, template, pc_basis[:, :, p], feats[:, p],
                                                  normalise=False)
            shape_values.append((block.name, values))
            scales[block.name] = scale
    detail_basis = take["detail_basis"]
    detail_weights = take["detail_weights"]
    for k, key_name in enumerate(rig.detail_key_names(detail_basis.shape[0])):
        block, values, scale = _add_shape_key(mesh_obj, key_name, template, detail_basis[k], detail_weights[:, k],
                                              normalise=True)
        shape_values.append((block.name, values))
        scales[block.name] = scale
    key = mesh.shape_keys
    key.use_relative = True
    if progress:
        progress(0.4)

    _animate(anim, arm_obj, key, take, frames, shape_values)
    anim.assign(push_to_nla, frame_start)
    if progress:
        progress(0.9)

    _set_scene(scene, take, frame_start)
    scene.camera = camera
    prov = root.microexp_take
    prov.is_take_root = True
    prov.clip = source_clip(take)
    prov.model_id = str(take.header.get("head_model", {}).get("id", ""))
    prov.frame_start = frame_start
    prov.fps = float(take.header.get("fps") or 0.0)
    prov.key_scales = json.dumps(scales, separators=(",", ":"))
    root["microexp_frame_numbers"] = [int(x) for x in take["frame_numbers"]]
    return ImportResult(collection=collection, root=root, armature=arm_obj, mesh=mesh_obj, camera=camera,
                        actions=[], frame_start=frame_start, frame_end=frame_start + take.frame_count - 1,
                        replaced=False, warnings=warnings)


def evaluated_vertices(context: Any, obj: Any) -> np.ndarray:
    """The depsgraph-evaluated mesh's vertices in object space at the current frame: (V, 3)."""
    depsgraph = context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        out = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", out)
    finally:
        evaluated.to_mesh_clear()
    return out.reshape(-1, 3)
