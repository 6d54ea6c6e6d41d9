"""load_head_model: turn the user's head-model setting ("builtin", a FLAME folder or file) into HeadModelData."""

from __future__ import annotations

from pathlib import Path

from .builtin import build_builtin_head
from .data import HeadModelData, HeadModelError
from .flame import find_flame_file, load_flame


def load_head_model(spec: str | Path, n_shape: int = 100, n_expression: int = 50) -> HeadModelData:
    """"builtin" -> the built-in head on the generic neutral; a folder -> the FLAME model file inside it (with
    its embeddings beside it); a .pkl path -> that FLAME file. n_shape / n_expression apply to FLAME only."""
    if isinstance(spec, str) and spec.strip().lower() == "builtin":
        return build_builtin_head()
    text = str(spec).strip()
    if not text:
        raise HeadModelError("No head model was given; choose the built-in head or a FLAME folder or file.")
    path = Path(text).expanduser()
    if path.is_dir():
        return load_flame(find_flame_file(path), n_shape=n_shape, n_expression=n_expression)
    if path.is_file():
        if path.suffix.lower() != ".pkl":
            raise HeadModelError(f"{path} is not a FLAME model file: expected a .pkl such as generic_model.pkl.")
        return load_flame(path, n_shape=n_shape, n_expression=n_expression)
    raise HeadModelError(f"Head model {path} does not exist; give 'builtin' or a FLAME folder or .pkl file.")
