"""Training loop (2 real steps on tiny fake clips), checkpoints with config and dims, resume, fine-tuning."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server.errors import Cancelled, ClipError, OutputError
from server.headmodel import HeadModel
from server.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from server.models.toy import bump_offsets, make_toy_clip, toy_head_data
from server.refine import RefineConfig, model_dims, refine
from server.train import TrainConfig, main_train, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> HeadModel:
    return HeadModel(toy_head_data(nx=12, ny=14))


@pytest.fixture(scope="module")
def clips(model: HeadModel) -> dict[str, Any]:
    return {
        "a.mp4": make_toy_clip(model, bump_offsets(model, 10, region=4)),
        "b.mp4": make_toy_clip(model, bump_offsets(model, 9, region=7, amplitude=0.002)),
    }


def clip_folder(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    (folder / "notes.txt").write_text("not a clip")
    return folder


TINY = TrainConfig(steps=2, batch_clips=2, frames=4, save_every=1, device="cpu",
                   model=RefineConfig(dem_scope="window", window=4, overlap=1))


def test_two_steps_write_a_checkpoint_that_resumes_and_fine_tunes(tmp_path: Path, model: HeadModel,
                                                                    clips: dict[str, Any]) -> None:
    folder = clip_folder(tmp_path, ["a.mp4", "b.mp4", "broken.mov"])
    seen: list[str] = []

    def prepare(path: Path) -> Any:
        seen.append(path.name)
        if path.name == "broken.mov":
            raise ClipError("The clip 'broken.mov' shows no face.")
        return clips[path.name]

    out = tmp_path / "ckpt" / "refine.pt"
    before = {k: v.clone() for k, v in _fresh_state(model).items()}
    report = train(folder, out, TINY, model=model, prepare=prepare)
    assert sorted(seen) == ["a.mp4", "b.mp4", "broken.mov"]
    assert report["steps"] == 2 and report["clips"] == 2 and len(report["skipped"]) == 1
    assert np.isfinite(report["loss_first"]) and np.isfinite(report["loss_last"])

    ckpt = load_checkpoint(out, model_dims(model))  # weights_only=True inside
    assert ckpt["step"] == 2 and ckpt["dims"] == model_dims(model)
    assert ckpt["stages"] == "full" and ckpt["train_config"]["stages"] == "full"  # no stages asked, nothing resumed
    assert ckpt["config"]["window"] == 4 and ckpt["train_config"]["lr"] == 1e-4
    assert "state" in ckpt["optimizer"]
    changed = [k for k, v in ckpt["nets"].items() if not torch.equal(v, before[k])]
    assert any(k.startswith("dem.") for k in changed) and any(k.startswith("deform.") for k in changed)

    again = train(folder, out, replace(TINY, steps=1), model=model, prepare=prepare, resume=out)
    assert again["steps"] == 3 and load_checkpoint(out)["step"] == 3

    pre, coarse = clips["a.mp4"]
    result = refine(model, pre, coarse, "full", RefineConfig(iterations=2, device="cpu"), checkpoint=out)
    assert result.report["checkpoint_step"] == 3
    assert result.report["config"]["window"] == 4  # the architecture comes from the checkpoint
    assert result.displacement.shape == (10, model.num_vertices, 3)


def _fresh_state(model: HeadModel) -> dict[str, torch.Tensor]:
    from server.refine import MicroExpNets

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY.seed)
        return MicroExpNets(model.num_expression, TINY.model).state_dict()


def test_checkpoint_for_another_topology_or_corrupt_is_refused(tmp_path: Path, model: HeadModel,
                                                               clips: dict[str, Any]) -> None:
    folder = clip_folder(tmp_path, ["a.mp4"])
    out = tmp_path / "refine.pt"
    train(folder, out, replace(TINY, steps=1, batch_clips=1), model=model, prepare=lambda p: clips[p.name])
    other = HeadModel(toy_head_data(nx=10, ny=10))
    with pytest.raises(CheckpointError, match="n_vertices"):
        load_checkpoint(out, model_dims(other))
    pre, coarse = clips["a.mp4"]
    with pytest.raises(CheckpointError, match="trained for a head model"):
        refine(other, pre, coarse, "dem", checkpoint=out)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"^The checkpoint '.*bad\.pt' cannot be read: it is not a torch file "
                                              r"written by 'microexp train', or it is damaged\.$"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_folder_without_clips(tmp_path: Path, model: HeadModel, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipError, match="contains no video files"):
        train(empty, tmp_path / "x.pt", TINY, model=model, prepare=lambda p: None)  # type: ignore[arg-type,return-value]
    assert main_train(["--clips", str(tmp_path / "nowhere")]) == 1  # as reconstruct's user errors
    assert capsys.readouterr().err.strip() == f"The clips folder '{tmp_path / 'nowhere'}' does not exist."
    assert not (tmp_path / "x.pt").exists()


def test_checkpoint_whose_weights_do_not_fit_the_networks_is_one_sentence(tmp_path: Path, model: HeadModel,
                                                                          clips: dict[str, Any]) -> None:
    pre, coarse = clips["a.mp4"]
    folder = clip_folder(tmp_path, ["a.mp4"])
    state = _fresh_state(model)
    first = next(iter(state))
    reshaped = dict(state, **{first: torch.zeros(3, 5)})
    renamed = {("old." + k if k == first else k): v for k, v in state.items()}
    cases = {
        "no_nets.pt": ({}, "it holds no network weights"),
        "reshaped.pt": ({"nets": reshaped}, f"1 weights have another shape (first '{first}': 3x5 in the checkpoint, "
                                            f"{'x'.join(map(str, state[first].shape))} here)"),
        "renamed.pt": ({"nets": renamed}, f"1 of their weights are missing (first '{first}') and 1 of its weights "
                                          f"belong to no layer (first 'old.{first}')"),
    }
    for name, (payload, reason) in cases.items():
        path = tmp_path / name
        save_checkpoint(path, {**payload, "config": asdict(TINY.model), "dims": model_dims(model)})
        want = f"The checkpoint '{path}' does not fit this model's networks: {reason}."
        with pytest.raises(CheckpointError) as info:
            refine(model, pre, coarse, "dem", RefineConfig(iterations=1, device="cpu"), checkpoint=path)
        assert str(info.value) == want
        with pytest.raises(CheckpointError) as info:
            train(folder, tmp_path / "out.pt",
                  replace(TINY, steps=1, batch_clips=1), model=model, prepare=lambda p: clips[p.name], resume=path)
        assert str(info.value) == want


def test_a_checkpoint_that_cannot_be_written_is_one_sentence_and_leaves_no_temporary(
        tmp_path: Path, model: HeadModel, clips: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = clip_folder(tmp_path, ["a.mp4"])
    out = tmp_path / "refine.pt"

    def full_disk(_obj: Any, f: Any) -> None:  # what torch's writer raises on a full disk: a RuntimeError
        Path(f).write_bytes(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        train(folder, out, replace(TINY, steps=1, batch_clips=1), model=model, prepare=lambda p: clips[p.name])
    assert str(info.value) == f"Cannot write the checkpoint '{out}': the disk is full or the folder is not writable."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"]


def test_an_unwritable_checkpoint_path_is_refused_before_any_clip_is_prepared(
        tmp_path: Path, model: HeadModel, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = clip_folder(tmp_path, ["a.mp4"])

    def prepare(path: Path) -> Any:
        raise AssertionError(f"{path.name} was prepared")

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=r"^Cannot create the folder .*a-file \(.*\)\.$"):
        train(folder, blocker / "refine.pt", TINY, model=model, prepare=prepare)
    with pytest.raises(OutputError) as info:
        train(folder, folder, TINY, model=model, prepare=prepare)
    assert str(info.value) == f"The checkpoint path {folder} is a folder; name a file, e.g. {folder / 'refine.pt'}."
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)
    with pytest.raises(OutputError) as info:
        train(folder, tmp_path / "refine.pt", TINY, model=model, prepare=prepare)
    assert str(info.value) == f"The folder {tmp_path} is not writable, so the checkpoint cannot be written there."


@pytest.mark.parametrize("steps", ["0", "-3", "many"])
def test_steps_must_be_a_positive_whole_number(tmp_path: Path, steps: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = clip_folder(tmp_path, ["a.mp4"])
    with pytest.raises(SystemExit) as info:
        main_train(["--clips", str(folder), "--steps", steps])
    assert info.value.code == 2  # argparse's, for a wrong command line
    err = capsys.readouterr().err
    assert err.strip().endswith(f"error: argument --steps: must be a whole number of 1 or more, not '{steps}'")
    assert "wrote" not in err and not (folder / "microexp-refine.pt").exists()


def test_a_cancel_saves_the_steps_since_the_last_save_and_leaves_no_temporary(
        tmp_path: Path, model: HeadModel, clips: dict[str, Any]) -> None:
    folder = clip_folder(tmp_path, ["a.mp4", "b.mp4"])
    out = tmp_path / "refine.pt"
    steps: list[int] = []

    def progress(stage: str, done: int, _total: int) -> None:
        if stage == "train":
            steps.append(done)

    cfg = replace(TINY, steps=5, save_every=100)
    with pytest.raises(Cancelled) as info:
        train(folder, out, cfg, model=model, prepare=lambda p: clips[p.name], progress=progress,
              cancel=lambda: len(steps) >= 1)
    assert str(info.value) == f"Training was cancelled after step 1, which {out} holds."
    assert load_checkpoint(out)["step"] == 1 and steps == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "refine.pt"]

    with pytest.raises(Cancelled) as info:  # while the clips are prepared: nothing to save
        train(folder, tmp_path / "other.pt", cfg, model=model, prepare=lambda p: clips[p.name], cancel=lambda: True)
    assert str(info.value) == "Training was cancelled while the clips were prepared; nothing was written."
    assert not (tmp_path / "other.pt").exists()


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """main_train installs SIGINT/SIGTERM handlers; give pytest its own back."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.fixture
def cli_stand_ins(monkeypatch: pytest.MonkeyPatch, model: HeadModel, clips: dict[str, Any]) -> None:
    """main_train with the toy head model and clips instead of the builtin head and real preprocessing."""
    import server.train

    monkeypatch.setattr(server.train, "default_model", lambda spec="builtin": model)
    def prepare(path: Path) -> Any:
        if path.name not in clips:
            raise ClipError(f"The clip '{path.name}' shows no face.")
        return clips[path.name]

    monkeypatch.setattr(server.train, "default_prepare", lambda head, cancel=None: prepare)


