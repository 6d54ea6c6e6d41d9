"""How the pipeline fails: error codes against docs/protocol.md, and what a failed or cancelled write leaves behind.

The heavy stages (preprocessing, the fit) are replaced by stand-ins returning a tiny take, so these run in a second.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from server.errors import Cancelled, InternalError, MicroexpError, OutputError
from server.events import Reporter
from server.pipeline import ReconstructOptions, reconstruct

try:  # tests/ as packages (relative) or as rootdir-inserted folders (absolute)
    from .preprocess_clips import moving_face_frames, write_video
except ImportError:
    from preprocess_clips import moving_face_frames, write_video  # type: ignore[no-redef,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
T, E, J = 3, 2, 2


def tiny_arrays() -> dict[str, np.ndarray]:
    """A valid take of a tetrahedron over T frames."""
    tetra = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]], np.float32)
    return {
        "template": tetra, "faces": np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.int32),
        "shape": np.zeros(2, np.float32), "expression_basis": np.zeros((4, 3, E), np.float32),
        "expression": np.zeros((T, E), np.float32), "pose_corrective_basis": np.zeros((4, 3, 9), np.float32),
        "pose": np.zeros((T, J, 3), np.float32), "joints_rest": np.zeros((J, 3), np.float32),
        "joint_parents": np.array([-1, 0], np.int32), "skin_weights": np.full((4, J), 0.5, np.float32),
        "translation": np.tile(np.array([0, 0, -0.5], np.float32), (T, 1)),
        "camera": np.array([60.0, 60.0, 32.0, 24.0], np.float32), "image_size": np.array([64, 48], np.int32),
        "displacement": np.zeros((T, 4, 3), np.float32), "detail_basis": np.zeros((0, 4, 3), np.float32),
        "detail_weights": np.zeros((T, 0), np.float32), "vertices": np.tile(tetra, (T, 1, 1)),
        "landmarks68": np.zeros((T, 68, 2), np.float32), "landmarks_mp": np.zeros((T, 5, 2), np.float32),
        "confidence": np.ones(T, np.float32), "face_found": np.ones(T, bool),
        "frame_numbers": np.arange(T, dtype=np.int32),
    }


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """reconstruct() with stand-in stages; edit `arrays` to change the take they produce."""
    import server.fit
    import server.pipeline
    import server.preprocess
    import server.take

    state: dict[str, Any] = {"arrays": tiny_arrays()}
    pre = SimpleNamespace(fps=30.0, frame_numbers=np.arange(T), image_size=(64, 48), face_found=np.ones(T, bool),
                          warnings=[], timings={})
    coarse = SimpleNamespace(expression=np.zeros((T, E)), pose=np.zeros((T, J, 3)), translation=np.zeros((T, 3)),
                             shape=np.zeros(2), camera=np.zeros(4), landmark_error_iod=0.01, vertices=None)
    monkeypatch.setattr(server.preprocess, "preprocess", lambda *a, **k: pre)
    monkeypatch.setattr(server.pipeline, "load_model", lambda *a, **k: object())
    monkeypatch.setattr(server.fit, "fit_coarse", lambda *a, **k: coarse)
    monkeypatch.setattr(server.take, "build_take_arrays",
                        lambda *a, **k: (state["arrays"], {"detail_components": 0, "detail_energy_kept": 1.0}))
    monkeypatch.setattr(server.take, "head_model_header", lambda model: {
        "id": "tiny", "kind": "builtin", "expression_names": [f"e{i}" for i in range(E)],
        "joint_names": [f"j{i}" for i in range(J)]})
    return state


def documented_error_codes() -> set[str]:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    table = text.split("Error codes the server sends:", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))


def test_every_error_code_the_server_sends_is_documented():
    from blender_microexp.core.protocol import ProtocolError
    from server.errors import ClipError, OutputError
    from server.headmodel import HeadModelError
    from server.models.checkpoint import CheckpointError

    sent = {cls.code for cls in (MicroexpError, ClipError, OutputError, HeadModelError, CheckpointError,
                                 InternalError)}
    sent.add(getattr(ProtocolError("x"), "code", "job"))  # what server/cli.py sends for a refused job file
    sent.add("internal")  # the catch-all
    assert sent == documented_error_codes()


def test_a_take_holding_nan_is_the_servers_failure_and_nothing_is_written(tmp_path, stubbed):
    stubbed["arrays"]["expression"][1, 0] = np.nan
    with pytest.raises(InternalError) as info:
        reconstruct(tmp_path / "clip.mp4", tmp_path / "out", ReconstructOptions(stages="coarse", preview=False))
    assert info.value.code == "internal"
    assert str(info.value) == ("The reconstructed take: array 'expression' holds NaN or infinite values, "
                               "so it was not written.")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_the_stand_in_pipeline_writes_a_take(tmp_path, stubbed):
    result = reconstruct(tmp_path / "clip.mp4", tmp_path / "out", ReconstructOptions(stages="coarse", preview=False))
    assert sorted(p.name for p in result.take_dir.iterdir()) == ["take.json", "take.npz"]


def test_a_full_disk_while_writing_the_take_is_the_output_error(tmp_path, stubbed, monkeypatch):
    import errno

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    out = tmp_path / "out"
    with pytest.raises(OutputError) as info:
        reconstruct(tmp_path / "clip.mp4", out, ReconstructOptions(stages="coarse", preview=False))
    assert str(info.value) == f"Could not write the take into {out} (No space left on device)."
    assert list(out.iterdir()) == []


class Warnings(Reporter):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def _warning(self, message: str) -> None:
        self.messages.append(message)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", moving_face_frames(count=T, size=(64, 48)))


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_the_preview_comes_with_its_take(tmp_path, stubbed, clip):
    out = tmp_path / "out"
    reconstruct(clip, out, ReconstructOptions(stages="coarse"))
    assert (out / "preview.mp4").stat().st_size > 0 and leftovers(out) == []
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("preview.mp4", "take.json", "take.npz"):  # as readable as the user's other files, not 0o600
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name


def test_a_failed_take_write_leaves_the_old_take_with_its_own_preview(tmp_path, stubbed, clip, monkeypatch):
    import errno

    out = tmp_path / "out"
    reconstruct(clip, out, ReconstructOptions(stages="coarse"))
    old = {name: (out / name).stat().st_ino for name in ("take.json", "take.npz", "preview.mp4")}

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OutputError):
        reconstruct(clip, out, ReconstructOptions(stages="coarse"))
    assert {name: (out / name).stat().st_ino for name in old} == old and leftovers(out) == []


def test_a_cancel_after_the_preview_leaves_neither_take_nor_preview(tmp_path, stubbed, clip, monkeypatch):
    import server.preview

    written = []
    real = server.preview.write_preview
    monkeypatch.setattr(server.preview, "write_preview", lambda *a, **k: written.append(real(*a, **k)) or written[0])
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        reconstruct(clip, out, ReconstructOptions(stages="coarse"), cancel=lambda: bool(written))
    assert written == [True] and list(out.iterdir()) == []


def test_a_video_writer_that_does_not_open_is_a_warning_and_no_preview(tmp_path, stubbed, clip, monkeypatch):
    import server.preview

    class ClosedWriter:
        fourcc = staticmethod(cv2.VideoWriter.fourcc)

        def __init__(self, *_args: Any) -> None:
            pass

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return False

        def release(self) -> None:
            pass

    out = tmp_path / "out"
    reconstruct(clip, out, ReconstructOptions(stages="coarse"))  # an older take with its preview
    monkeypatch.setattr(server.preview.cv2, "VideoWriter", ClosedWriter)
    rep = Warnings()
    reconstruct(clip, out, ReconstructOptions(stages="coarse"), reporter=rep)
    assert rep.messages == ["OpenCV cannot write mp4 video here, so no preview.mp4 was written."]
    assert sorted(p.name for p in out.iterdir()) == ["take.json", "take.npz"]


def test_temporary_files_a_killed_run_left_are_removed_once_stale(tmp_path, stubbed):
    import time

    from server.cache import STALE_AFTER_S

    out = tmp_path / "out"
    out.mkdir()
    names = [".take-a1.npz.part", ".take-b2.json.part", ".preview-c3.mp4", ".take-notes.txt"]
    then = time.time() - STALE_AFTER_S - 60
    for name in names:
        (out / name).write_bytes(b"half written")
        os.utime(out / name, (then, then))
    (out / ".take-d4.npz.part").write_bytes(b"another run writing now")
    reconstruct(tmp_path / "clip.mp4", out, ReconstructOptions(stages="coarse", preview=False))
    assert leftovers(out) == [".take-d4.npz.part", ".take-notes.txt"]


@pytest.mark.parametrize("stages", ["coarse", "solve"])
def test_a_checkpoint_with_a_stage_that_runs_no_networks_is_a_warning_and_not_recorded(tmp_path, stubbed,
                                                                                       monkeypatch, stages):
    import server.refine

    seen: list[Any] = []

    def refine(*_args: Any, checkpoint: Any = None, **_kwargs: Any) -> SimpleNamespace:
        seen.append(checkpoint)
        return SimpleNamespace(expression=np.zeros((T, E)), pose=np.zeros((T, J, 3)), translation=np.zeros((T, 3)),
                               displacement=None, report={"stages": stages})

    monkeypatch.setattr(server.refine, "refine", refine)
    ckpt = tmp_path / "refine.pt"
    ckpt.write_bytes(b"never read")
    rep = Warnings()
    result = reconstruct(tmp_path / "clip.mp4", tmp_path / "out",
                         ReconstructOptions(stages=stages, checkpoint=str(ckpt), preview=False), reporter=rep)
    assert rep.messages == [f"The checkpoint {ckpt} is not used: the '{stages}' stage runs no networks."]
    assert result.header["settings"]["checkpoint"] is None
    assert seen == ([None] if stages == "solve" else [])
