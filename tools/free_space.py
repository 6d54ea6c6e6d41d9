"""Say in one sentence when a disk is too full for the set-up, before pip fills it half way.

    python tools/free_space.py PATH=GiB [PATH=GiB ...]

Each PATH (or its nearest existing parent) needs that many GiB free; needs on one filesystem add up. Exit 0 when
all fit, else 1 with one sentence on stderr. Standard library only: it runs before .venv exists.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

GIB = 1024**3


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def shortage(needs: Sequence[tuple[Path, float]], free: Callable[[Path], int] | None = None,
             device: Callable[[Path], int] | None = None) -> str | None:
    """The sentence for the first filesystem with less free space than the needs on it add up to, else None.
    `free` and `device` (bytes free, filesystem id of an existing path) default to the real ones."""
    free = free or (lambda p: shutil.disk_usage(p).free)
    device = device or (lambda p: os.stat(p).st_dev)
    by_fs: dict[int, tuple[list[Path], float, Path]] = {}
    for path, gib in needs:
        here = _existing(path)
        fs = device(here)
        paths, total, probe = by_fs.get(fs, ([], 0.0, here))
        by_fs[fs] = ([*paths, path], total + gib, probe)
    for paths, total, probe in by_fs.values():
        have = free(probe) / GIB
        if have < total:
            names = " and ".join(str(p) for p in paths)
            return (f"microexp: setting up needs about {total:.0f} GiB free for {names}, but that disk has only "
                    f"{have:.1f} GiB free; free some space and run the command again.")
    return None


def main(argv: Sequence[str]) -> int:
    needs = []
    for arg in argv:
        path, sep, gib = arg.rpartition("=")
        if not sep or not path:
            print(f"usage: free_space.py PATH=GiB ...; got {arg!r}", file=sys.stderr)
            return 2
        needs.append((Path(path), float(gib)))
    problem = shortage(needs)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
