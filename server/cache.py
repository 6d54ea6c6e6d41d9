"""Per-clip preprocessing cache keyed by the clip's bytes and the preprocessing settings (never the fit settings).

Layout: <cache_dir>/<key>/meta.json + one .npy per array. An entry is written into a temporary folder and renamed
into place, so a cancelled or crashed run leaves no half-written entry; the temporary folder of a killed run is
removed by a later store once it is stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "MICROEXP_CACHE"
_CHUNK = 1 << 20
# Arrays opened as memory maps on load (large); the rest are read into memory.
MEMMAP_ARRAYS = frozenset({"crops", "flow"})
# A temporary file or folder untouched this long was left by a killed run: a live writer touches it every few seconds.
STALE_AFTER_S = 3600.0


def default_cache_dir() -> Path:
    """$MICROEXP_CACHE, else ~/.cache/blender_microexp."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "blender_microexp"


def _update_with_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def clip_digest(clip: str | Path, image_suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif",
                                                                         ".tiff")) -> str:
    """sha256 of a clip's content, streamed: a file's bytes, or a folder's image names and bytes in sorted order."""
    path = Path(clip)
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.iterdir() if p.suffix.lower() in image_suffixes and p.is_file()):
            digest.update(os.fsencode(item.name) + b"\0")  # the bytes on disk, UTF-8 or not
            _update_with_file(digest, item)
    else:
        _update_with_file(digest, path)
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path, pattern: str, max_age_s: float = STALE_AFTER_S) -> None:
    """Remove the files or folders named `pattern` in `folder` that nothing has touched for `max_age_s` (a folder
    counts as touched when any file directly in it is): what a killed run left under its temporary names."""
    now = time.time()
    try:
        items = list(folder.glob(pattern))
    except OSError:
        return
    for item in items:
        try:
            if item.is_dir() and not item.is_symlink():
                newest = max([item.lstat().st_mtime] + [child.lstat().st_mtime for child in item.iterdir()])
                if now - newest >= max_age_s:
                    shutil.rmtree(item)
            elif now - item.lstat().st_mtime >= max_age_s:
                item.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue


def cache_key(content_digest: str, settings: dict[str, Any]) -> str:
    """Key = sha256(content digest + canonical JSON of the preprocessing settings), 32 hex characters."""
    blob = json.dumps({"clip": content_digest, "settings": settings}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


class PreprocessCache:
    """Store and load preprocessing results (a dict of arrays + JSON metadata) by key."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def entry(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """(arrays, meta) for a complete entry, else None; crops and flow come back as read-only memory maps.

        Anything that goes wrong reading it (a damaged entry, a cache folder that cannot be entered) is a miss."""
        folder = self.entry(key)
        meta_path = folder / "meta.json"
        try:
            if not meta_path.is_file():  # raises PermissionError for a folder that cannot be entered
                return None
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            arrays = {
                name: np.load(folder / f"{name}.npy", mmap_mode="r" if name in MEMMAP_ARRAYS else None,
                              allow_pickle=False)
                for name in meta["arrays"]
            }
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is a miss; the next store replaces it
        return arrays, meta

    def store(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
        """Write an entry atomically (temporary folder, then rename) and return its folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.root, ".tmp-*")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
        try:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            full_meta = dict(meta, arrays=sorted(arrays))
            (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1, sort_keys=True), encoding="utf-8")
            final = self.entry(key)
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():  # another process won the race with a complete entry
                    raise
            return final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
