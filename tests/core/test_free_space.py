"""The launcher's disk check (tools/free_space.py): a full disk is one sentence before pip starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
try:
    import free_space
finally:
    sys.path.pop(0)

GIB = free_space.GIB


def test_needs_on_one_disk_add_up_and_the_sentence_names_them(tmp_path: Path) -> None:
    venv, tmp = tmp_path / "proj" / ".venv", tmp_path / "tmp"  # neither exists yet: their parent is probed
    same_disk = {"device": lambda p: 1}
    assert free_space.shortage([(venv, 4), (tmp, 1)], free=lambda p: 5 * GIB, **same_disk) is None
    problem = free_space.shortage([(venv, 4), (tmp, 1)], free=lambda p: int(4.5 * GIB), **same_disk)
    assert problem == (f"microexp: setting up needs about 5 GiB free for {venv} and {tmp}, but that disk has only "
                       "4.5 GiB free; free some space and run the command again.")


def test_each_disk_is_judged_by_its_own_needs(tmp_path: Path) -> None:
    venv, tmp = tmp_path / ".venv", Path("/tmp")
    devices = {str(tmp_path): 1, "/tmp": 2}
    free = {str(tmp_path): 4 * GIB, "/tmp": int(0.5 * GIB)}
    problem = free_space.shortage([(venv, 4), (tmp, 1)], free=lambda p: free[str(p)],
                                  device=lambda p: devices[str(p)])
    assert problem is not None and problem.startswith("microexp: setting up needs about 1 GiB free for /tmp,")
    free["/tmp"] = GIB
    assert free_space.shortage([(venv, 4), (tmp, 1)], free=lambda p: free[str(p)],
                               device=lambda p: devices[str(p)]) is None


def test_the_command_exits_1_with_the_sentence_on_a_real_disk(tmp_path: Path) -> None:
    script = str(ROOT / "tools" / "free_space.py")
    ok = subprocess.run([sys.executable, script, f"{tmp_path / 'new'}=0.001"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stderr == ""
    short = subprocess.run([sys.executable, script, f"{tmp_path}=1000000"], capture_output=True, text=True)
    assert short.returncode == 1
    assert short.stderr.startswith(f"microexp: setting up needs about 1000000 GiB free for {tmp_path}, but")
    assert short.stderr.count("\n") == 1
