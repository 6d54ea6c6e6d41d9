"""Every difference between the Blender versions the add-on supports (4.2 LTS to 5.x), in one place.

Animation is where they differ: 4.4 introduced slotted actions (one Action animating several
datablocks through slots, with layers, strips and channelbags holding the F-curves), and 5.0
removed the legacy ``Action.fcurves``/``Action.groups`` API. On 4.4+ a take gets ONE action with
a slot for the armature object and one for the shape keys; on 4.2/4.3 it gets two actions,
``<name>`` (armature object) and ``<name>_shapes`` (shape keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bpy
import numpy as np

SLOTTED_ACTIONS = bpy.app.version >= (4, 4, 0)
NLA_TRACK_NAME = "MicroExp"
SHAPES_SUFFIX = "_shapes"


@dataclass
class _Channels:
    """Where one datablock's F-curves go: the action, its slot (4.4+) and the F-curve collection."""

    id_block: Any
    action: Any
    slot: Any
    fcurves: Any
    groups: dict[str, Any] = field(default_factory=dict)
    group_owner: Any = None


class TakeAnimation:
    """Builds a take's action(s) and assigns them; ``created`` lists the new actions for clean-up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created: list[Any] = []
        self._channels: list[_Channels] = []
        self._shared: Any = None

    def channels_for(self, id_block: Any, id_type: str, suffix: str) -> _Channels:
        """F-curve target for ``id_block`` (id_type 'OBJECT' or 'KEY'); ``suffix`` names the legacy action."""
        if SLOTTED_ACTIONS:
            if self._shared is None:
                self._shared = bpy.data.actions.new(self.name)
                self.created.append(self._shared)
                layer = self._shared.layers.new("Layer")
                layer.strips.new(type="KEYFRAME")
            action = self._shared
            slot = action.slots.new(id_type=id_type, name=id_block.name)
            channelbag = action.layers[0].strips[0].channelbag(slot, ensure=True)
            chans = _Channels(id_block, action, slot, channelbag.fcurves, group_owner=channelbag)
        else:
            action = bpy.data.actions.new(self.name + suffix)
            self.created.append(action)
            action.id_root = id_type
            chans = _Channels(id_block, action, None, action.fcurves, group_owner=action)
        self._channels.append(chans)
        return chans

    def assign(self, push_to_nla: bool, frame_start: int) -> None:
        """Give each datablock its action; with ``push_to_nla`` as a strip on an NLA track instead."""
        for chans in self._channels:
            anim = chans.id_block.animation_data or chans.id_block.animation_data_create()
            if push_to_nla:
                track = anim.nla_tracks.new()
                track.name = NLA_TRACK_NAME
                strip = track.strips.new(chans.action.name, int(frame_start), chans.action)
                if chans.slot is not None:
                    strip.action_slot = chans.slot
                anim.action = None
            else:
                anim.action = chans.action
                if chans.slot is not None:
                    anim.action_slot = chans.slot


def new_fcurve(chans: _Channels, data_path: str, index: int, group: str | None) -> Any:
    fc = chans.fcurves.new(data_path, index=index)
    if group:
        grp = chans.groups.get(group)
        if grp is None:
            grp = chans.group_owner.groups.new(group)
            chans.groups[group] = grp
        fc.group = grp
    return fc


_LINEAR = None


def fill_fcurve(fc: Any, frames: np.ndarray, values: np.ndarray) -> None:
    """All keyframes of one F-curve at once: frames (T,), values (T,), linear interpolation."""
    global _LINEAR
    count = len(frames)
    points = fc.keyframe_points
    points.add(count)
    co = np.empty(2 * count, dtype=np.float32)
    co[0::2] = frames
    co[1::2] = values
    points.foreach_set("co", co)
    if _LINEAR is None:
        # Enum values through foreach_set are raw ints; find LINEAR's once from a real keyframe.
        probe = points[0]
        old = probe.interpolation
        probe.interpolation = "LINEAR"
        buf = np.zeros(count, dtype=np.int32)
        points.foreach_get("interpolation", buf)
        _LINEAR = int(buf[0])
        probe.interpolation = old
    points.foreach_set("interpolation", np.full(count, _LINEAR, dtype=np.int32))
    fc.update()


def action_fcurves(action: Any) -> list[Any]:
    """Every F-curve of an action, whatever the version (for tests and clean-up)."""
    if SLOTTED_ACTIONS:
        out: list[Any] = []
        for layer in action.layers:
            for strip in layer.strips:
                for bag in strip.channelbags:
                    out.extend(bag.fcurves)
        return out
    return list(action.fcurves)


def version_string() -> str:
    return ".".join(str(v) for v in bpy.app.version)
