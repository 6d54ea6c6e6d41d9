"""The add-on's properties: live job state (WindowManager, never saved), settings (Scene), provenance (Object)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty
from bpy.types import PropertyGroup


class MICROEXP_PG_job(PropertyGroup):
    """The running job as the panel shows it; lives on the WindowManager so it is never saved."""

    running: BoolProperty(default=False)  # type: ignore[valid-type]
    cancel_requested: BoolProperty(default=False)  # type: ignore[valid-type]
    stage: StringProperty(default="")  # type: ignore[valid-type]
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")  # type: ignore[valid-type]
    text: StringProperty(default="")  # type: ignore[valid-type]
    job_dir: StringProperty(default="", subtype="DIR_PATH")  # type: ignore[valid-type]
    last_message: StringProperty(default="")  # type: ignore[valid-type]


def _is_take_root(_self: bpy.types.PropertyGroup, obj: bpy.types.Object) -> bool:
    return bool(obj.microexp_take.is_take_root)


class MICROEXP_PG_settings(PropertyGroup):
    """What the next reconstruction does (saved with the scene)."""

    clip: StringProperty(name="Clip", description="Video of a face", subtype="FILE_PATH")  # type: ignore[valid-type]
    use_frame_range: BoolProperty(  # type: ignore[valid-type]
        name="Frame Range", description="Reconstruct only part of the clip", default=False)
    frame_first: IntProperty(  # type: ignore[valid-type]
        name="First", description="First source frame (0 = the clip's first)", default=0, min=0)
    frame_last: IntProperty(  # type: ignore[valid-type]
        name="Last", description="Last source frame, included", default=100, min=0)
    flow: EnumProperty(  # type: ignore[valid-type]
        name="Flow", description="Optical flow used by the refinement",
        items=[("fast", "Fast", "Quick optical flow"), ("tvl1", "TV-L1", "The paper's TV-L1 flow (slower)")],
        default="fast")
    stages: EnumProperty(  # type: ignore[valid-type]
        name="Reconstruction", description="How far the reconstruction goes",
        items=[("coarse", "Landmark Fit", "Coarse landmark fit only: fastest, misses most micro-motion"),
               ("solve", "Flow Solve", "+ the onset-relative motion solve from the optical flow, no networks "
                                       "(about 22 s per 100 frames)"),
               ("full", "Full Model", "+ the paper's networks: dynamic-encoded module and mesh deformation, "
                                      "whose offsets over 0.01 mm become detail shape keys "
                                      "(about 55-60 s per 100 frames)")],
        default="full")
    checkpoint: StringProperty(  # type: ignore[valid-type]
        name="Checkpoint", subtype="FILE_PATH",
        description="Networks trained by './microexp train' to start the Full Model from, then fine-tuned on the "
                    "clip (empty: they learn from the clip alone)")
    target: EnumProperty(  # type: ignore[valid-type]
        name="Target", items=[("NEW", "New Rig", "Import the result as a new rig"),
                              ("UPDATE", "Update Rig", "Replace an earlier take's rig with the result")],
        default="NEW")
    target_root: PointerProperty(  # type: ignore[valid-type]
        name="Rig", description="The take root (an imported take's '_root' empty) to update",
        type=bpy.types.Object, poll=_is_take_root)
    frame_start: IntProperty(  # type: ignore[valid-type]
        name="Start Frame", description="Scene frame of the take's first frame", default=1, min=0)


class MICROEXP_PG_take(PropertyGroup):
    """Where an imported take came from (set on the take's root empty)."""

    is_take_root: BoolProperty(default=False)  # type: ignore[valid-type]
    take_id: StringProperty(default="")  # type: ignore[valid-type]
    take_path: StringProperty(default="", subtype="DIR_PATH")  # type: ignore[valid-type]
    clip: StringProperty(default="", subtype="FILE_PATH")  # type: ignore[valid-type]
    model_id: StringProperty(default="")  # type: ignore[valid-type]
    frame_start: IntProperty(default=1)  # type: ignore[valid-type]
    fps: FloatProperty(default=0.0)  # type: ignore[valid-type]
    key_scales: StringProperty(  # type: ignore[valid-type]
        default="{}", description="JSON: factor moved from each shape key's weights into its data")


classes = (MICROEXP_PG_job, MICROEXP_PG_settings, MICROEXP_PG_take)


def register_properties() -> None:
    bpy.types.WindowManager.microexp_job = PointerProperty(type=MICROEXP_PG_job)
    bpy.types.Scene.microexp = PointerProperty(type=MICROEXP_PG_settings)
    bpy.types.Object.microexp_take = PointerProperty(type=MICROEXP_PG_take)


def unregister_properties() -> None:
    del bpy.types.Object.microexp_take
    del bpy.types.Scene.microexp
    del bpy.types.WindowManager.microexp_job
