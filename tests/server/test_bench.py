"""`./microexp bench`'s command line: variant names, clip count and --out checked before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import server.bench
from server.bench import VARIANT_NAMES, VARIANTS, main_bench, select_variants


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def work(*_args: Any, **_kwargs: Any) -> str:
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(server.bench, "bench_server", work)
    monkeypatch.setattr(server.bench, "bench_model", work)


def test_each_variant_name_selects_its_own_row() -> None:
    for name, row, stages, flags in VARIANTS:
        assert select_variants([name]) == [(row, stages, flags)]
    assert [stages for _, stages, _ in select_variants(["full", "solve", "dem"])] == ["solve", "dem", "full"]
    assert len(select_variants(None)) == len(VARIANTS) == len(set(VARIANT_NAMES))
    with pytest.raises(ValueError, match=r"^Unknown model variants \['onset-relative'\]: name one or more of coarse,"):
        select_variants(["onset-relative", "dem"])


@pytest.mark.parametrize("args, message", [
    (["--variants", "dem", "nonsense"],
     "argument --variants: invalid choice: 'nonsense' (choose from 'coarse', 'solve'"),
    (["--clips", "0"], "argument --clips: must be a whole number of 1 or more, not '0'"),
    (["--frames", "1"], "argument --frames: must be a whole number of 2 or more, not '1'"),
])
def test_a_wrong_command_line_is_refused_before_any_work(args: list[str], message: str, no_work: None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main_bench(["--part", "model", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unwritable_out_is_refused_before_any_work(tmp_path: Path, no_work: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "missing" / "bench.md"
    assert main_bench(["--part", "model", "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"error: The folder {out.parent} for --out does not exist."
    assert main_bench(["--part", "model", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: --out {tmp_path} is a folder; name a markdown file."