def test_ctrl_c_saves_says_one_sentence_and_exits_130(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, own_signal_handlers: None,
                                                      cli_stand_ins: None) -> None:
    import server.train

    class Interrupted(server.train.ClipObjective):
        def losses(self, *args: Any, **kwargs: Any) -> Any:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the first step
            return super().losses(*args, **kwargs)

    monkeypatch.setattr(server.train, "ClipObjective", Interrupted)
    folder = clip_folder(tmp_path, ["a.mp4", "b.mp4"])
    out = tmp_path / "refine.pt"
    assert main_train(["--clips", str(folder), "--out", str(out), "--steps", "50", "--device", "cpu"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"Training was cancelled after step 1, which {out} holds."
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in err)
    assert load_checkpoint(out)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "refine.pt"]


def test_resuming_goes_on_with_the_checkpoint_s_stages_and_says_so(
        tmp_path: Path, model: HeadModel, clips: dict[str, Any], capsys: pytest.CaptureFixture[str],
        own_signal_handlers: None, cli_stand_ins: None) -> None:
    folder = clip_folder(tmp_path, ["a.mp4", "b.mp4"])
    dem = tmp_path / "dem.pt"
    train(folder, dem, replace(TINY, steps=1, stages="dem"), model=model, prepare=lambda p: clips[p.name])

    def adam_steps(path: Path) -> float:
        return float(next(iter(load_checkpoint(path)["optimizer"]["state"].values()))["step"])

    out = tmp_path / "more.pt"
    assert main_train(["--clips", str(folder), "--resume", str(dem), "--out", str(out), "--steps", "1",
                       "--device", "cpu"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"resuming {dem} at step 1 with stages 'dem', up to step 2; optimizer state kept"
    ckpt = load_checkpoint(out)
    assert ckpt["stages"] == "dem" and ckpt["step"] == 2 and adam_steps(out) == 2.0

    assert main_train(["--clips", str(folder), "--resume", str(dem), "--out", str(out), "--steps", "1",
                       "--device", "cpu", "--stages", "full"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        "The checkpoint was trained with stages 'dem'; training goes on with 'full', so its optimizer state is not "
        "kept.",
        f"resuming {dem} at step 1 with stages 'full', up to step 2; optimizer state not kept"]
    assert load_checkpoint(out)["stages"] == "full" and adam_steps(out) == 1.0


def test_each_prepared_clip_is_said_and_the_end_lists_skipped_clips_and_the_last_loss(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], own_signal_handlers: None, cli_stand_ins: None) -> None:
    folder = clip_folder(tmp_path, ["a.mp4", "b.mp4", "broken.mov"])
    out = tmp_path / "refine.pt"
    assert main_train(["--clips", str(folder), "--out", str(out), "--steps", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"prepared a\.mp4 \(1/3\): 10 frames in \d+\.\d s", err[0])
    assert re.fullmatch(r"prepared b\.mp4 \(2/3\): 9 frames in \d+\.\d s", err[1])
    assert err[2] == "skipping broken.mov: The clip 'broken.mov' shows no face."
    assert re.fullmatch(rf"wrote {re.escape(str(out))} after 1 steps on 2 clips, loss \d+\.\d{{5}} at the last step",
                        err[-3])
    assert err[-2:] == ["skipped 1 of 3 clips:", "  broken.mov: The clip 'broken.mov' shows no face."]
