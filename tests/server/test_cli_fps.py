"""`reconstruct --fps`: parsed, refused when not a rate, and handed through ReconstructOptions to preprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.cli import _options_from, build_parser
from server.pipeline import ReconstructOptions, reconstruct


def test_fps_option_is_parsed_into_the_options() -> None:
    args = build_parser().parse_args(["reconstruct", "frames/", "-o", "out", "--fps", "23.976"])
    assert _options_from(args).fps == 23.976
    assert _options_from(build_parser().parse_args(["reconstruct", "c.mp4", "-o", "out"])).fps is None


@pytest.mark.parametrize("bad", ["0", "-24", "nan", "inf", "fast"])
def test_fps_that_is_not_a_rate_is_refused_by_argparse(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reconstruct", "c.mp4", "-o", "out", "--fps", bad])
    assert "must be a positive number of frames per second" in capsys.readouterr().err


def test_fps_help_says_it_overrides_the_container(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reconstruct", "--help"])
    assert "overriding the container's" in " ".join(capsys.readouterr().out.split())


def test_reconstruct_hands_the_fps_to_preprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_preprocess(clip: str, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr("server.preprocess.preprocess", fake_preprocess)
    with pytest.raises(Stop):
        reconstruct(tmp_path / "frames", tmp_path / "out", ReconstructOptions(fps=12.5))
    assert seen["fps"] == 12.5
