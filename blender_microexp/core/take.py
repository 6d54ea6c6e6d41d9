"""The take: a reconstruction's result on disk (take.json header + take.npz arrays), numpy only.

Shared by the server (which writes takes) and the Blender add-on (which reads them), so the
format lives in exactly one place. See docs/take-format.md for the meaning of every array.

Arrays are read with ``allow_pickle=False``; every dimension is checked against the header,
so a reader never guesses and a damaged take is refused with one sentence.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "blender_microexp.take"
FORMAT_VERSION = "1.0"
HEADER_NAME = "take.json"
ARRAYS_NAME = "take.npz"


class TakeError(Exception):
    """A take that cannot be read or written; the message is one sentence for the user."""


class TakeWriteError(TakeError):
    """A valid take that could not be stored: the folder or the disk refused it (not the take's own fault)."""


# name -> (dtype kind, shape in header dimension names). T frames, V vertices, F faces,
# E expression components, S shape components, J joints, P pose-corrective components,
# K detail components, N68 = 68 landmarks, NMP = MediaPipe landmarks.
ARRAY_SCHEMA: dict[str, tuple[str, tuple[str, ...]]] = {
    "template": ("f", ("V", "3")),
    "faces": ("i", ("F", "3")),
    "shape": ("f", ("S",)),
    "expression_basis": ("f", ("V", "3", "E")),
    "expression": ("f", ("T", "E")),
    "pose_corrective_basis": ("f", ("V", "3", "P")),
    "pose": ("f", ("T", "J", "3")),
    "joints_rest": ("f", ("J", "3")),
    "joint_parents": ("i", ("J",)),
    "skin_weights": ("f", ("V", "J")),
    "translation": ("f", ("T", "3")),
    "camera": ("f", ("4",)),
    "image_size": ("i", ("2",)),
    "displacement": ("f", ("T", "V", "3")),
    "detail_basis": ("f", ("K", "V", "3")),
    "detail_weights": ("f", ("T", "K")),
    "vertices": ("f", ("T", "V", "3")),
    "landmarks68": ("f", ("T", "68", "2")),
    "landmarks_mp": ("f", ("T", "NMP", "2")),
    "confidence": ("f", ("T",)),
    "face_found": ("b", ("T",)),
    "frame_numbers": ("i", ("T",)),
}


@dataclass
class Take:
    """A take in memory: ``header`` (the JSON dict) and ``arrays`` (name -> numpy array)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    path: Path | None = field(default=None)

    @property
    def frame_count(self) -> int:
        return int(self.header["dims"]["T"])

    @property
    def expression_names(self) -> list[str]:
        return list(self.header["head_model"]["expression_names"])

    @property
    def joint_names(self) -> list[str]:
        return list(self.header["head_model"]["joint_names"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def dims_of(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Header dimensions derived from the arrays themselves."""
    return {
        "T": int(arrays["expression"].shape[0]),
        "V": int(arrays["template"].shape[0]),
        "F": int(arrays["faces"].shape[0]),
        "E": int(arrays["expression_basis"].shape[2]),
        "S": int(arrays["shape"].shape[0]),
        "J": int(arrays["joints_rest"].shape[0]),
        "P": int(arrays["pose_corrective_basis"].shape[2]),
        "K": int(arrays["detail_basis"].shape[0]),
        "NMP": int(arrays["landmarks_mp"].shape[1]),
    }


def _expected_shape(spec: tuple[str, ...], dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(int(s) if s.isdigit() else int(dims[s]) for s in spec)


def validate(header: dict[str, Any], arrays: dict[str, np.ndarray], where: str = "take") -> None:
    """Check the header's version and every array's presence, dtype and shape."""
    if header.get("format") != FORMAT_NAME:
        raise TakeError(f"{where} is not a blender_microexp take (its header names no take format).")
    version = str(header.get("version", ""))
    major = version.split(".")[0]
    if major != FORMAT_VERSION.split(".")[0]:
        raise TakeError(
            f"{where} has take format version {version or '?'}, but this version of blender_microexp "
            f"reads only {FORMAT_VERSION.split('.')[0]}.x; update the add-on or re-run the reconstruction."
        )
    dims = header.get("dims")
    if not isinstance(dims, dict):
        raise TakeError(f"{where} has no dimensions in its header.")
    for name, (kind, spec) in ARRAY_SCHEMA.items():
        if name not in arrays:
            raise TakeError(f"{where} is missing the array '{name}'.")
        arr = arrays[name]
        try:
            want = _expected_shape(spec, dims)
        except KeyError as exc:
            raise TakeError(f"{where} header lacks the dimension {exc.args[0]}.") from None
        if arr.shape != want:
            raise TakeError(f"{where}: array '{name}' has shape {arr.shape}, the header says {want}.")
        if kind == "f" and arr.dtype.kind != "f":
            raise TakeError(f"{where}: array '{name}' should hold floats, not {arr.dtype}.")
        if kind == "i" and arr.dtype.kind not in "iu":
            raise TakeError(f"{where}: array '{name}' should hold integers, not {arr.dtype}.")
        if kind == "f" and not np.all(np.isfinite(arr)):
            raise TakeError(f"{where}: array '{name}' holds NaN or infinite values.")
    hm = header.get("head_model", {})
    if len(hm.get("expression_names", [])) != dims["E"]:
        raise TakeError(f"{where}: the header names {len(hm.get('expression_names', []))} expression "
                        f"components but the arrays hold {dims['E']}.")
    if len(hm.get("joint_names", [])) != dims["J"]:
        raise TakeError(f"{where}: the header names {len(hm.get('joint_names', []))} joints "
                        f"but the arrays hold {dims['J']}.")
    faces = arrays["faces"]
    if faces.size and (faces.min() < 0 or faces.max() >= dims["V"]):
        raise TakeError(f"{where}: face indices point outside the {dims['V']} vertices.")
    if dims["T"] < 1:
        raise TakeError(f"{where} holds no frames.")
    parents = arrays["joint_parents"].astype(np.int64)
    if parents.size and (parents[0] != -1 or any(not 0 <= int(p) < j for j, p in enumerate(parents) if j > 0)):
        raise TakeError(f"{where}: the joint parents do not form a tree rooted at the first joint.")
    if dims["P"] not in (0, 9 * (dims["J"] - 1)):
        raise TakeError(f"{where} has {dims['P']} pose correctives; a head with {dims['J']} joints has 0 or "
                        f"{9 * (dims['J'] - 1)}.")


def _take_dir(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.parent if p.name in (HEADER_NAME, ARRAYS_NAME) or p.suffix in (".json", ".npz") else p


def read_take(path: str | os.PathLike[str]) -> Take:
    """Read and validate a take from its folder, its take.json or its take.npz."""
    folder = _take_dir(path)
    header_path, arrays_path = folder / HEADER_NAME, folder / ARRAYS_NAME
    if not header_path.is_file():
        raise TakeError(f"No take at {folder}: {HEADER_NAME} is missing.")
    if not arrays_path.is_file():
        raise TakeError(f"The take at {folder} is incomplete: {ARRAYS_NAME} is missing.")
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = "it cannot be read" if isinstance(exc, OSError) else "it is not valid UTF-8 JSON"
        raise TakeError(f"{header_path} is not a readable take header ({reason}).") from None
    if not isinstance(header, dict):
        raise TakeError(f"{header_path} is not a take header.")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile/ValueError/OSError: a damaged file, whatever the cause
        raise TakeError(f"{arrays_path} is damaged and cannot be read.") from exc
    validate(header, arrays, where=str(folder))
    return Take(header=header, arrays=arrays, path=folder)


def _file_mode() -> int:
    """The mode open() gives a new file in this process (0o666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # read once, at import: the umask is process-wide


def write_take(folder: str | os.PathLike[str], header: dict[str, Any], arrays: dict[str, np.ndarray],
               where: str | None = None) -> Path:
    """Write a take atomically: both files go to temporary names and are renamed at the end.

    ``header`` needs ``head_model`` (with ``expression_names`` and ``joint_names``), ``fps`` and
    whatever else describes the run; ``format``, ``version``, ``dims`` and ``arrays`` are filled in.
    An existing take in ``folder`` is replaced only once the new one is complete. Invalid arrays raise
    TakeError (naming the take as ``where``, the folder by default) before anything is written; a folder or
    disk that refuses it raises TakeWriteError.
    """
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TakeWriteError(f"Cannot create the output folder {out} ({exc.strerror or exc}).") from None
    if not os.access(out, os.W_OK):
        raise TakeWriteError(f"The output folder {out} is not writable.")
    norm: dict[str, np.ndarray] = {}
    for name, (kind, _spec) in ARRAY_SCHEMA.items():
        if name not in arrays:
            raise TakeError(f"Cannot write a take without the array '{name}'.")
        arr = np.asarray(arrays[name])
        if kind == "f":
            arr = arr.astype(np.float32, copy=False)
        elif kind == "i":
            arr = arr.astype(np.int32, copy=False)
        else:
            arr = arr.astype(np.bool_, copy=False)
        norm[name] = np.ascontiguousarray(arr)
    full = dict(header)
    full["format"] = FORMAT_NAME
    full["version"] = FORMAT_VERSION
    full["dims"] = dims_of(norm)
    full["arrays"] = {k: list(v.shape) for k, v in norm.items()}
    validate(full, norm, where=where or str(out))

    tmp_npz = tmp_json = None
    try:
        fd, tmp_npz = tempfile.mkstemp(prefix=".take-", suffix=".npz.part", dir=out)
        os.chmod(tmp_npz, FILE_MODE)  # mkstemp's files are private; a take is shared like any file written here
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **norm)
        fd, tmp_json = tempfile.mkstemp(prefix=".take-", suffix=".json.part", dir=out)
        os.chmod(tmp_json, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(full, fh, indent=1, sort_keys=True)
        # Old header gone first, arrays next, header last: a reader that sees take.json sees a
        # complete take, and a crash in between leaves no header rather than a mismatched pair.
        (out / HEADER_NAME).unlink(missing_ok=True)
        os.replace(tmp_npz, out / ARRAYS_NAME)
        tmp_npz = None
        os.replace(tmp_json, out / HEADER_NAME)
        tmp_json = None
    except OSError as exc:
        raise TakeWriteError(f"Could not write the take into {out} ({exc.strerror or exc}).") from None
    finally:
        for leftover in (tmp_npz, tmp_json):
            if leftover and os.path.exists(leftover):
                os.unlink(leftover)
    return out
