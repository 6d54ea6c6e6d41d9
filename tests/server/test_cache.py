"""The preprocessing cache's store: what a killed run left under a temporary name is removed once stale."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest

from server.cache import STALE_AFTER_S, PreprocessCache, clip_digest


def left_by_a_killed_run(folder: Path, age_s: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "crops.npy").write_bytes(b"half written")
    then = time.time() - age_s
    for path in (folder / "crops.npy", folder):
        os.utime(path, (then, then))
    return folder


def test_a_store_removes_stale_temporary_folders_and_keeps_fresh_ones(tmp_path: Path) -> None:
    stale = left_by_a_killed_run(tmp_path / ".tmp-abc-1234", STALE_AFTER_S + 60)
    fresh = left_by_a_killed_run(tmp_path / ".tmp-def-5678", 60)  # perhaps another process writing it now
    busy = left_by_a_killed_run(tmp_path / ".tmp-ghi-9012", STALE_AFTER_S + 60)
    os.utime(busy / "crops.npy")  # an old folder whose file is being written now
    entry = PreprocessCache(tmp_path).store("k" * 32, {"a": np.zeros(3)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, busy.name, entry.name])
    assert not stale.exists()


def test_a_folder_digest_takes_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "seq"
    folder.mkdir()
    name = os.fsdecode(b"frame\xff1.png")  # a Latin-1 name on a UTF-8 file system: a lone surrogate in Python
    try:
        (folder / name).write_bytes(b"png bytes")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    (folder / "frame2.png").write_bytes(b"more bytes")
    first = clip_digest(folder)
    assert len(first) == 64 and clip_digest(folder) == first
    (folder / "frame2.png").write_bytes(b"changed")
    assert clip_digest(folder) != first


def test_a_cache_folder_that_cannot_be_entered_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = PreprocessCache(tmp_path)
    entry = cache.store("k" * 32, {"a": np.zeros(3)}, {})
    real_is_file = Path.is_file

    def no_entry(self: Path) -> bool:  # what stat() says in a folder without execute permission (root is exempt)
        if self.parent == entry:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", no_entry)
    assert cache.load("k" * 32) is None
