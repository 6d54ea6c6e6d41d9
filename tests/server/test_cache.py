"""The preprocessing cache's store: what a killed run left under a temporary name is removed once stale."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from server.cache import STALE_AFTER_S, PreprocessCache


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
