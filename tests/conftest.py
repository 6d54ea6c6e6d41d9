"""Fixtures shared across the suite: a short made clip with known truth, and the ../shared folder."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "flame_topology").is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); it holds the real footage and FLAME topology for this test")
    return SHARED


@pytest.fixture(scope="session")
def real_clip(shared_dir: Path) -> Path:
    clip = shared_dir / "clips" / "single_face.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} is absent; this test needs the real footage")
    return clip


@pytest.fixture(scope="session")
def made_clip_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 30-frame made clip (scripted micro-expressions on a real photo) and its truth file."""
    from server.synth import make_clip

    out = tmp_path_factory.mktemp("made") / "clip.mp4"
    truth = make_clip(out, fps=30, frames=30, seed=1)
    return out, Path(truth)


@pytest.fixture(scope="session")
def made_clip(made_clip_pair: tuple[Path, Path]) -> Path:
    return made_clip_pair[0]
